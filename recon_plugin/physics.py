"""Forward models: the centred orthonormal FFT pair, SENSE, and 4x4 super-resolution.

This is the one forward model of the project: training, the networks' data
consistency, the reconstructors and the metrics all use these operators.
Images are complex64 tensors [batch, ny, nx]; multi-coil k-space is
[batch, coils, ny, nx]. Network tensors are real [batch, 2, ny, nx].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .errors import EmptyMaskError, InvalidInputError, NonFiniteDataError, ShapeMismatchError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

_DIMS = (-2, -1)


_SIGNS: dict[tuple, torch.Tensor] = {}


def _centring_sign(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor | None:
    """The checkerboard that replaces the shifts of a centred FFT when every axis has even length, else None.

    For even N, fftshift(fft(ifftshift(x)))[k] = (-1)^(k + N/2) fft((-1)^n x)[k] (and the same for the inverse):
    one elementwise product before and after instead of two copies (rolls) per axis. The constant
    (-1)^(N/2) per axis is split evenly between the two products (each gets its square root, i or 1).
    """
    axes = tuple(a % x.ndim for a in axes)
    sizes = tuple(x.shape[a] for a in axes)
    if any(n % 2 for n in sizes) or not x.is_complex():
        return None
    key = (sizes, axes, x.ndim, x.dtype, x.device)
    sign = _SIGNS.get(key)
    if sign is None:
        shape = [1] * x.ndim
        # a normal tensor even when first asked for under inference mode, so that autograd can use the cached one
        with torch.inference_mode(False):
            sign = torch.ones((), dtype=x.dtype, device=x.device)
            for a, n in zip(axes, sizes, strict=True):
                shape_a = list(shape)
                shape_a[a] = n
                alt = torch.ones(n, dtype=torch.float32)
                alt[1::2] = -1
                phase = 1j if (n // 2) % 2 else 1.0  # sqrt((-1)^(n/2)), applied on both sides
                sign = sign * (alt.to(x.dtype) * phase).reshape(shape_a).to(x.device)
        if len(_SIGNS) > 64:
            _SIGNS.clear()
        _SIGNS[key] = sign
    return sign


def fftc(x: ArrayT, axes: tuple[int, ...] = _DIMS) -> ArrayT:
    """Centred orthonormal FFT over ``axes`` (numpy or torch): fftshift(fft(ifftshift(x)))."""
    if isinstance(x, torch.Tensor):
        sign = _centring_sign(x, axes)
        if sign is not None:
            return torch.fft.fftn(x * sign, dim=axes, norm="ortho") * sign
        x = torch.fft.ifftshift(x, dim=axes)
        return torch.fft.fftshift(torch.fft.fftn(x, dim=axes, norm="ortho"), dim=axes)
    x = np.fft.ifftshift(x, axes=axes)
    out = np.fft.fftshift(np.fft.fftn(x, axes=axes, norm="ortho"), axes=axes)
    return out.astype(np.result_type(x.dtype, np.complex64), copy=False)


def ifftc(k: ArrayT, axes: tuple[int, ...] = _DIMS) -> ArrayT:
    """Centred orthonormal inverse FFT over ``axes`` (numpy or torch)."""
    if isinstance(k, torch.Tensor):
        sign = _centring_sign(k, axes)
        if sign is not None:
            return torch.fft.ifftn(k * sign, dim=axes, norm="ortho") * sign
        k = torch.fft.ifftshift(k, dim=axes)
        return torch.fft.fftshift(torch.fft.ifftn(k, dim=axes, norm="ortho"), dim=axes)
    k = np.fft.ifftshift(k, axes=axes)
    out = np.fft.fftshift(np.fft.ifftn(k, axes=axes, norm="ortho"), axes=axes)
    return out.astype(np.result_type(k.dtype, np.complex64), copy=False)


def fft2c(x: ArrayT) -> ArrayT:
    """Centred orthonormal 2D FFT over the last two axes (numpy or torch)."""
    return fftc(x, _DIMS)


def ifft2c(k: ArrayT) -> ArrayT:
    """Centred orthonormal 2D inverse FFT over the last two axes (numpy or torch)."""
    return ifftc(k, _DIMS)


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex [batch, ny, nx] -> real [batch, 2, ny, nx] (real, imaginary)."""
    return torch.stack((x.real, x.imag), dim=1)


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Real [batch, 2, ny, nx] -> complex64 [batch, ny, nx]."""
    if x.ndim != 4 or x.shape[1] != 2:
        raise ShapeMismatchError(f"expected a [batch, 2, ny, nx] tensor, got {tuple(x.shape)}")
    return torch.complex(x[:, 0].float(), x[:, 1].float())


def check_finite(name: str, x: np.ndarray | torch.Tensor) -> None:
    """Raise NonFiniteDataError when ``x`` holds NaN or infinite values."""
    finite = torch.isfinite(x).all() if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not bool(finite):
        raise NonFiniteDataError(
            f"{name} contains NaN or infinite values; check the acquisition or the file it came from"
        )


#: Relative residual below which conjugate gradients stop updating an element (float32 round-off level).
CG_RELATIVE_TOLERANCE = 1e-5


def _batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Re <a, b> per batch element, shaped [batch, 1, ..., 1] to broadcast against ``a``."""
    dims = tuple(range(1, a.ndim))
    prod = a.conj() * b if a.is_complex() else a * b
    return prod.sum(dim=dims, keepdim=True).real


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor | None = None,
    iterations: int = 10,
) -> torch.Tensor:
    """Solve ``normal(x) = rhs`` by ``iterations`` steps of conjugate gradients, independently per batch element.

    ``normal`` must be Hermitian positive (semi-)definite (e.g. A^H A + lambda I). The number of
    steps is fixed (no early exit), so the result is differentiable end to end and a slice's
    solution does not depend on the other slices of its batch. An element whose residual falls
    below ``CG_RELATIVE_TOLERANCE`` of its right-hand side stays put, so round-off in the null
    space of a semi-definite system (single-coil CG-SENSE) cannot blow up.
    """
    if iterations < 0:
        raise InvalidInputError(f"conjugate-gradient iterations must be >= 0, got {iterations}")
    x = torch.zeros_like(rhs) if x0 is None else x0
    r = rhs - normal(x) if x0 is not None else rhs
    p = r
    rs = _batch_dot(r, r)
    floor = CG_RELATIVE_TOLERANCE**2 * torch.maximum(rs, _batch_dot(rhs, rhs))
    for _ in range(iterations):
        ap = normal(p)
        pap = _batch_dot(p, ap)
        # a converged element (or a direction in the null space of a semi-definite system) stops moving
        active = (rs > floor) & (pap > CG_RELATIVE_TOLERANCE**2 * _batch_dot(p, p))
        alpha = torch.where(active, rs / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _batch_dot(r, r)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x


def _per_slice(lam: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A scalar or per-slice [batch] weight, shaped to broadcast against images [batch, ny, nx]."""
    if isinstance(lam, torch.Tensor) and lam.ndim == 1:
        return lam.reshape(-1, *([1] * (like.ndim - 1)))
    return lam


class _RegularisedSolve:
    """Proximal data consistency shared by the operators: argmin ||A x - y||^2 + lambda ||x - z||^2."""

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - provided by the operator
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - provided by the operator
        raise NotImplementedError

    def regularised_solve(
        self, z: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float, iterations: int = 5
    ) -> torch.Tensor:
        """x = argmin ||A x - y||^2 + lam ||x - z||^2, by CG on (A^H A + lam I) x = A^H y + lam z from x = z.

        ``lam`` is a scalar (tensor or float) or one value per slice; it must be > 0 unless the
        operator alone is invertible on the data. Differentiable in z, y and lam.
        """
        lam_b = _per_slice(lam, z)
        rhs = self.adjoint(y) + lam_b * z
        return conjugate_gradient(lambda v: self.normal(v) + lam_b * v, rhs, z, iterations)

    def cg_sense(self, y: torch.Tensor, iterations: int = 10, lam: float = 0.0) -> torch.Tensor:
        """CG-SENSE: ``iterations`` CG steps on (A^H A + lam I) x = A^H y from x = 0 (few steps regularise)."""
        return conjugate_gradient(lambda v: self.normal(v) + lam * v, self.adjoint(y), None, iterations)


def _normal_product(x: torch.Tensor, maps: torch.Tensor, maps_conj: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(D S)^H F^H M F (D S) x with the checkerboard D folded into ``maps``; in-place products, no autograd graph."""
    with torch.no_grad():
        k = torch.fft.fftn(x.unsqueeze(1) * maps, dim=_DIMS, norm="ortho")
        k.mul_(weight)
        coils = torch.fft.ifftn(k, dim=_DIMS, norm="ortho")
        coils.mul_(maps_conj)
        return coils.sum(1)


class _FusedNormal(torch.autograd.Function):
    """A^H A as one autograd node: A^H A is Hermitian, so its vector-Jacobian product is A^H A again.

    Autograd through the separate products would keep every intermediate coil tensor of every CG step for the
    backward pass; this node keeps nothing but the operator and runs two FFTs per direction.
    """

    @staticmethod
    def forward(ctx, x, maps, maps_conj, weight):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(maps, maps_conj, weight)
        return _normal_product(x, maps, maps_conj, weight)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        maps, maps_conj, weight = ctx.saved_tensors
        return _normal_product(grad, maps, maps_conj, weight), None, None, None


class SenseOperator(_RegularisedSolve):
    """SENSE forward model A x = M F (S x) for a batch of 2D slices.

    ``mask`` is boolean [ny, nx] or [batch, ny, nx]; ``maps`` is complex
    [batch, coils, ny, nx] or [coils, ny, nx] (shared by the batch) or None for
    single coil (maps of ones). Forward maps images [batch, ny, nx] to masked
    k-space [batch, coils, ny, nx]; adjoint goes back; normal is A^H A.
    """

    def __init__(self, mask: torch.Tensor, maps: torch.Tensor | None = None) -> None:
        if mask.ndim not in (2, 3):
            raise ShapeMismatchError(f"mask must be [ny, nx] or [batch, ny, nx], got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        if not bool(mask.reshape(-1, *mask.shape[-2:]).flatten(1).any(1).all()):
            raise EmptyMaskError("the sampling mask selects no k-space point; nothing to reconstruct")
        if maps is not None:
            if maps.ndim == 3:
                maps = maps.unsqueeze(0)
            if maps.ndim != 4:
                raise ShapeMismatchError(
                    f"coil maps must be [coils, ny, nx] or [batch, coils, ny, nx], got {tuple(maps.shape)}"
                )
            if maps.shape[-2:] != mask.shape[-2:]:
                raise ShapeMismatchError(
                    f"coil maps are {tuple(maps.shape[-2:])} in-plane but the mask is {tuple(mask.shape[-2:])}"
                )
            check_finite("coil maps", maps)
            maps = maps.to(torch.complex64)
        self.mask = mask
        self.maps = maps
        self._weight = mask.to(torch.float32)  # 0/1 multiplier, broadcast over coils
        if self._weight.ndim == 3:
            self._weight = self._weight.unsqueeze(1)

    @property
    def shape(self) -> tuple[int, int]:
        """In-plane matrix (ny, nx)."""
        return tuple(self.mask.shape[-2:])  # type: ignore[return-value]

    @property
    def coils(self) -> int:
        """Number of receive coils (1 without maps)."""
        return 1 if self.maps is None else int(self.maps.shape[1])

    def to(self, device: torch.device | str) -> SenseOperator:
        """Return the operator with its tensors on ``device``."""
        maps = None if self.maps is None else self.maps.to(device)
        return SenseOperator(self.mask.to(device), maps)

    def coil_images(self, x: torch.Tensor) -> torch.Tensor:
        """S x: [batch, ny, nx] -> [batch, coils, ny, nx]."""
        x = x.unsqueeze(1)
        return x if self.maps is None else x * self.maps

    def coil_combine(self, c: torch.Tensor) -> torch.Tensor:
        """S^H c: [batch, coils, ny, nx] -> [batch, ny, nx]."""
        if self.maps is None:
            return c[:, 0]
        return (c * self.maps.conj()).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x: image [batch, ny, nx] -> masked k-space [batch, coils, ny, nx]."""
        self._check_image(x)
        return fft2c(self.coil_images(x)) * self._weight

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^H y: k-space [batch, coils, ny, nx] -> image [batch, ny, nx]."""
        if y.ndim != 4 or y.shape[-2:] != self.mask.shape[-2:] or y.shape[1] != self.coils:
            raise ShapeMismatchError(
                f"k-space is {tuple(y.shape)} but the operator expects [batch, {self.coils}, "
                f"{self.shape[0]}, {self.shape[1]}]"
            )
        return self.coil_combine(ifft2c(y * self._weight))

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x.

        For even matrix sizes the centred FFT is D F D with D the checkerboard of :func:`_centring_sign`
        (|D| = 1), so A^H A = (D S)^H F^H M F (D S): the checkerboard is folded into the maps once and each
        product costs two FFTs and three elementwise passes instead of eight (CG runs this many times a slice).
        """
        self._check_image(x)
        folded = self._folded_maps(x)
        if folded is None:
            return self.adjoint(self.forward(x))
        maps, maps_conj = folded
        if torch.is_grad_enabled() and x.requires_grad:
            return _FusedNormal.apply(x, maps, maps_conj, self._weight)
        return _normal_product(x, maps, maps_conj, self._weight)

    def _folded_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(D S, its conjugate materialised) — the maps times the centring checkerboard (D alone for one coil) —
        cached per dtype and device; None for odd sizes."""
        sign = _centring_sign(x.unsqueeze(1), _DIMS)
        if sign is None:
            return None
        key = (sign.dtype, sign.device)
        cached = getattr(self, "_folded", None)
        if cached is None or cached[0] != key:
            maps = sign if self.maps is None else self.maps.to(sign.device, sign.dtype) * sign
            self._folded = (key, (maps, maps.conj().resolve_conj()))
        return self._folded[1]

    def gradient_step(self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        """x + alpha A^H (y - A x): one gradient step on ||y - A x||^2 / 2."""
        return x + alpha * self.adjoint(y - self.forward(x))

    def replace_sampled(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact data consistency: coil k-space of x with the sampled points replaced by y.

        For single coil the result's sampled k-space equals y exactly. For
        several coils the coil images are combined with the maps, which is the
        projection when the maps are normalised (sum_c |S_c|^2 = 1).
        """
        k = fft2c(self.coil_images(x))
        k = k * (1.0 - self._weight) + y * self._weight
        return self.coil_combine(ifft2c(k))

    def _check_image(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or tuple(x.shape[-2:]) != self.shape:
            raise ShapeMismatchError(
                f"image is {tuple(x.shape)} but the operator expects [batch, {self.shape[0]}, {self.shape[1]}]"
            )


class SuperResolutionOperator(_RegularisedSolve):
    """Average over k x k blocks with stride k (default 4x4) and its adjoint.

    Works on real or complex tensors [..., ny, nx] with ny, nx multiples of k.
    """

    def __init__(self, kernel: int = 4) -> None:
        if kernel < 1:
            raise InvalidInputError(f"kernel size must be >= 1, got {kernel}")
        self.kernel = int(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block average: [..., ny, nx] -> [..., ny/k, nx/k]."""
        k = self.kernel
        ny, nx = x.shape[-2:]
        if ny % k or nx % k:
            raise ShapeMismatchError(f"image {ny}x{nx} is not a multiple of the {k}x{k} kernel")
        if x.is_complex():
            return torch.complex(self.forward(x.real), self.forward(x.imag))
        lead = x.shape[:-2]
        out = F.avg_pool2d(x.reshape(-1, 1, ny, nx), k, stride=k)
        return out.reshape(*lead, ny // k, nx // k)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of the block average: spread each value over its block, divided by k^2."""
        k = self.kernel
        if y.is_complex():
            return torch.complex(self.adjoint(y.real), self.adjoint(y.imag))
        return y.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1) / (k * k)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.adjoint(self.forward(x))

    def gradient_step(self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        """x + alpha A^H (y - A x)."""
        return x + alpha * self.adjoint(y - self.forward(x))

    def approximate_inverse(self, y: torch.Tensor, steps: int = 5, step: float = 0.1) -> torch.Tensor:
        """Network input for super-resolution: ``steps`` gradient steps from A^H y (the paper's 5, 0.1)."""
        x = self.adjoint(y)
        for _ in range(steps):
            x = self.gradient_step(x, y, step)
        return x
