"""Coil sensitivities (ESPIRiT via sigpy) and coil combination."""

from __future__ import annotations

import logging

import numpy as np

from .errors import BartNotFoundError, CoilMapError, InvalidInputError, ShapeMismatchError
from .physics import check_finite, ifft2c

log = logging.getLogger(__name__)


def espirit_maps(
    kspace: np.ndarray,
    calib_width: int = 24,
    *,
    backend: str = "auto",
    kernel_width: int = 6,
    threshold: float = 0.02,
    crop: float = 0.0,
) -> np.ndarray:
    """Estimate ESPIRiT coil maps [coils, ny, nx] from the fully sampled k-space centre.

    ``kspace`` is complex [coils, ny, nx], centred; only its central
    ``calib_width`` x ``calib_width`` block is used, and that block must be
    fully sampled. A single coil gets maps of ones. ``backend``: "bart"
    (``bart ecalib -m 1``, fast), "sigpy" (``EspiritCalib``), or "auto" (BART
    when it is installed, else sigpy), so every method on a machine uses the
    same maps. sum_c |S_c|^2 is 1. ``crop`` (ESPIRiT's eigenvalue threshold)
    defaults to 0, which keeps maps everywhere: a plane of air then gives a
    noise image instead of no maps at all (3D volumes have such planes at
    their edges); raise it to zero the background.
    """
    if kspace.ndim != 3:
        raise InvalidInputError(f"k-space for coil maps must be [coils, ny, nx], got {kspace.shape}")
    check_finite("k-space", kspace)
    coils, ny, nx = kspace.shape
    if coils == 1:
        return np.ones_like(kspace, dtype=np.complex64)
    width = min(calib_width, ny, nx)
    cy, cx = ny // 2, nx // 2
    block = kspace[:, cy - width // 2 : cy - width // 2 + width, cx - width // 2 : cx - width // 2 + width]
    if not np.all(np.abs(block).sum(0) > 0):
        raise CoilMapError(
            f"the central {width}x{width} k-space block is not fully sampled; "
            "acquire a larger calibration region or lower calib_width"
        )
    if backend == "auto":
        backend = "bart" if bart_available() else "sigpy"
    if backend == "bart":
        maps = _bart_espirit(kspace, width, kernel_width, threshold, crop)
    elif backend == "sigpy":
        maps = _sigpy_espirit(kspace, width, kernel_width, threshold, crop)
    else:
        raise InvalidInputError(f"unknown coil-map backend {backend!r}; use 'auto', 'bart' or 'sigpy'")
    if not np.isfinite(maps).all() or not np.abs(maps).any():
        raise CoilMapError("ESPIRiT produced no usable coil maps; check the calibration data")
    return maps


def bart_available() -> bool:
    """True when the BART binary can be found."""
    from . import bart

    try:
        bart.find_bart()
    except BartNotFoundError:
        return False
    return True


def _bart_espirit(kspace: np.ndarray, width: int, kernel: int, threshold: float, crop: float) -> np.ndarray:
    from . import bart

    # ecalib is scale-free up to rounding; a unit scale keeps its thresholds meaningful
    scale = float(np.abs(kspace).max()) or 1.0
    args = ["ecalib", "-m", 1, "-r", width, "-k", kernel, "-t", threshold, "-c", crop, "kspace", "sens"]
    (maps,) = bart.run_arrays(args, {"kspace": bart.to_bart(kspace / scale)}, ["sens"])
    return bart.from_bart(maps, *kspace.shape[1:]).astype(np.complex64)


def _sigpy_espirit(kspace: np.ndarray, width: int, kernel: int, threshold: float, crop: float) -> np.ndarray:
    import sigpy.mri

    maps = sigpy.mri.app.EspiritCalib(
        kspace.astype(np.complex64),
        calib_width=width,
        kernel_width=kernel,
        thresh=threshold,
        crop=crop,
        show_pbar=False,
    ).run()
    return np.asarray(maps, dtype=np.complex64)


def rss(coil_images: np.ndarray) -> np.ndarray:
    """Root sum of squares over the coil axis (axis 0)."""
    return np.sqrt((np.abs(coil_images) ** 2).sum(0))


def sense_combine(kspace: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Coil-combined complex image sum_c conj(S_c) F^H k_c from [coils, ny, nx] k-space."""
    if kspace.shape != maps.shape:
        raise ShapeMismatchError(f"k-space {kspace.shape} and coil maps {maps.shape} differ in shape")
    return (np.conj(maps) * ifft2c(kspace)).sum(0).astype(np.complex64)
