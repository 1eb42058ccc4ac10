"""Run the evaluation sets of the model cards and docs with ``recon-train eval``, one JSON per (set, method group).

Usage::

    python scripts/eval_suite.py --data ../shared/data --out docs/eval [--sets a,b] [--groups baselines,default]
        [--bundle NAME=PATH ...] [--adapt NAME=STEPS[@LR][/SPLIT[/SPLITS]] ...] [--exam NAME=N ...]
        [--threads 2] [--device cpu]

Sets (all with the same masks and ESPIRiT maps for every method; mask seeds from ``recon-train eval``'s default):

* ``real_radial5`` / ``real_uniform3``: the three real brains of ``multicoil_kspace`` the earlier tables used, radial
  5x (24-line centre) and uniform R=3 + 24 ACS lines;
* ``new_radial5`` / ``new_uniform3``: the two newer real brains (8-channel, 4-channel MPRAGE);
* ``siat8_radial5`` / ``siat1_radial5``: SIAT validation blocks 15-16 (slices 140-159) with 8 simulated coils / 1 coil;
* ``loraks_{randacs7,unacs7,pfacs7}``: the 4-channel MPRAGE brain with its authors' R=7 masks (random + ACS,
  uniform + ACS, partial Fourier + ACS);
* ``coils{1,4,8,16,32}``: every 4th of those slices with that many simulated coils;
* ``size{96,128x192,384}``: the same slices centre-cropped to 96x96 or 128x192, or Fourier-interpolated to
  384x384, with 8 simulated coils (written once under ``--cache``).

Method groups: ``baselines`` (zero-filled, CS-WV, CS-TV; CS-WV alone in the coil and size sweeps), ``default``
(RGANCS as the gadgets load it, routed by coil count, with ``model`` = ``accurate``: the same bundle on every CPU,
where the gadgets on a CPU without native bf16 would load the fast one) and one group per ``--bundle NAME=PATH``;
``--adapt NAME=STEPS[@LR][/SPLIT[/SPLITS]]`` runs group NAME's RGANCS with ``--adapt-steps STEPS``, ``--adapt-lr
LR``, ``--adapt-split SPLIT`` and ``--adapt-splits SPLITS`` (scan-specific adaptation of each slice, e.g.
``40/points/2`` for the settings before the fifth session of 2026-12-05; a NAME without a ``--bundle`` is the
default's weights); ``--exam NAME=N`` makes that adaptation one copy per exam of N consecutive slices
(``--adapt-scope exam --exam-size N``; 10 for the SIAT sets is one copy per scan). A JSON that exists is kept
(delete it to rerun).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SIAT = "siat_brain_complex/images_lsq001-160.npy"
REAL = ("marcsous_head_8ch", "ugmpi_GE_brain_4ch", "ugmpi_MPRAGE_brain_4ch")
NEW = ("jiawang_brain_8ch", "loraks_MPRAGE_brain_4ch")
SIZES = {"size96": (96, 96), "size128x192": (128, 192), "size384": (384, 384)}


def _fourier_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop (smaller) or zero-pad (larger) the centred k-space of ``image``: a band-limited resize."""
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
    out = np.zeros(shape, np.complex64)
    ny, nx = (min(a, b) for a, b in zip(shape, k.shape, strict=True))
    sy, sx = (k.shape[0] - ny) // 2, (k.shape[1] - nx) // 2
    oy, ox = (shape[0] - ny) // 2, (shape[1] - nx) // 2
    out[oy : oy + ny, ox : ox + nx] = k[sy : sy + ny, sx : sx + nx]
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(out), norm="ortho")).astype(np.complex64)


def size_file(data: Path, cache: Path, name: str) -> Path:
    """The SIAT validation slices 140:160:4 at the matrix of ``name`` (crop for smaller, k-space pad for larger)."""
    path = cache / f"siat_val_{name}.npy"
    if not path.is_file():
        slices = np.load(data / SIAT, mmap_mode="r")[140:160:4]
        ny, nx = SIZES[name]
        out = []
        for s in np.asarray(slices, np.complex64):
            s = s / np.abs(s).max()
            if ny <= s.shape[0] and nx <= s.shape[1]:
                y0, x0 = (s.shape[0] - ny) // 2, (s.shape[1] - nx) // 2
                out.append(s[y0 : y0 + ny, x0 : x0 + nx])
            else:
                out.append(_fourier_resize(s, (ny, nx)))
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, np.stack(out))
    return path


def set_args(name: str, data: Path, cache: Path) -> list[str]:
    """``recon-train eval`` arguments of evaluation set ``name``."""
    folder = str(data / "multicoil_kspace")
    if name.startswith("loraks_"):  # the authors' R=7 patterns of the 4-channel MPRAGE brain
        key = {"loraks_randacs7": "kMaskRandACS7", "loraks_unacs7": "kMaskUnACS7", "loraks_pfacs7": "kMaskPFACS7"}
        masks = f"{folder}/loraks_MPRAGE_R7_masks.npz:{key[name]}"
        return ["--data", folder, "--names", "loraks_MPRAGE_brain_4ch", "--mask-file", masks]
    if name.startswith(("real_", "new_")):
        names = ",".join(REAL if name.startswith("real_") else NEW)
        mask = (
            ["--mask-family", "radial", "--acceleration", "5"]
            if name.endswith("radial5")
            else ["--mask-family", "uniform", "--acceleration", "3"]
        )
        return ["--data", folder, "--names", names, *mask, "--calib", "24"]
    if name in ("siat8_radial5", "siat1_radial5"):
        coils = "8" if name.startswith("siat8") else "1"
        return ["--data", str(data / SIAT), "--slices", "140:160", "--coils", coils]
    if name.startswith("coils"):
        return ["--data", str(data / SIAT), "--slices", "140:160:4", "--coils", name.removeprefix("coils")]
    if name in SIZES:
        return ["--data", str(size_file(data, cache, name)), "--coils", "8"]
    raise SystemExit(f"unknown set {name!r}")


SETS = (
    "real_radial5",
    "real_uniform3",
    "new_radial5",
    "new_uniform3",
    "siat8_radial5",
    "siat1_radial5",
    "loraks_randacs7",
    "loraks_unacs7",
    "loraks_pfacs7",
    "coils1",
    "coils4",
    "coils8",
    "coils16",
    "coils32",
    *SIZES,
)


def adapt_options(value: str) -> list[str]:
    """``recon-train eval`` options for an ``--adapt`` value STEPS[@LR][/SPLIT[/SPLITS]]."""
    head, *rest = value.split("/")
    if len(rest) > 2:
        raise SystemExit(f"--adapt {value!r}: expected STEPS[@LR][/SPLIT[/SPLITS]]")
    steps, _, lr = head.partition("@")
    names = ["--adapt-steps", "--adapt-lr", "--adapt-split", "--adapt-splits"]
    values = [steps, lr, *rest]
    return [x for name, v in zip(names, values, strict=False) if v for x in (name, v)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("docs/eval"))
    parser.add_argument("--cache", type=Path, default=Path("runs/eval_data"))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--groups", default="baselines,default")
    parser.add_argument("--bundle", action="append", default=[], help="NAME=PATH: a method group of its own")
    parser.add_argument(
        "--adapt", action="append", default=[], help="NAME=STEPS[@LR][/SPLIT[/SPLITS]]: adapt group NAME to each slice"
    )
    parser.add_argument(
        "--exam",
        action="append",
        default=[],
        help="NAME=N: adapt group NAME with one copy per exam of N consecutive slices (--adapt-scope exam)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="recon-train eval's --device (cpu | cuda | auto)")
    args = parser.parse_args()
    bundles = dict(b.split("=", 1) for b in args.bundle)
    adapt = dict(a.split("=", 1) for a in args.adapt)  # NAME -> STEPS[@LR][/SPLIT[/SPLITS]]
    exams = dict(e.split("=", 1) for e in args.exam)  # NAME -> slices per exam
    if set(exams) - set(adapt):
        raise SystemExit(f"--exam names groups without --adapt: {', '.join(sorted(set(exams) - set(adapt)))}")
    named = [g for g in args.groups.split(",") if g]
    groups = named + [g for g in [*bundles, *adapt] if g not in named]
    groups = list(dict.fromkeys(groups))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in [s for s in args.sets.split(",") if s]:
        base = set_args(name, args.data, args.cache)
        for group in groups:
            out = args.out / f"{name}.{group}.json"
            if out.is_file():
                continue
            if group == "baselines":  # the coil and size sweeps compare with CS-WV only (the target baseline)
                sweep = name.startswith(("coils", "size"))
                extra = ["--methods", "zero_filled,cs_wavelet" if sweep else "zero_filled,cs_wavelet,cs_tv"]
            elif group in bundles:
                extra = ["--methods", "rgancs", "--bundle", bundles[group]]
            else:  # "default", or an adapted group of the default's weights: the accurate model on every CPU
                extra = ["--methods", "rgancs", "--model", "accurate"]
            if group in adapt:
                extra += adapt_options(adapt[group])
            if group in exams:
                extra += ["--adapt-scope", "exam", "--exam-size", exams[group]]
            cmd = ["recon-train", "eval", *base, *extra, "--device", args.device, "--json", str(out)]
            print(" ".join(cmd), flush=True)
            done = subprocess.run(cmd, env=env)
            if done.returncode:
                sys.exit(done.returncode)


if __name__ == "__main__":
    main()
