"""Side-by-side evaluation: the same undersampled problems through several reconstructors, SNR/SSIM/seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .coils import sense_combine
from .masks import make_mask
from .metrics import snr_db, ssim
from .problem import Problem
from .reconstructors import Reconstructor

#: The fully sampled real multi-coil brain slices of the shared data folder.
MULTICOIL_SLICES = ("marcsous_head_8ch", "ugmpi_GE_brain_4ch", "ugmpi_MPRAGE_brain_4ch")


@dataclass
class Case:
    """One slice: the undersampled Problem (maps estimated once, shared by all methods) and its reference."""

    name: str
    problem: Problem
    reference: np.ndarray


def multicoil_cases(
    data_dir: str | Path,
    names: tuple[str, ...] = MULTICOIL_SLICES,
    acceleration: float = 5.0,
    seed: int = 100,
    calib: int = 24,
) -> list[Case]:
    """Real fully sampled multi-coil k-space (``multicoil_kspace/<name>_kspace.npy``), radial view-ordered masks
    (seed + i per slice); reference = fully sampled k-space combined with the maps the methods use."""
    cases = []
    for i, name in enumerate(names):
        full = np.load(Path(data_dir) / "multicoil_kspace" / f"{name}_kspace.npy").astype(np.complex64)
        mask = make_mask("radial", full.shape[1:], acceleration, seed=seed + i, calib=calib).mask
        problem = Problem(kspace=full, mask=mask, meta={"slice": name}, calib_width=calib)
        maps = problem.coil_maps()
        cases.append(Case(name, problem, sense_combine(full, maps)))
    return cases


def image_cases(
    images: np.ndarray,
    indices: list[int] | range,
    acceleration: float = 5.0,
    seed: int = 200,
    calib: int | None = None,
    family: str = "radial",
) -> list[Case]:
    """Single-coil problems from complex images [n, ny, nx] (k = fft2c(x)), one mask per slice (seed + i,
    the mask family's default centre unless ``calib`` is given); the reference is the image itself."""
    from .physics import fft2c

    cases = []
    for i, index in enumerate(indices):
        image = np.asarray(images[index], dtype=np.complex64)
        kw = {} if calib is None else {"calib": calib}
        mask = make_mask(family, image.shape, acceleration, seed=seed + i, **kw).mask
        problem = Problem(kspace=fft2c(image)[None], mask=mask, meta={"slice": int(index)})
        cases.append(Case(f"slice_{index}", problem, image))
    return cases


def compare(cases: list[Case], methods: list[Reconstructor]) -> list[dict]:
    """One row per (method, case): SNR dB, SSIM and seconds per slice."""
    rows = []
    for method in methods:
        results = method.reconstruct_batch([c.problem for c in cases])
        for case, result in zip(cases, results, strict=True):
            rows.append(
                {
                    "method": method.name,
                    "slice": case.name,
                    "snr_db": snr_db(case.reference, result.image),
                    "ssim": ssim(case.reference, result.image),
                    "seconds": float(result.meta["seconds"]),
                }
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Per-slice rows and a mean row per method, as a Markdown table."""
    lines = ["| method | slice | SNR dB | SSIM | s/slice |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['method']} | {r['slice']} | {r['snr_db']:.2f} | {r['ssim']:.3f} | {r['seconds']:.2f} |" for r in rows
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        mean = {k: float(np.mean([r[k] for r in sel])) for k in ("snr_db", "ssim", "seconds")}
        lines.append(
            f"| **{method}** | mean of {len(sel)} | {mean['snr_db']:.2f} | {mean['ssim']:.3f} | {mean['seconds']:.2f} |"
        )
    return "\n".join(lines)
