"""Probes of why RGANCS trails CS-Wavelet on the real brains but not on simulated SIAT slices.

Usage::

    python scripts/gap_probes.py out-of-span   [--data ../shared/data]
    python scripts/gap_probes.py noisy-reference [--data ../shared/data] [--noise 0.035]
    python scripts/gap_probes.py mask-families [--data ../shared/data]
    python scripts/gap_probes.py outer-band    [--data ../shared/data]

* ``out-of-span``: the share of the fully sampled coil images' energy that the ESPIRiT maps cannot represent
  (``c - S sum conj(S) c``), inside the object (pixels above 10 % of the reference's maximum) and outside it, for
  the five real brains (maps from their radial 5x validation masks, as training's real-data validation builds
  them) and for SIAT slices through the scanner simulation's coils (birdcage and real maps), without and with noise.
* ``noisy-reference``: SIAT slices 140-156 (every 4th) through real 8-channel ESPIRiT maps with correlated noise,
  radial 5x; CS-WV and the default RGANCS scored against the noisy fully sampled reference (as the real brains are)
  and against the noise-free one.
* ``mask-families``: SIAT slices 140-155 (every 5th) with 8 birdcage coils under R=7 masks the training mixture
  does not draw (uniform-density random and a sheared 2D lattice, both with a 22x22 centre) and under the LORAKS
  authors' own R=7 random and uniform masks; CS-WV against the default RGANCS.
* ``outer-band``: the default on training's real-data validation cases with its unmeasured k-space beyond a radius
  scaled by a factor (does it put too much energy where nothing was measured?).

Every probe uses the evaluation's tools (``recon_plugin.evaluation``, BART at its tuned lambdas, 300 iterations).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recon_plugin.coils import sense_combine
from recon_plugin.evaluation import Case, compare, eval_mask, image_case, kspace_case, multicoil_cases
from recon_plugin.metrics import snr_db
from recon_plugin.physics import fft2c, ifft2c
from recon_plugin.problem import Problem
from recon_plugin.simulate import birdcage_coil_maps
from training.datasets.scanner_sim import CoilModel, correlated_noise, real_maps_from_kspace
from training.evaluate import build_methods
from training.real_validation import REAL_BRAINS, REAL_VAL_SEED

SIAT = "siat_brain_complex/images_lsq001-160.npy"
EIGHT_CHANNEL = ("marcsous_head_8ch", "jiawang_brain_8ch")


def real_coils(data: Path) -> CoilModel:
    """The simulation's coil family with the ESPIRiT maps of the two real 8-channel brains (augmented per draw)."""
    return CoilModel(
        real_maps=[real_maps_from_kspace(data / "multicoil_kspace" / f"{n}_kspace.npy") for n in EIGHT_CHANNEL]
    )


def siat_slice(data: Path, index: int) -> np.ndarray:
    """SIAT slice ``index`` scaled to max |x| = 1."""
    img = np.asarray(np.load(data / SIAT, mmap_mode="r")[index])
    return (img / np.abs(img).max()).astype(np.complex64)


def out_of_span(coil_images: np.ndarray, maps: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Energy of the coil images outside the maps' span, inside and outside the object, over the energy inside."""
    residual = coil_images - maps * (np.conj(maps) * coil_images).sum(0)[None]
    obj = np.abs(reference) > 0.1 * np.abs(reference).max()
    inside = float((np.abs(coil_images[:, obj]) ** 2).sum())
    return (
        float((np.abs(residual[:, obj]) ** 2).sum()) / inside,
        float((np.abs(residual[:, ~obj]) ** 2).sum()) / inside,
    )


def probe_out_of_span(data: Path) -> None:
    cases = multicoil_cases(data, REAL_BRAINS, acceleration=5.0, seed=REAL_VAL_SEED, calib=24, family="radial")
    for name, case in zip(REAL_BRAINS, cases, strict=True):
        full = np.load(data / "multicoil_kspace" / f"{name}_kspace.npy").astype(np.complex64)
        inside, outside = out_of_span(ifft2c(full), case.problem.coil_maps(), case.reference)
        print(f"real {name:26s} inside {100 * inside:.2f} %  outside {100 * outside:.2f} %")
    rng = np.random.default_rng(0)
    coils = real_coils(data)
    for index in (3, 55, 101, 147):
        img = siat_slice(data, index)
        for kind in ("birdcage8", "real"):
            maps = (
                birdcage_coil_maps(img.shape, 8)
                if kind == "birdcage8"
                else coils.draw_maps("real", 8, index % 2, img.shape, rng)
            )
            clean = maps * img[None]
            for level in (0.0, 0.03):
                full = fft2c(clean)
                if level:
                    rms = float(np.sqrt(np.mean(np.abs(img) ** 2)))
                    full = full + correlated_noise(full.shape, level * rms, rng)[0]
                mask = eval_mask("radial", img.shape, 5.0, index, 24).mask
                used = Problem(kspace=(full * mask).astype(np.complex64), mask=mask, calib_width=24).coil_maps()
                inside, outside = out_of_span(ifft2c(full), used, (np.conj(used) * clean).sum(0))
                print(
                    f"SIAT {index:3d} {kind:9s} noise {level:.2f} "
                    f"inside {100 * inside:.2f} %  outside {100 * outside:.2f} %"
                )


def mean_snr(cases: list[Case], methods: list) -> dict[str, float]:
    """Mean SNR dB per method."""
    rows = compare(cases, methods)
    return {m.name: round(float(np.mean([r["snr_db"] for r in rows if r["method"] == m.name])), 2) for m in methods}


def probe_noisy_reference(data: Path, noise: float) -> None:
    rng = np.random.default_rng(1)
    coils = real_coils(data)
    noisy, clean = [], []
    for j, index in enumerate(range(140, 160, 4)):
        img = siat_slice(data, index)
        maps = coils.draw_maps("real", 8, j % 2, img.shape, rng)
        full_clean = fft2c(maps * img[None]).astype(np.complex64)
        rms = float(np.sqrt(np.mean(np.abs(img) ** 2)))
        full = (full_clean + correlated_noise(full_clean.shape, noise * rms, rng)[0]).astype(np.complex64)
        mask = eval_mask("radial", img.shape, 5.0, 200 + j, 24).mask
        noisy.append(kspace_case(f"slice_{index}", full, mask))
        case = kspace_case(f"slice_{index}", full, mask)
        case.reference = sense_combine(full_clean, case.problem.coil_maps())
        clean.append(case)
    methods = build_methods(["cs_wavelet", "rgancs"], None)
    print(f"noise {noise}, radial 5x, noisy fully sampled reference: {mean_snr(noisy, methods)}")
    print(f"noise {noise}, radial 5x, noise-free reference:          {mean_snr(clean, methods)}")


def centre_square(mask: np.ndarray, side: int) -> np.ndarray:
    """``mask`` with a fully sampled centred square of ``side``."""
    cy, cx = mask.shape[0] // 2 - side // 2, mask.shape[1] // 2 - side // 2
    mask[cy : cy + side, cx : cx + side] = True
    return mask


def random_points(shape: tuple[int, int], r: int, rng: np.random.Generator, side: int = 22) -> np.ndarray:
    """Uniform-density random points, N/R in all with a centred square."""
    mask = centre_square(np.zeros(shape, bool), side)
    picks = rng.choice(np.flatnonzero(~mask), int(mask.size / r) - int(mask.sum()), replace=False)
    mask.flat[picks] = True
    return mask


def sheared_lattice(shape: tuple[int, int], r: int, rng: np.random.Generator, side: int = 22) -> np.ndarray:
    """Points with (ky * s + kx) mod R = offset (s, offset drawn), plus a centred square."""
    ky, kx = np.indices(shape)
    return centre_square((ky * int(rng.integers(1, r)) + kx) % r == int(rng.integers(r)), side)


def probe_mask_families(data: Path) -> None:
    rng = np.random.default_rng(0)
    authors = np.load(data / "multicoil_kspace" / "loraks_MPRAGE_R7_masks.npz")
    families: dict[str, Callable[[], np.ndarray]] = {
        "uniform-density random R=7": lambda: random_points((256, 256), 7, rng),
        "sheared 2D lattice R=7": lambda: sheared_lattice((256, 256), 7, rng),
        "LORAKS authors' random + ACS R=7": lambda: authors["kMaskRandACS7"].astype(bool),
        "LORAKS authors' uniform + ACS R=7": lambda: authors["kMaskUnACS7"].astype(bool),
    }
    methods = build_methods(["cs_wavelet", "rgancs"], None)
    for label, make in families.items():
        cases = [image_case(f"slice_{i}", siat_slice(data, i), make(), coils=8) for i in range(140, 160, 5)]
        print(f"SIAT, 8 birdcage coils, {label}: {mean_snr(cases, methods)}")


def probe_outer_band(data: Path) -> None:
    from training.config import load_config
    from training.real_validation import real_validation_cases

    config = load_config(Path(__file__).resolve().parents[1] / "campaigns/cg_10x1x32i_mc_phase5/config.toml")
    config.data.real_val_path = str(data / "multicoil_kspace")
    cases = real_validation_cases(config.data)
    (method,) = build_methods(["rgancs"], None)
    results = method.reconstruct_batch([c.problem for c in cases])
    settings = [(r0, a) for r0 in (0.15, 0.3) for a in (1.0, 0.9, 0.75, 0.5)]
    table = []
    for case, result in zip(cases, results, strict=True):
        x, ref, measured = result.image, case.reference, case.problem.mask.astype(bool)
        ny, nx = x.shape
        radius = np.hypot(*np.meshgrid((np.arange(ny) - ny // 2) / ny, (np.arange(nx) - nx // 2) / nx, indexing="ij"))
        k = fft2c(x)
        row = []
        for r0, a in settings:
            scaled = k.copy()
            scaled[(~measured) & (radius >= r0)] *= a
            row.append(snr_db(ref, ifft2c(scaled)))
        table.append(row)
        print(case.name, " ".join(f"{v:.2f}" for v in row))
    print("mean", " ".join(f"{v:.2f}" for v in np.mean(table, 0)))
    print("columns (radius from, factor):", settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("out-of-span", "noisy-reference", "mask-families", "outer-band"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--noise", type=float, default=0.035)
    args = parser.parse_args()
    if args.probe == "out-of-span":
        probe_out_of_span(args.data)
    elif args.probe == "noisy-reference":
        probe_noisy_reference(args.data, args.noise)
    elif args.probe == "mask-families":
        probe_mask_families(args.data)
    else:
        probe_outer_band(args.data)


if __name__ == "__main__":
    main()
