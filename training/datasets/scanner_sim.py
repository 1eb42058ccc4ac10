"""Scanner-like simulation for image training data: coil maps, correlated noise, mask mixtures.

What a scanner sends differs from a clean single-coil simulation in three ways, each drawn per
example here from a seeded ``numpy`` Generator:

* **Coil sensitivities** from a realistic family: real ESPIRiT maps estimated once from measured
  multi-coil k-space (resampled to the slice, randomly flipped, rotated, shifted and stretched),
  or analytic birdcage maps (sigpy) with a random coil count, ring radius and position; sum |S|^2 = 1.
* **Correlated complex noise**: a random noise covariance (random correlation between coils and
  random per-coil gains) at a random level relative to the image's RMS.
* **Undersampling** from a mixture of mask families and accelerations (radial view-ordered VD,
  VD Poisson disc, VD 1D lines, uniform lines with ACS).
* **Resolution** (optional, ``smooth_fraction``): a share of the images is smoothed by a Gaussian k-space
  taper of random width before anything is simulated, so that the network also sees images whose spectrum
  falls off as fast as that of real scans (the SIAT training slices carry more of their energy in the outer
  k-space than the real brains do).
* **Contrast** (optional, ``contrast_fraction``): a share of the images gets a random intensity remap of its
  magnitude (:func:`contrast_remap`: a power curve with exponent log-uniform in ``contrast_gamma`` times a slow
  ripple, so neighbouring tissues can change order), phase kept. The SIAT slices are all T2-weighted from one site;
  the real brains are T1 (MPRAGE), gradient-echo and others, and the default's deficit against CS-Wavelet on them
  lies inside the object, not in the background.
* **Phase** (optional, ``phase_fraction``): a share of the images is multiplied by a smooth random phase map
  (:func:`recon_plugin.simulate.smooth_phase`, within +-``phase_radians``, on a coarse grid drawn from
  ``phase_grids``: 4 varies over about a quarter of the matrix, 16 over a sixteenth). The SIAT slices are nearly real
  up to one global phase (``|sum x^2| / sum |x|^2`` about 0.97 over the brain), while the real brains combined
  with their ESPIRiT maps are not (0.14-0.49): their phase spreads over 0.75-1.6 rad.

The network then sees the maps the scanner path would use: estimated by ESPIRiT from the
undersampled example's own calibration region (``estimate_maps``), not the true ones, and its
reference is the fully sampled noise-free coil data combined with those same maps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from recon_plugin.errors import CoilMapError, InvalidInputError, MaskSpecError
from recon_plugin.masks import FAMILIES, make_mask
from recon_plugin.physics import fft2c, ifft2c
from recon_plugin.problem import Problem
from recon_plugin.simulate import birdcage_coil_maps, normalise_maps, smooth_phase

from .base import DatasetError, UnreadableImageError

#: Calibration width ESPIRiT uses, as the scanner path (``Problem.calib_width``).
CALIB_WIDTH = 24
_SPEC = re.compile(r"^\s*([a-z]+)\s*:\s*([0-9.]+)\s*(?:-\s*([0-9.]+))?\s*$")


@dataclass(frozen=True)
class MaskSpec:
    """One component of a mask mixture: a family and an acceleration range (inclusive)."""

    family: str
    low: float
    high: float

    @classmethod
    def parse(cls, text: str) -> MaskSpec:
        """``"radial:5"`` or ``"uniform:2-4"``; MaskSpecError when malformed or impossible."""
        match = _SPEC.match(str(text).lower())
        if match is None:
            raise MaskSpecError(
                f"mask mixture entry {text!r}: expected FAMILY:R or FAMILY:RLOW-RHIGH, e.g. 'radial:4-8'"
            )
        family, low = match.group(1), float(match.group(2))
        high = float(match.group(3)) if match.group(3) else low
        if family not in FAMILIES:
            raise MaskSpecError(f"mask mixture entry {text!r}: unknown family {family!r}; use one of {FAMILIES}")
        if not (1 <= low <= high) or not math.isfinite(high):
            raise MaskSpecError(f"mask mixture entry {text!r}: need 1 <= RLOW <= RHIGH")
        return cls(family, low, high)

    def __str__(self) -> str:
        return f"{self.family}:{self.low:g}" + (f"-{self.high:g}" if self.high != self.low else "")


def parse_mixture(entries: Sequence[str]) -> list[MaskSpec]:
    """A mask mixture from its text entries (at least one)."""
    if not entries:
        raise MaskSpecError("the mask mixture is empty; give at least one FAMILY:R entry")
    return [MaskSpec.parse(e) for e in entries]


def draw_mask(
    specs: Sequence[MaskSpec],
    shape: tuple[int, int],
    rng: np.random.Generator,
    uniform_calib: tuple[int, int] = (16, 48),
) -> tuple[np.ndarray, dict[str, Any]]:
    """A mask drawn from the mixture: family uniformly, acceleration uniformly in its range.

    Uniform (GRAPPA-style) masks get an integer R and ``uniform_calib`` ACS lines (scaled to the
    matrix when it is smaller than 256 lines, at least 8); the other families use their default
    fully sampled centre, but never less than 8 so coil maps can be calibrated.
    """
    spec = specs[int(rng.integers(len(specs)))]
    seed = int(rng.integers(2**31))
    if spec.family == "uniform":
        acc = float(rng.integers(math.ceil(spec.low), math.floor(spec.high) + 1))
        lo, hi = uniform_calib
        calib = int(rng.integers(lo, hi + 1))
        calib = max(8, round(calib * min(1.0, shape[0] / 256)))
        mask = make_mask("uniform", shape, acc, seed=seed, calib=calib).mask
    else:
        acc = float(rng.uniform(spec.low, spec.high))
        calib = max(8, round(0.1 * min(shape)))
        kw = {"calib": calib} if spec.family == "lines" else {"calib": (calib, calib)}
        mask = make_mask(spec.family, shape, acc, seed=seed, **kw).mask
    return np.asarray(mask), {"family": spec.family, "acceleration": acc, "calib": calib}


# ----------------------------------------------------------------------------- coil maps


def real_maps_from_kspace(path: str | Path, calib_width: int = CALIB_WIDTH) -> np.ndarray:
    """ESPIRiT maps [coils, ny, nx] of a measured multi-coil k-space .npy (fully sampled or with a calibrated centre).

    Readout-oversampled data (one axis twice the other) are fine: the maps are resampled anyway.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(f"coil k-space file {path} does not exist")
    try:
        k = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises many types for corrupt files
        raise UnreadableImageError(f"{path} cannot be read as a .npy array ({type(exc).__name__})") from exc
    if k.ndim != 3 or not np.iscomplexobj(k) or k.shape[0] < 2:
        raise DatasetError(f"{path}: coil k-space must be complex [coils >= 2, ny, nx], got {k.dtype} {k.shape}")
    try:  # the scanner path's own estimate: ESPIRiT on the largest fully sampled centre
        return Problem(kspace=k, mask=np.abs(k).sum(0) > 0, calib_width=calib_width).coil_maps()
    except CoilMapError as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def _augment_real(maps: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Resample real maps to ``shape`` with a random stretch, flip, rotation and shift; renormalised."""
    c, ny, nx = maps.shape
    stretch = rng.uniform(0.85, 1.2, size=2)
    zoom = (shape[0] / ny * stretch[0], shape[1] / nx * stretch[1])
    angle = float(rng.uniform(-180, 180))
    shift = rng.uniform(-0.15, 0.15, size=2) * np.array(shape)
    flip_y, flip_x = rng.random(2) < 0.5
    out = np.empty((c, *shape), dtype=np.complex64)
    for i in range(c):
        planes = []
        for part in (maps[i].real, maps[i].imag):
            p = ndimage.zoom(part, zoom, order=1, mode="nearest")
            p = ndimage.rotate(p, angle, reshape=False, order=1, mode="nearest")
            planes.append(_fit(p, shape, shift))
        out[i] = planes[0] + 1j * planes[1]
    if flip_y:
        out = out[:, ::-1]
    if flip_x:
        out = out[:, :, ::-1]
    return normalise_maps(np.ascontiguousarray(out))


def _fit(plane: np.ndarray, shape: tuple[int, int], shift: np.ndarray) -> np.ndarray:
    """Crop or edge-pad ``plane`` to ``shape`` around its centre moved by ``shift`` pixels."""
    out = plane
    for ax, n in enumerate(shape):
        size = out.shape[ax]
        if size < n:
            before = (n - size) // 2
            widths = [(0, 0), (0, 0)]
            widths[ax] = (before, n - size - before)
            out = np.pad(out, widths, mode="edge")
            size = n
        start = int(np.clip((size - n) // 2 + round(float(shift[ax])), 0, size - n))
        out = out[start : start + n] if ax == 0 else out[:, start : start + n]
    return out


@dataclass
class CoilModel:
    """The family coil maps are drawn from.

    ``real_maps``: ESPIRiT maps of measured arrays (augmented per draw), used with probability
    ``real_fraction``; otherwise birdcage maps with a coil count in ``coil_range`` (inclusive).
    ``single_coil_fraction`` of draws are single coil (no maps).
    """

    coil_range: tuple[int, int] = (4, 32)
    real_maps: list[np.ndarray] = field(default_factory=list)
    real_fraction: float = 0.5
    single_coil_fraction: float = 0.0
    #: Draw birdcage coil counts log-uniformly (as many 2-4 as 16-32 coil arrays) instead of uniformly.
    log_uniform: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.coil_range
        if not 2 <= lo <= hi:
            raise InvalidInputError(f"coil_range must be [low, high] with 2 <= low <= high, got {self.coil_range}")
        for name in ("real_fraction", "single_coil_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def draw_kind(self, rng: np.random.Generator) -> tuple[str, int, int]:
        """(kind, coil count, real-map index) for one batch: all examples of a batch share a coil count."""
        if rng.random() < self.single_coil_fraction:
            return "single", 1, -1
        if self.real_maps and rng.random() < self.real_fraction:
            index = int(rng.integers(len(self.real_maps)))
            return "real", int(self.real_maps[index].shape[0]), index
        lo, hi = self.coil_range
        if self.log_uniform:
            coils = int(np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))))
            return "birdcage", min(hi, max(lo, coils)), -1
        return "birdcage", int(rng.integers(lo, hi + 1)), -1

    def draw_maps(self, kind: str, coils: int, index: int, shape: tuple[int, int], rng: np.random.Generator):
        """Maps [coils, ny, nx] of one example for a kind drawn by :meth:`draw_kind` (None for single coil)."""
        if kind == "single":
            return None
        if kind == "real":
            return _augment_real(self.real_maps[index], shape, rng)
        ring = max(2, coils // int(rng.choice([1, 2]))) if coils >= 8 else coils
        maps = birdcage_coil_maps(shape, coils, radius=float(rng.uniform(1.2, 2.2)), coils_per_ring=ring)
        shift = rng.uniform(-0.1, 0.1, size=2) * np.array(shape)
        k = int(rng.integers(4))
        maps = np.rot90(maps, k, axes=(1, 2)) if shape[0] == shape[1] else maps
        out = np.stack([_shift_complex(m, shift) for m in maps])
        return normalise_maps(out)


def _shift_complex(m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    re_ = ndimage.shift(m.real, shift, order=1, mode="nearest")
    im_ = ndimage.shift(m.imag, shift, order=1, mode="nearest")
    return (re_ + 1j * im_).astype(np.complex64)


def correlated_noise(
    shape: tuple[int, ...], level: float, rng: np.random.Generator, correlation: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Complex noise [coils, ny, nx] with a random covariance Psi (returned), mean per-coil std ``level``.

    Psi = D C D: C a random correlation matrix whose off-diagonal magnitudes are about
    ``correlation``, D random per-coil gains in [0.7, 1.3]; noise = chol(Psi) w, w white.
    """
    coils = shape[0]
    a = rng.standard_normal((coils, coils)) + 1j * rng.standard_normal((coils, coils))
    c = np.eye(coils) + correlation * (a @ a.conj().T) / (2 * coils)
    d = np.sqrt(np.real(np.diag(c)))
    c = c / np.outer(d, d)
    gains = rng.uniform(0.7, 1.3, coils)
    psi = c * np.outer(gains, gains)
    psi = psi / np.real(np.trace(psi)) * coils * level**2
    chol = np.linalg.cholesky(psi)
    white = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2.0)
    noise = np.tensordot(chol, white, axes=(1, 0))
    return noise.astype(np.complex64), psi


def kspace_taper(img: np.ndarray, sigma: float) -> np.ndarray:
    """``img`` (complex, ny x nx) with its centred k-space weighted by exp(-r^2 / (2 sigma^2)), r the k-space
    radius in fractions of the matrix on each axis (0.5 at the edge of either axis): a smoother image of the
    same object, the same at the centre of k-space."""
    ny, nx = img.shape[-2:]
    ky = (np.arange(ny) - ny // 2) / ny
    kx = (np.arange(nx) - nx // 2) / nx
    r2 = ky[:, None] ** 2 + kx[None, :] ** 2
    weight = np.exp(-r2 / (2.0 * sigma**2)).astype(np.float32)
    return ifft2c(fft2c(img) * weight).astype(np.complex64)


def contrast_remap(img: np.ndarray, gamma: float, ripple: float, cycles: float, offset: float) -> np.ndarray:
    """``img`` (complex) with its magnitude m (scaled to max 1) mapped to m**gamma * (1 + ripple * sin(2 pi cycles
    m + offset)) / (1 + ripple), back at the original maximum; the phase is kept and zero stays zero. ``ripple`` in
    [0, 1): 0 gives a plain power curve (monotone); larger values let intensities change order."""
    if not 0 <= ripple < 1 or gamma <= 0:
        raise InvalidInputError(f"contrast_remap needs gamma > 0 and ripple in [0, 1), got {gamma}, {ripple}")
    mag = np.abs(img)
    peak = float(mag.max())
    if peak == 0:
        return img.astype(np.complex64)
    m = mag / peak
    mapped = m**gamma * (1 + ripple * np.sin(2 * np.pi * cycles * m + offset)) / (1 + ripple)
    return (img * np.divide(mapped * peak, mag, out=np.zeros_like(mag), where=mag > 0)).astype(np.complex64)


@dataclass
class ScannerSimulation:
    """Everything drawn per example for scanner-like training data (see the module docstring)."""

    masks: list[MaskSpec]
    coils: CoilModel = field(default_factory=CoilModel)
    noise_range: tuple[float, float] = (0.005, 0.05)
    uniform_calib: tuple[int, int] = (16, 48)
    estimate_maps: bool = True
    calib_width: int = CALIB_WIDTH
    sources: list[str] = field(default_factory=list)
    smooth_fraction: float = 0.0
    smooth_range: tuple[float, float] = (0.2, 0.6)
    contrast_fraction: float = 0.0
    contrast_gamma: tuple[float, float] = (0.5, 2.0)
    phase_fraction: float = 0.0
    phase_radians: float = math.pi
    phase_grids: tuple[int, ...] = (4,)

    def __post_init__(self) -> None:
        if not self.phase_grids or any(int(g) != g or g < 2 for g in self.phase_grids):
            raise InvalidInputError(f"phase_grids must be integers >= 2, got {list(self.phase_grids)}")
        if not 0 <= self.phase_fraction <= 1:
            raise InvalidInputError(f"phase_fraction must be in [0, 1], got {self.phase_fraction}")
        if not (math.isfinite(self.phase_radians) and self.phase_radians > 0):
            raise InvalidInputError(f"phase_radians must be a positive number, got {self.phase_radians}")
        if not 0 <= self.smooth_fraction <= 1:
            raise InvalidInputError(f"smooth_fraction must be in [0, 1], got {self.smooth_fraction}")
        lo, hi = self.smooth_range
        if not 0 < lo <= hi:
            raise InvalidInputError(f"smooth_range must be [low, high] with 0 < low <= high, got {self.smooth_range}")
        if not 0 <= self.contrast_fraction <= 1:
            raise InvalidInputError(f"contrast_fraction must be in [0, 1], got {self.contrast_fraction}")
        lo, hi = self.contrast_gamma
        if not 0 < lo <= hi:
            raise InvalidInputError(
                f"contrast_gamma must be [low, high] with 0 < low <= high, got {self.contrast_gamma}"
            )
        lo, hi = self.noise_range
        if not 0 <= lo <= hi:
            raise InvalidInputError(f"noise_range must be [low, high] with 0 <= low <= high, got {self.noise_range}")
        lo, hi = self.uniform_calib
        if not 0 <= lo <= hi:
            raise InvalidInputError(
                f"uniform_calib must be [low, high] with 0 <= low <= high, got {self.uniform_calib}"
            )

    def draw_noise_level(self, rng: np.random.Generator) -> float:
        """Noise std relative to the image RMS, log-uniform in ``noise_range`` (uniform when it starts at 0)."""
        lo, hi = self.noise_range
        if hi == 0:
            return 0.0
        if lo == 0:
            return float(rng.uniform(0, hi))
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def draw_smoothing(self, rng: np.random.Generator) -> float | None:
        """The k-space taper width (:func:`kspace_taper`) for one image, log-uniform in ``smooth_range``, or None
        (no smoothing; always without drawing anything when ``smooth_fraction`` is 0, so the other draws stay
        those of a simulation without this option)."""
        if self.smooth_fraction <= 0 or rng.random() >= self.smooth_fraction:
            return None
        lo, hi = self.smooth_range
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def draw_contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """``img`` through a random :func:`contrast_remap` (exponent log-uniform in ``contrast_gamma``, ripple in
        [0, 0.6], 0.5-2 cycles, any offset), or None (nothing drawn when ``contrast_fraction`` is 0)."""
        if self.contrast_fraction <= 0 or rng.random() >= self.contrast_fraction:
            return None
        lo, hi = self.contrast_gamma
        gamma = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        ripple, cycles, offset = rng.uniform(0, 0.6), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        return contrast_remap(img, gamma, float(ripple), float(cycles), float(offset))

    def draw_phase(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
        """A smooth random phase map (radians) for one image, or None (nothing drawn when ``phase_fraction`` is 0,
        so the other draws stay those of a simulation without this option)."""
        if self.phase_fraction <= 0 or rng.random() >= self.phase_fraction:
            return None
        # one grid: nothing drawn for it, so the draws stay those of the single-scale phase
        grid = self.phase_grids[0] if len(self.phase_grids) == 1 else int(rng.choice(self.phase_grids))
        return smooth_phase(shape, rng, self.phase_radians, grid=grid)

    def estimate(self, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ESPIRiT maps from the example's own undersampled calibration region: ``Problem.coil_maps``, the
        scanner path's own estimate."""
        return Problem(kspace=y, mask=mask, calib_width=self.calib_width).coil_maps()

    def summary(self) -> dict[str, Any]:
        """What the simulation draws from, for the bundle's sidecar."""
        return {
            "masks": [str(m) for m in self.masks],
            "uniform_calib_lines": list(self.uniform_calib),
            "coil_range": list(self.coils.coil_range),
            "coil_draw": "log-uniform" if self.coils.log_uniform else "uniform",
            "real_map_sources": self.sources,
            "real_map_fraction": self.coils.real_fraction if self.coils.real_maps else 0.0,
            "single_coil_fraction": self.coils.single_coil_fraction,
            "noise_range": list(self.noise_range),
            "noise": "correlated complex Gaussian, random covariance per example, std relative to image RMS",
            "maps_used_by_model": "ESPIRiT from each example's own ACS" if self.estimate_maps else "true maps",
            **(
                {
                    "smooth_fraction": self.smooth_fraction,
                    "smooth_range": list(self.smooth_range),
                    "smoothing": "Gaussian k-space taper, sigma log-uniform in smooth_range (fractions of the matrix)",
                }
                if self.smooth_fraction > 0
                else {}
            ),
            **(
                {
                    "contrast_fraction": self.contrast_fraction,
                    "contrast_gamma": list(self.contrast_gamma),
                    "contrast": "magnitude m -> m**gamma (1 + r sin(2 pi c m + o)) / (1 + r), gamma log-uniform in "
                    "contrast_gamma, r in [0, 0.6], c in [0.5, 2]; phase kept",
                }
                if self.contrast_fraction > 0
                else {}
            ),
            **(
                {
                    "phase_fraction": self.phase_fraction,
                    "phase_radians": self.phase_radians,
                    "phase_grids": list(self.phase_grids),
                    "phase": "smooth random phase map (GxG noise, G drawn from phase_grids, upsampled, blurred) "
                    "within +-phase_radians",
                }
                if self.phase_fraction > 0
                else {}
            ),
        }
