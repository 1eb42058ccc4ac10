"""Seeded undersampling masks for Cartesian MRI.

Four families, all returning a :class:`MaskResult`:

* ``"radial"`` -- :func:`radial_view_ordered`: variable-density Cartesian sampling of a 2D
  phase-encode plane (ky-kz of a 3D scan) with radial view ordering, as in VDRad
  (Cheng et al.) and the RGANCS paper (Mardani et al.).
* ``"poisson"`` -- :func:`poisson_disc`: 2D variable-density Poisson disc.
* ``"lines"`` -- :func:`variable_density_lines`: 1D variable-density ky lines for 2D scans.
* ``"uniform"`` -- :func:`uniform_lines`: every R-th ky line plus a centred block of ACS lines
  (GRAPPA/SENSE-style parallel imaging).

Conventions shared by every family:

* A mask is a boolean array ``[ny, nx]``; axis 0 is ky, axis 1 is kz (or the readout for
  ``"lines"`` and ``"uniform"``). The k-space centre is ``(ny // 2, nx // 2)``, as produced by a centred FFT
  (``fftshift(fft(ifftshift(x)))``).
* Acceleration is ``mask.size / mask.sum()``. ``"radial"``, ``"poisson"`` and ``"lines"`` sample
  exactly ``round(N / R)`` points (``N = ny * nx``; for lines ``round(ny / R)`` lines), so the
  achieved acceleration differs from the requested one only by that rounding. ``"uniform"``
  follows the scanners' labelling instead: R is the lattice spacing, and the ACS lines on top
  of the lattice make the achieved acceleration lower than R.
* Calibration region (``calib``): a centred, fully sampled block. ``None`` selects the
  default: 10 % of each dimension rounded, at least 4 (never more than the dimension),
  shrunk (uniformly, to no less than 1) where it would take more than a third of the point
  budget, so a default never makes a request impossible. An int gives a square block, a
  pair ``(ny_c, nx_c)``; 0 gives no block. The block
  spans rows ``ny // 2 - ny_c // 2`` to ``ny // 2 - ny_c // 2 + ny_c - 1`` (likewise for
  columns), i.e. it holds the centre pixel and is symmetric for odd sizes.
* Everything is driven by ``numpy.random.default_rng(seed)``: equal arguments give identical
  masks and view orders.
* ``rho`` below is the normalised elliptical radius
  ``sqrt(((ky - ny//2) / (ny/2))**2 + ((kz - nx//2) / (nx/2))**2)``: 1 at the middle of
  each edge, about sqrt(2) in the corners; density laws depend on ``rho`` only, so they
  stretch with non-square grids.

Impossible requests raise :class:`~recon_plugin.errors.MaskSpecError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import MaskSpecError

__all__ = [
    "FAMILIES",
    "GOLDEN_ANGLE",
    "GOLDEN_ANGLE_DIAMETER",
    "MaskResult",
    "fully_sampled_centre",
    "make_mask",
    "poisson_disc",
    "radial_view_ordered",
    "uniform_lines",
    "variable_density_lines",
    "write_mask_files",
]

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
"""Golden angle for rays over 360 degrees: pi*(3 - sqrt(5)) rad, about 137.508 degrees."""

GOLDEN_ANGLE_DIAMETER = math.pi * 2.0 / (1.0 + math.sqrt(5.0))
"""180 degrees / golden ratio, about 111.246 degrees: the variant for full-diameter spokes."""

FAMILIES = ("radial", "poisson", "lines", "uniform")

Calib = int | Sequence[int] | None


@dataclass(frozen=True, eq=False)
class MaskResult:
    """A sampling mask and how it was made.

    ``view_order`` is the acquisition order: for ``"radial"`` an int array ``[n_sampled, 2]`` of
    ``(ky, kz)`` visiting every sampled point exactly once; for ``"lines"`` an int array
    ``[n_lines]`` of ky indices (also ``"uniform"``); ``None`` for ``"poisson"`` (no natural order; files then use
    raster order). Arrays are read-only.
    """

    mask: np.ndarray
    view_order: np.ndarray | None
    family: str
    acceleration_requested: float
    seed: int
    calib: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        mask = np.array(self.mask, dtype=bool)
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        if self.view_order is not None:
            order = np.array(self.view_order, dtype=np.int64)
            order.setflags(write=False)
            object.__setattr__(self, "view_order", order)

    @property
    def acceleration(self) -> float:
        """Achieved acceleration, ``mask.size / mask.sum()``."""
        return self.mask.size / int(self.mask.sum())

    @property
    def sampled_fraction(self) -> float:
        """Fraction of k-space points sampled, ``1 / acceleration``."""
        return int(self.mask.sum()) / self.mask.size


# --------------------------------------------------------------------------- validation


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise MaskSpecError(f"mask shape must be a pair (ny, nx), got {shape!r}") from None
    if len(dims) != 2 or not all(isinstance(d, int | np.integer) for d in dims):
        raise MaskSpecError(f"mask shape must be a pair of ints (ny, nx), got {shape!r}")
    ny, nx = int(dims[0]), int(dims[1])
    if ny <= 0 or nx <= 0:
        raise MaskSpecError(f"mask shape must have positive dimensions, got ({ny}, {nx})")
    return ny, nx


def _check_acceleration(acceleration: float) -> float:
    try:
        acc = float(acceleration)
    except (TypeError, ValueError):
        raise MaskSpecError(f"acceleration must be a number, got {acceleration!r}") from None
    if not math.isfinite(acc) or acc < 1.0:
        raise MaskSpecError(f"acceleration must be a finite number >= 1 (1 = fully sampled), got {acceleration!r}")
    return acc


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MaskSpecError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _default_calib_size(n: int, budget: float) -> int:
    """10 % of ``n`` (at least 4, at most ``n``), shrunk to fit ``budget`` (at least 1)."""
    size = min(n, max(4, round(0.1 * n)))
    return size if size <= budget else max(1, math.floor(budget))


def _resolve_calib(calib: Calib, shape: tuple[int, int], target: int) -> tuple[int, int]:
    ny, nx = shape
    if calib is None:
        # Default: 10 % of each side, shrunk uniformly to at most a third of the budget.
        sy, sx = (_default_calib_size(n, math.inf) for n in shape)
        if sy * sx > target / 3:
            f = math.sqrt(target / 3 / (sy * sx))
            sy, sx = max(1, math.floor(sy * f)), max(1, math.floor(sx * f))
        return (sy, sx)
    if isinstance(calib, int | np.integer) and not isinstance(calib, bool):
        size = (int(calib), int(calib))
    else:
        bad = MaskSpecError(f"calib must be an int or a pair (ny_c, nx_c), got {calib!r}")
        try:
            size = tuple(int(c) for c in calib)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise bad from None
        if len(size) != 2:
            raise bad
    if min(size) < 0:
        raise MaskSpecError(f"calibration size must be >= 0, got {size}")
    if size[0] > ny or size[1] > nx:
        raise MaskSpecError(
            f"calibration region {size[0]}x{size[1]} is larger than the {ny}x{nx} grid; choose a smaller calib"
        )
    if 0 in size:
        return (0, 0)
    return size  # type: ignore[return-value]


def _calib_slice(n: int, c: int) -> slice:
    start = n // 2 - c // 2
    return slice(start, start + c)


def _calib_mask(shape: tuple[int, int], calib: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[_calib_slice(shape[0], calib[0]), _calib_slice(shape[1], calib[1])] = True
    return mask


def _target_count(n_total: int, acceleration: float, what: str) -> int:
    target = round(n_total / acceleration)
    if target < 1:
        raise MaskSpecError(
            f"acceleration {acceleration:g} leaves no {what} to sample out of {n_total}; "
            f"use an acceleration <= {n_total}"
        )
    return target


def _check_budget(n_calib: int, target: int, n_total: int, acceleration: float, what: str) -> None:
    if n_calib > target:
        raise MaskSpecError(
            f"the calibration region holds {n_calib} {what} but acceleration {acceleration:g} "
            f"allows only {target} of {n_total}; reduce calib or the acceleration "
            f"(at most {n_total / n_calib:.3g}x with this calib)"
        )


def _normalised_radius(shape: tuple[int, int]) -> np.ndarray:
    ny, nx = shape
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    return np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)


def _normalised_angle(shape: tuple[int, int]) -> np.ndarray:
    ny, nx = shape
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    return np.mod(np.arctan2(x[None, :], y[:, None]), 2 * math.pi)


# --------------------------------------------------------------------------- radial (VDRad)


def radial_view_ordered(
    shape: Sequence[int],
    acceleration: float,
    *,
    calib: Calib = None,
    seed: int = 0,
    points_per_spoke: int | None = None,
    density_power: float = 1.5,
    angle_step: float = GOLDEN_ANGLE,
) -> MaskResult:
    """Variable-density Cartesian ky-kz mask with radial (VDRad-style) view ordering.

    Spokes are rays from the centre, spoke ``s`` at angle ``theta0 + s * angle_step``
    (``theta0`` drawn from the seed; default step :data:`GOLDEN_ANGLE`, 137.508 deg, the golden
    angle for rays over 360 deg; pass :data:`GOLDEN_ANGLE_DIAMETER` for the 111.246 deg
    variant). Spoke point ``j`` of ``M`` sits at ``rho = sqrt(2) * t**density_power`` with
    ``t = (j + u) / M``, ``u ~ U[0, 1)`` (seeded jitter), mapped to ``(ny/2, nx/2)``-scaled
    (elliptical) coordinates and snapped to the nearest grid point; points off the grid or
    already visited are dropped. Spacing along a spoke grows with radius and spokes diverge,
    so density falls with ``rho``. Spokes are added until the mask (calibration block plus
    spoke points) holds exactly ``round(N / acceleration)`` points; the last spoke is cut
    short at its outer end. If spokes stop finding new points (only near acceleration 1) the
    rest is filled with the unsampled points of smallest ``rho``.

    ``view_order`` ([n_sampled, 2] of ``(ky, kz)``): spoke by spoke, each from the centre
    outward, then the sampled points no spoke visited (calibration points and any fill),
    sorted by ``rho`` and then angle. Every sampled point appears exactly once.

    ``points_per_spoke`` defaults to ``max(8, ceil(max(ny, nx) / 4))``.
    """
    ny, nx = _check_shape(shape)
    acc = _check_acceleration(acceleration)
    seed = _check_seed(seed)
    n_total = ny * nx
    target = _target_count(n_total, acc, "points")
    cal = _resolve_calib(calib, (ny, nx), target)
    if points_per_spoke is None:
        points_per_spoke = max(8, math.ceil(max(ny, nx) / 4))
    if int(points_per_spoke) < 2:
        raise MaskSpecError(f"points_per_spoke must be >= 2, got {points_per_spoke!r}")
    if not (math.isfinite(density_power) and density_power > 0):
        raise MaskSpecError(f"density_power must be a positive number, got {density_power!r}")
    if not math.isfinite(angle_step):
        raise MaskSpecError(f"angle_step must be finite, got {angle_step!r}")
    m = int(points_per_spoke)
    calib_flat = _calib_mask((ny, nx), cal).reshape(-1)
    n_calib = int(calib_flat.sum())
    _check_budget(n_calib, target, n_total, acc, "points")

    rng = np.random.default_rng(seed)
    sampled = calib_flat.copy()
    visited = np.zeros(n_total, dtype=bool)
    chunks: list[np.ndarray] = []
    count = n_calib
    cy, cx, hy, hx = ny // 2, nx // 2, ny / 2, nx / 2
    theta0 = rng.uniform(0.0, 2 * math.pi)
    steps = np.arange(m)
    max_spokes = 8 * math.ceil(n_total / m) + 64
    patience, idle, spoke = 64, 0, 0
    while count < target and spoke < max_spokes and idle < patience:
        theta = theta0 + spoke * angle_step
        spoke += 1
        rho = math.sqrt(2.0) * ((steps + rng.random(m)) / m) ** density_power
        ky = np.floor(cy + rho * hy * math.cos(theta) + 0.5).astype(np.int64)
        kz = np.floor(cx + rho * hx * math.sin(theta) + 0.5).astype(np.int64)
        inside = (ky >= 0) & (ky < ny) & (kz >= 0) & (kz < nx)
        flat = ky[inside] * nx + kz[inside]
        _, first = np.unique(flat, return_index=True)
        flat = flat[np.sort(first)]
        flat = flat[~visited[flat]]
        adds = ~sampled[flat]
        n_new = int(adds.sum())
        if n_new > target - count:
            cut = int(np.searchsorted(np.cumsum(adds), target - count)) + 1
            flat, n_new = flat[:cut], target - count
        idle = 0 if n_new else idle + 1
        visited[flat] = True
        sampled[flat] = True
        count += n_new
        chunks.append(flat)

    rho_grid = _normalised_radius((ny, nx)).reshape(-1)
    angle_grid = _normalised_angle((ny, nx)).reshape(-1)
    if count < target:  # spokes exhausted: fill the innermost unsampled points
        free = np.flatnonzero(~sampled)
        fill = free[np.lexsort((angle_grid[free], rho_grid[free]))][: target - count]
        sampled[fill] = True
    tail = np.flatnonzero(sampled & ~visited)
    chunks.append(tail[np.lexsort((angle_grid[tail], rho_grid[tail]))])
    order = np.concatenate(chunks)
    view_order = np.stack([order // nx, order % nx], axis=1).astype(np.int64)
    return MaskResult(sampled.reshape(ny, nx), view_order, "radial", acc, seed, cal)


# --------------------------------------------------------------------------- Poisson disc


class _DiscBlocker:
    """Marks discs (distance < r, r quantised to 1/8 pixel) as blocked on a grid."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.blocked = np.zeros(shape, dtype=bool)
        self._stencils: dict[int, tuple[int, np.ndarray]] = {}

    def stencil(self, key: int) -> tuple[int, np.ndarray]:
        if key not in self._stencils:
            r = key / 8.0
            h = max(0, math.ceil(r) - 1)
            d = np.arange(-h, h + 1)
            self._stencils[key] = (h, d[:, None] ** 2 + d[None, :] ** 2 < r * r)
        return self._stencils[key]

    def block(self, y: int, x: int, key: int) -> None:
        h, st = self.stencil(key)
        ny, nx = self.blocked.shape
        y0, y1, x0, x1 = max(y - h, 0), min(y + h + 1, ny), max(x - h, 0), min(x + h + 1, nx)
        self.blocked[y0:y1, x0:x1] |= st[y0 - y + h : y1 - y + h, x0 - x + h : x1 - x + h]


def _poisson_sweep(radius: np.ndarray, calib_mask: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Random sequential Poisson disc: accept a candidate unless within r(p) of an accepted p."""
    ny, nx = radius.shape
    keys = np.maximum(np.rint(radius * 8.0), 1).astype(np.int64).reshape(-1).tolist()
    blocker = _DiscBlocker((ny, nx))
    mask = calib_mask.copy()
    for idx in np.flatnonzero(calib_mask).tolist():
        blocker.block(idx // nx, idx % nx, keys[idx])
    flat_blocked = blocker.blocked.reshape(-1)
    flat_mask = mask.reshape(-1)
    for idx in order.tolist():
        if flat_blocked[idx]:
            continue
        flat_mask[idx] = True
        blocker.block(idx // nx, idx % nx, keys[idx])
    return mask


def _fill_largest_gaps(mask: np.ndarray, radius: np.ndarray, n_add: int) -> np.ndarray:
    """Add ``n_add`` points one by one where distance-to-nearest-sample / r is largest."""
    mask = mask.copy()
    if n_add <= 0:
        return mask
    from scipy import ndimage  # here: scipy.ndimage takes a third of a second to import, most masks never get here

    ny, nx = mask.shape
    dist = ndimage.distance_transform_edt(~mask) if mask.any() else np.full(mask.shape, np.inf)
    dist = np.minimum(dist, float(ny + nx))
    yy, xx = np.mgrid[:ny, :nx]
    for _ in range(n_add):
        y, x = np.unravel_index(int(np.argmax(dist / radius)), mask.shape)
        reach = math.ceil(float(dist.max()))  # no cell is farther than this from a sample
        y0, y1 = max(y - reach, 0), min(y + reach + 1, ny)
        x0, x1 = max(x - reach, 0), min(x + reach + 1, nx)
        d_new = np.hypot(yy[y0:y1, x0:x1] - y, xx[y0:y1, x0:x1] - x)
        np.minimum(dist[y0:y1, x0:x1], d_new, out=dist[y0:y1, x0:x1])
        mask[y, x] = True
    return mask


def poisson_disc(
    shape: Sequence[int],
    acceleration: float,
    *,
    calib: Calib = None,
    seed: int = 0,
    density_slope: float = 4.0,
    radius_jitter: float = 0.2,
    max_iter: int = 30,
) -> MaskResult:
    """2D variable-density Poisson-disc mask (own dart throwing on the grid).

    Grid points outside the calibration block are visited once in a seeded random order; a
    point is accepted unless it lies closer than ``r(p)`` pixels (isotropic pixel distance) to
    an already accepted point ``p`` (calibration points count as accepted), with
    ``r(p) = s * (1 + density_slope * rho(p)) * j(p)``. The minimum distance grows linearly
    with the elliptical radius (5x wider spacing at the edge than at the centre by default),
    so density falls roughly as ``1 / r**2``; where ``r <= 1`` every point is taken.
    ``j(p)`` is a seeded jitter, uniform in ``1 +- radius_jitter``, that blends the grid's
    discrete distance levels (1, sqrt 2, 2, ...) so the density falls smoothly rather than in
    plateaus. The scale ``s`` is found by a bracketed (Illinois) search until the count is
    within 0.5 % below ``round(N / acceleration)``; the missing points are then added one at a
    time where the gap (distance to the nearest sample divided by ``r``) is largest, so the
    count is exact. ``view_order`` is ``None`` (files use raster order).
    """
    ny, nx = _check_shape(shape)
    acc = _check_acceleration(acceleration)
    seed = _check_seed(seed)
    n_total = ny * nx
    target = _target_count(n_total, acc, "points")
    cal = _resolve_calib(calib, (ny, nx), target)
    if not (math.isfinite(density_slope) and density_slope >= 0):
        raise MaskSpecError(f"density_slope must be a number >= 0, got {density_slope!r}")
    if not (math.isfinite(radius_jitter) and 0 <= radius_jitter < 1):
        raise MaskSpecError(f"radius_jitter must be in [0, 1), got {radius_jitter!r}")
    calib_mask = _calib_mask((ny, nx), cal)
    n_calib = int(calib_mask.sum())
    _check_budget(n_calib, target, n_total, acc, "points")

    rng = np.random.default_rng(seed)
    free = np.flatnonzero(~calib_mask.reshape(-1))
    order = free[rng.permutation(free.size)]
    shape_r = (1.0 + density_slope * _normalised_radius((ny, nx))) * (
        1.0 + radius_jitter * (2.0 * rng.random((ny, nx)) - 1.0)
    )
    if target == n_total:
        return MaskResult(np.ones((ny, nx), bool), None, "poisson", acc, seed, cal)
    if target == n_calib:
        return MaskResult(calib_mask, None, "poisson", acc, seed, cal)

    def excess(scale: float) -> tuple[int, np.ndarray]:
        m = _poisson_sweep(scale * shape_r, calib_mask, order)
        return int(m.sum()) - target, m

    # excess(s) falls as s grows; excess(0) = N - target > 0 (every point accepted).
    tol = max(1, round(0.005 * target))
    lo, f_lo = 0.0, float(n_total - target)
    hi = 0.5
    f_hi, m_hi = excess(hi)
    while f_hi > 0:
        lo, f_lo, hi = hi, f_hi, 2.0 * hi
        f_hi, m_hi = excess(hi)
    best, best_f, best_s = m_hi, f_hi, hi  # closest mask at or below the target
    retained = 0  # +1: lo moved last time, -1: hi moved last time (Illinois bookkeeping)
    for _ in range(max_iter):
        if best_f >= -tol or hi - lo <= 1e-9 * hi:
            break
        s = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        if not lo < s < hi:
            s = 0.5 * (lo + hi)
        f_s, m_s = excess(s)
        if f_s <= 0:
            if f_s > best_f:
                best, best_f, best_s = m_s, f_s, s
            hi, f_hi = s, f_s
            if retained == -1:
                f_lo /= 2
            retained = -1
        else:
            lo, f_lo = s, f_s
            if retained == 1:
                f_hi /= 2
            retained = 1
    mask = _fill_largest_gaps(best, best_s * shape_r, -best_f)
    return MaskResult(mask, None, "poisson", acc, seed, cal)


# --------------------------------------------------------------------------- 1D lines


def _inclusion_probabilities(weights: np.ndarray, k: int) -> np.ndarray:
    """pi_i = min(1, c * w_i) with sum(pi) = k (water filling); requires k <= len(w)."""
    pi = np.zeros_like(weights, dtype=float)
    capped = np.zeros(weights.size, dtype=bool)
    while True:
        free = ~capped
        k_free = k - capped.sum()
        pi[free] = weights[free] * (k_free / weights[free].sum())
        over = free & (pi >= 1.0)
        if not over.any():
            break
        capped |= over
        pi[capped] = 1.0
        if capped.all():
            break
    return pi


def variable_density_lines(
    shape: Sequence[int],
    acceleration: float,
    *,
    calib: Calib = None,
    seed: int = 0,
    power: float = 2.0,
    min_density: float = 0.05,
) -> MaskResult:
    """1D variable-density ky lines for 2D (multi-slice) scans; whole rows are sampled.

    Exactly ``round(ny / acceleration)`` ky lines (axis 0) are chosen: the ``calib`` centre
    lines (an int; for a pair only the first entry counts; default 10 % of ny, at least 4,
    at most a third of the line budget, e.g. 21 lines for 256 at 4x, 10 at 8x) plus others
    drawn with inclusion probability proportional to the polynomial density
    ``w = max((1 - |rho|)**power, min_density)``, ``rho = (ky - ny//2) / (ny/2)``, capped at 1.
    The draw is stratified (jittered systematic sampling over ky in ascending order, strata of
    unit cumulative probability, seeded jitter), so the line density follows ``w`` closely
    while the positions stay random. Rows are broadcast along axis 1.

    ``view_order`` is an int array ``[n_lines]`` of the sampled ky indices in acquisition
    order, which is linear (ascending ky).
    """
    ny, nx = _check_shape(shape)
    acc = _check_acceleration(acceleration)
    seed = _check_seed(seed)
    if not (math.isfinite(power) and power >= 0):
        raise MaskSpecError(f"power must be a non-negative number, got {power!r}")
    if not (math.isfinite(min_density) and 0 < min_density <= 1):
        raise MaskSpecError(f"min_density must be in (0, 1], got {min_density!r}")
    k = _target_count(ny, acc, "ky lines")
    if calib is None:
        n_cal = _default_calib_size(ny, k / 3)
    elif isinstance(calib, int | np.integer) and not isinstance(calib, bool):
        n_cal = int(calib)
    else:
        n_cal = _resolve_calib(calib, (ny, nx), k)[0]
    if n_cal < 0 or n_cal > ny:
        raise MaskSpecError(f"calibration of {n_cal} lines does not fit {ny} ky lines; choose 0..{ny}")
    _check_budget(n_cal, k, ny, acc, "ky lines")

    rng = np.random.default_rng(seed)
    lines = np.zeros(ny, dtype=bool)
    lines[_calib_slice(ny, n_cal)] = True
    pool = np.flatnonzero(~lines)  # ascending ky
    k_rest = k - n_cal
    if k_rest > 0:
        rho = np.abs(pool - ny // 2) / (ny / 2)
        w = np.maximum(np.clip(1.0 - rho, 0.0, 1.0) ** power, min_density)
        pi = _inclusion_probabilities(w, k_rest)
        edges = np.concatenate([[0.0], np.cumsum(pi)])
        edges[-1] = float(k_rest)  # remove rounding drift
        chosen = np.zeros(pool.size, dtype=bool)
        positions = np.arange(k_rest) + rng.random(k_rest)
        for pos in positions:
            i = min(int(np.searchsorted(edges, pos, side="right")) - 1, pool.size - 1)
            if chosen[i]:  # stratum collision: take the nearest free line after, else before
                after = np.flatnonzero(~chosen[i:])
                i = i + int(after[0]) if after.size else int(np.flatnonzero(~chosen)[-1])
            chosen[i] = True
        lines[pool[chosen]] = True

    mask = np.repeat(lines[:, None], nx, axis=1)
    view_order = np.flatnonzero(lines).astype(np.int64)
    return MaskResult(mask, view_order, "lines", acc, seed, (n_cal, nx if n_cal else 0))


# --------------------------------------------------------------------------- uniform (GRAPPA-style)


def _check_lattice_factor(acceleration: float | int) -> int:
    """R as an int >= 1: an int, or a float with an integer value; anything else is a MaskSpecError."""
    bad = MaskSpecError(f"uniform acceleration must be an integer >= 1 (every R-th line), got {acceleration!r}")
    if isinstance(acceleration, bool):
        raise bad
    if isinstance(acceleration, int | np.integer):
        factor = int(acceleration)
    else:
        try:
            value = float(acceleration)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(value) or value != math.floor(value):
            raise bad
        factor = int(value)
    if factor < 1:
        raise bad
    return factor


def _acs_lines(calib: Calib, ny: int) -> int:
    """Number of ACS lines: an int, or a pair of which the first entry counts; ``None`` = 24."""
    if calib is None:
        return min(24, ny)
    if isinstance(calib, int | np.integer) and not isinstance(calib, bool):
        n_cal = int(calib)
    else:
        try:
            first = calib[0]  # type: ignore[index]
        except (TypeError, IndexError, KeyError):
            raise MaskSpecError(f"calib must be an int or a pair (ny_c, nx_c), got {calib!r}") from None
        if isinstance(first, bool) or not isinstance(first, int | np.integer):
            raise MaskSpecError(f"calib must be an int or a pair of ints, got {calib!r}")
        n_cal = int(first)
    if n_cal < 0 or n_cal > ny:
        raise MaskSpecError(f"calibration of {n_cal} ACS lines does not fit {ny} ky lines; choose 0..{ny}")
    return n_cal


def uniform_lines(
    shape: Sequence[int],
    acceleration: float | int,
    *,
    calib: Calib = 24,
    seed: int = 0,
    offset: int | None = None,
) -> MaskResult:
    """GRAPPA/SENSE-style ky lines: every R-th line plus a centred block of ``calib`` ACS lines.

    ``acceleration`` is the lattice spacing R, an integer >= 1 (an int, or a float with an integer
    value such as 3.0) and at most ny. Lattice lines are ``ky % R == offset``; ``offset`` (0..R-1)
    defaults to one drawn from ``numpy.random.default_rng(seed)``, so masks are seeded and
    reproducible. ``calib`` ACS lines (an int >= 0 and at most ny; for a pair only the first
    entry counts; ``None`` = 24) span rows ``ny//2 - calib//2`` onwards, so the centre line
    ``ny // 2`` is always sampled when ``calib > 0``. Rows are broadcast along axis 1.

    ``acceleration_requested`` is R, as scanners label GRAPPA/SENSE factors; the achieved
    acceleration (``mask.size / mask.sum()``) is lower because of the ACS lines, e.g. 256 lines
    at R = 3 with 24 ACS lines sample 101 or 102 lines: about 2.5x.

    ``view_order`` is an int array ``[n_lines]`` of the sampled ky indices, ascending.
    """
    ny, nx = _check_shape(shape)
    factor = _check_lattice_factor(acceleration)
    if factor > ny:
        raise MaskSpecError(f"uniform acceleration {factor} is larger than the {ny} ky lines; use at most {ny}")
    seed = _check_seed(seed)
    n_cal = _acs_lines(calib, ny)
    if offset is None:
        phase = int(np.random.default_rng(seed).integers(factor))
    elif isinstance(offset, bool) or not isinstance(offset, int | np.integer) or not 0 <= offset < factor:
        raise MaskSpecError(f"offset must be an int in 0..{factor - 1} for acceleration {factor}, got {offset!r}")
    else:
        phase = int(offset)

    lines = np.zeros(ny, dtype=bool)
    lines[phase::factor] = True
    lines[_calib_slice(ny, n_cal)] = True
    mask = np.repeat(lines[:, None], nx, axis=1)
    view_order = np.flatnonzero(lines).astype(np.int64)
    return MaskResult(mask, view_order, "uniform", float(factor), seed, (n_cal, nx if n_cal else 0))


# --------------------------------------------------------------------------- dispatch, files

_BUILDERS = {
    "radial": radial_view_ordered,
    "poisson": poisson_disc,
    "lines": variable_density_lines,
    "uniform": uniform_lines,
}


def make_mask(family: str, shape: Sequence[int], acceleration: float, **kw: Any) -> MaskResult:
    """Build a mask of ``family`` ("radial", "poisson", "lines" or "uniform"); ``kw`` go to the builder."""
    key = str(family).strip().lower()
    if key not in _BUILDERS:
        raise MaskSpecError(f"unknown mask family {family!r}; choose one of {', '.join(FAMILIES)}")
    return _BUILDERS[key](shape, acceleration, **kw)


_ORDER_COLOURS = np.array(  # dark blue -> cyan -> yellow -> red, for early -> late
    [[40, 40, 200], [0, 200, 230], [250, 230, 30], [230, 30, 30]], dtype=float
)


def _order_colours(t: np.ndarray) -> np.ndarray:
    anchors = np.linspace(0.0, 1.0, len(_ORDER_COLOURS))
    return np.stack([np.interp(t, anchors, _ORDER_COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


def _preview(result: MaskResult) -> Image.Image:
    mask = np.asarray(result.mask, dtype=bool)
    ny, nx = mask.shape
    panels = [np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)]
    vo = result.view_order
    if vo is not None and len(vo) > 0:
        rank = np.full((ny, nx), -1.0)
        t = np.arange(len(vo)) / max(len(vo) - 1, 1)
        if vo.ndim == 1:
            rank[vo, :] = t[:, None]
        else:
            rank[vo[:, 0], vo[:, 1]] = t
        colour = np.zeros((ny, nx, 3), dtype=np.uint8)
        colour[rank >= 0] = _order_colours(rank[rank >= 0])
        panels += [np.full((ny, max(2, nx // 32), 3), 96, dtype=np.uint8), colour]
    image = np.concatenate(panels, axis=1)
    scale = int(np.clip(math.ceil(512 / max(ny, nx)), 1, 4))
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    return Image.fromarray(image)


def write_mask_files(result: MaskResult, stem: str | Path) -> dict[str, Path]:
    """Write ``<stem>.npy``, ``<stem>_view_order.csv`` and ``<stem>.png``.

    The npy holds the boolean mask. The CSV has header ``index,ky,kz`` and one row per sampled
    point in acquisition order (raster order when ``view_order`` is ``None``), or ``index,ky``
    and one row per line for ``"lines"`` and ``"uniform"``. The PNG shows the mask white on black, magnified
    (nearest neighbour, up to 4x) and, when there is a view order, a second panel colouring
    points by acquisition time (blue early, red late). Parent folders are created.
    Returns ``{"mask": ..., "view_order": ..., "preview": ...}``.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "mask": stem.parent / f"{stem.name}.npy",
        "view_order": stem.parent / f"{stem.name}_view_order.csv",
        "preview": stem.parent / f"{stem.name}.png",
    }
    mask = np.asarray(result.mask, dtype=bool)
    np.save(paths["mask"], mask)
    vo = result.view_order
    if vo is None:
        vo = np.argwhere(mask)
    vo = np.asarray(vo, dtype=np.int64)
    if vo.ndim == 1:
        header, rows = "index,ky", np.stack([np.arange(len(vo)), vo], axis=1)
    else:
        header, rows = "index,ky,kz", np.column_stack([np.arange(len(vo)), vo])
    np.savetxt(paths["view_order"], rows, fmt="%d", delimiter=",", header=header, comments="")
    _preview(result).save(paths["preview"])
    return paths


def fully_sampled_centre(mask: np.ndarray) -> int:
    """Side of the largest centred square block of ``mask`` that is fully sampled (0 if none).

    The block is placed like every calibration block here: rows ``ny//2 - w//2`` to
    ``ny//2 - w//2 + w - 1`` (likewise for columns).
    """
    mask = np.asarray(mask, dtype=bool)
    ny, nx = mask.shape
    best = 0
    for w in range(1, min(ny, nx) + 1):
        if not mask[_calib_slice(ny, w), _calib_slice(nx, w)].all():
            break
        best = w
    return best
