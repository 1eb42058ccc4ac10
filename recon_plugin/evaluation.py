"""Side-by-side evaluation: the same undersampled problems through several reconstructors, SNR/SSIM/seconds.

A :class:`Case` is one slice: its undersampled :class:`Problem`, whose coil maps are estimated once (ESPIRiT on
the mask's own calibration region, as on the scanner) and then shared by every method, and the reference the
metrics compare against. Metrics are on magnitudes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .coils import sense_combine
from .errors import InvalidInputError
from .masks import MaskResult, make_mask
from .metrics import sharpness, snr_db, ssim
from .physics import fft2c, ifft2c
from .problem import Problem
from .reconstructors import Reconstructor

#: The fully sampled real multi-coil brain slices of the shared data folder.
MULTICOIL_SLICES = ("marcsous_head_8ch", "ugmpi_GE_brain_4ch", "ugmpi_MPRAGE_brain_4ch")

#: Metrics averaged per method.
MEAN_KEYS = ("snr_db", "ssim", "sharpness", "seconds")


@dataclass
class Case:
    """One slice: the undersampled Problem (maps estimated once, shared by all methods) and its reference."""

    name: str
    problem: Problem
    reference: np.ndarray


def eval_mask(
    family: str, shape: tuple[int, int], acceleration: float, seed: int, calib: int | None = None
) -> MaskResult:
    """``make_mask(family, shape, acceleration, seed=seed, calib=calib)``; ``calib`` None = the family default."""
    kw = {} if calib is None else {"calib": calib}
    return make_mask(family, tuple(int(s) for s in shape), acceleration, seed=seed, **kw)


def kspace_case(name: str, full: np.ndarray, mask: np.ndarray, calib_width: int = 24) -> Case:
    """A case from fully sampled k-space [coils, ny, nx]: the Problem keeps the ``mask``ed points, its maps come
    from that undersampled data (ESPIRiT on the mask's centre), and the reference is ``full`` combined with them."""
    full = np.asarray(full, dtype=np.complex64)
    problem = Problem(kspace=full, mask=mask, meta={"slice": name}, calib_width=calib_width)
    maps = problem.coil_maps()
    reference = ifft2c(full[0]) if maps is None else sense_combine(full, maps)
    return Case(name, problem, reference)


def image_case(name: str, image: np.ndarray, mask: np.ndarray, coils: int = 1, calib_width: int = 24) -> Case:
    """A case from a complex image [ny, nx]: k = fft2c(maps * image) with ``birdcage_coil_maps`` for ``coils`` > 1
    (the Problem gets no maps: ESPIRiT estimates them from the undersampled data), k = fft2c(image) for one coil.
    The reference is the image."""
    image = np.asarray(image, dtype=np.complex64)
    if coils > 1:
        from .simulate import birdcage_coil_maps

        kspace = fft2c(birdcage_coil_maps(image.shape, coils) * image[None])
    else:
        kspace = fft2c(image)[None]
    problem = Problem(kspace=kspace, mask=mask, meta={"slice": name}, calib_width=calib_width)
    problem.coil_maps()
    return Case(name, problem, image)


def multicoil_cases(
    data_dir: str | Path,
    names: tuple[str, ...] = MULTICOIL_SLICES,
    acceleration: float = 5.0,
    seed: int = 100,
    calib: int = 24,
    family: str = "radial",
) -> list[Case]:
    """Real fully sampled multi-coil k-space (``multicoil_kspace/<name>_kspace.npy``), one mask per slice
    (seed + i); reference = fully sampled k-space combined with the maps the methods use."""
    cases = []
    for i, name in enumerate(names):
        full = np.load(Path(data_dir) / "multicoil_kspace" / f"{name}_kspace.npy").astype(np.complex64)
        mask = eval_mask(family, full.shape[1:], acceleration, seed + i, calib).mask
        cases.append(kspace_case(name, full, mask, calib_width=calib))
    return cases


def image_cases(
    images: np.ndarray,
    indices: list[int] | range,
    acceleration: float = 5.0,
    seed: int = 200,
    calib: int | None = None,
    family: str = "radial",
    coils: int = 1,
) -> list[Case]:
    """Problems from complex images [n, ny, nx] (``image_case``), one mask per slice (seed + i, the family's
    default centre unless ``calib`` is given); the reference is the image itself."""
    cases = []
    for i, index in enumerate(indices):
        image = np.asarray(images[index], dtype=np.complex64)
        mask = eval_mask(family, image.shape, acceleration, seed + i, calib).mask
        case = image_case(f"slice_{index}", image, mask, coils=coils)
        case.problem.meta["slice"] = int(index)
        cases.append(case)
    return cases


def mask_digest(mask: np.ndarray) -> str:
    """Short sha256 of a boolean mask (shape and points): equal digests mean equal masks."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    return hashlib.sha256(repr(mask.shape).encode() + mask.tobytes()).hexdigest()[:16]


def compare(cases: list[Case], methods: list[Reconstructor], exam_size: int | None = None) -> list[dict]:
    """One row per (method, case): SNR dB, SSIM, seconds per slice, and the acceleration and digest of the mask
    the method was given. Each method gets the cases as exams of ``exam_size`` consecutive slices (None: one exam
    of all), which matters only to a method that prepares once per exam (RGANCS adapted with scope "exam")."""
    if exam_size is not None and exam_size < 1:
        raise InvalidInputError(f"exam_size must be >= 1, got {exam_size}")
    size = exam_size or max(1, len(cases))
    rows = []
    for method in methods:
        results = []
        for start in range(0, len(cases), size):
            exam = [c.problem for c in cases[start : start + size]]
            results += method.for_exam(exam).reconstruct_batch(exam)
        for case, result in zip(cases, results, strict=True):
            rows.append(
                {
                    "method": method.name,
                    "slice": case.name,
                    "snr_db": snr_db(case.reference, result.image),
                    "ssim": ssim(case.reference, result.image),
                    "sharpness": sharpness(case.reference, result.image),
                    "seconds": float(result.meta["seconds"]),
                    "acceleration": case.problem.acceleration,
                    "mask": mask_digest(case.problem.mask),
                }
            )
    return rows


def method_means(rows: list[dict]) -> list[dict]:
    """Per method (in row order): the mean SNR dB, SSIM and seconds over its slices, and the slice count."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        means = {k: float(np.mean([r[k] for r in sel])) for k in MEAN_KEYS}
        out.append({"method": method, **means, "slices": len(sel)})
    return out


def markdown_table(rows: list[dict]) -> str:
    """Per-slice rows and a mean row per method, as a Markdown table."""
    lines = ["| method | slice | SNR dB | SSIM | s/slice |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['method']} | {r['slice']} | {r['snr_db']:.2f} | {r['ssim']:.3f} | {r['seconds']:.2f} |" for r in rows
    ]
    lines += [
        f"| **{m['method']}** | mean of {m['slices']} | {m['snr_db']:.2f} | {m['ssim']:.3f} | {m['seconds']:.2f} |"
        for m in method_means(rows)
    ]
    return "\n".join(lines)
