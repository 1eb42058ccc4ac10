"""Simulated acquisitions from images: smooth phase, coil maps, noise, undersampled k-space."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from .physics import fft2c
from .problem import Problem


def smooth_phase(
    shape: tuple[int, int], rng: np.random.Generator, max_radians: float = np.pi, grid: int = 4
) -> np.ndarray:
    """A smooth random phase map in [-max_radians, max_radians]: ``grid`` x ``grid`` Gaussian noise, upsampled
    (cubic) and blurred with sigma = max(shape) / (4 grid), so a finer grid gives a phase varying on a finer scale."""
    if grid < 2:
        raise ValueError(f"smooth_phase: grid must be >= 2, got {grid}")
    coarse = rng.standard_normal((grid, grid))
    field = zoom(coarse, (shape[0] / grid, shape[1] / grid), order=3)[: shape[0], : shape[1]]
    field = gaussian_filter(field, sigma=max(shape) / (4 * grid))
    field = field / (np.abs(field).max() or 1.0)
    return (max_radians * field).astype(np.float32)


def with_smooth_phase(magnitude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Complex64 image |magnitude| * exp(i * smooth random phase)."""
    return (np.abs(magnitude) * np.exp(1j * smooth_phase(magnitude.shape, rng))).astype(np.complex64)


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Coil maps [coils, ny, nx] scaled so that sum_c |S_c|^2 = 1 at every pixel (complex64)."""
    return (maps / (np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True)) + 1e-12)).astype(np.complex64)


def simulated_coil_maps(shape: tuple[int, int], coils: int) -> np.ndarray:
    """Smooth coil maps from coils placed on a ring around the field of view, sum |S|^2 = 1."""
    ny, nx = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    maps = []
    for c in range(coils):
        angle = 2 * np.pi * c / coils
        cy, cx = 1.5 * np.sin(angle), 1.5 * np.cos(angle)
        dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
        maps.append(np.exp(-dist2 / 2.0) * np.exp(1j * (angle + 0.5 * (yy * np.cos(angle) + xx * np.sin(angle)))))
    return normalise_maps(np.array(maps))


def simulate_problem(
    image: np.ndarray,
    mask: np.ndarray,
    maps: np.ndarray | None = None,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
    meta: dict | None = None,
) -> Problem:
    """Fully sample ``image`` through ``maps`` (or one coil), add noise, undersample by ``mask``.

    The fully sampled (noise-free) image is kept as the Problem's reference.
    """
    rng = rng or np.random.default_rng(0)
    image = np.asarray(image).astype(np.complex64)
    coil_images = image[None] if maps is None else maps * image[None]
    kspace = fft2c(coil_images)
    if noise_std > 0:
        noise = rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)
        kspace = kspace + (noise_std / np.sqrt(2) * noise).astype(np.complex64)
    return Problem(kspace=kspace, mask=mask, maps=maps, reference=image, meta=dict(meta or {}))


def birdcage_coil_maps(
    shape: tuple[int, int],
    coils: int,
    *,
    radius: float = 1.5,
    coils_per_ring: int | None = None,
) -> np.ndarray:
    """Analytic birdcage-style receive maps (sigpy's Biot-Savart model), sum_c |S_c|^2 = 1.

    ``radius`` is the coil ring radius relative to the field of view (larger = flatter maps);
    ``coils_per_ring`` (default: all) sets how
    many coils share one ring, as in arrays with several rings along z.
    """
    import sigpy.mri

    ny, nx = shape
    per_ring = coils if coils_per_ring is None else max(1, min(coils, coils_per_ring))
    return normalise_maps(np.asarray(sigpy.mri.birdcage_maps((coils, ny, nx), r=radius, nzz=per_ring)))
