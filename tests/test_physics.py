"""Forward models: FFT pair, SENSE and super-resolution, with dot-product adjoint tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import crandn

from recon_plugin.errors import EmptyMaskError, NonFiniteDataError, ShapeMismatchError
from recon_plugin.physics import (
    SenseOperator,
    SuperResolutionOperator,
    channels_to_complex,
    complex_to_channels,
    fft2c,
    ifft2c,
)


def inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    """<a, b> = sum conj(a) b, accumulated in double precision."""
    return complex((a.conj().to(torch.complex128) * b.to(torch.complex128)).sum())


def adjoint_error(forward, adjoint, x: torch.Tensor, y: torch.Tensor) -> float:
    lhs = inner(forward(x), y)
    rhs = inner(x, adjoint(y))
    return abs(lhs - rhs) / abs(lhs)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def test_fft_pair_is_orthonormal_and_centred(rng):
    x = t(crandn(rng, 3, 33, 20))  # odd size on purpose
    k = fft2c(x)
    assert k.dtype == torch.complex64
    assert torch.allclose(ifft2c(k), x, atol=1e-5)
    assert abs(torch.linalg.norm(k) / torch.linalg.norm(x) - 1) < 1e-5
    # A constant image puts all its energy at the centre pixel (ny//2, nx//2).
    k_const = fft2c(torch.ones(1, 33, 20, dtype=torch.complex64))
    assert torch.argmax(k_const.abs()).item() == 16 * 20 + 10
    assert adjoint_error(fft2c, ifft2c, x, t(crandn(rng, 3, 33, 20))) < 1e-5


def test_numpy_and_torch_fft_agree(rng):
    x = crandn(rng, 2, 16, 24)
    assert np.allclose(fft2c(x), fft2c(t(x)).numpy(), atol=1e-5)
    assert np.allclose(ifft2c(x), ifft2c(t(x)).numpy(), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 24), (2, 18, 22), (1, 4, 32, 30), (2, 15, 24), (2, 16, 9)])
def test_torch_fft_matches_the_shift_definition(rng, shape):
    """Even sizes use a checkerboard instead of rolls (both (-1)^(N/2) cases); odd sizes roll; same numbers."""
    x = t(crandn(rng, *shape))
    dims = (-2, -1)
    want = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="ortho"), dim=dims)
    want_inv = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="ortho"), dim=dims)
    assert torch.allclose(fft2c(x), want, atol=1e-5)
    assert torch.allclose(ifft2c(x), want_inv, atol=1e-5)
    x64 = x.to(torch.complex128)
    assert fft2c(x64).dtype == torch.complex128 and torch.allclose(fft2c(x64), want.to(torch.complex128), atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "coils", "batched"), [((16, 24), 8, False), ((18, 22), 1, True), ((15, 24), 4, True)]
)
def test_folded_normal_equals_adjoint_of_forward(rng, shape, coils, batched):
    """normal() folds the centring checkerboard into the maps (even sizes); same numbers as A^H(A x)."""
    mask = torch.from_numpy(rng.random(((2,) if batched else ()) + shape) < 0.4)
    maps = None if coils == 1 else t(crandn(rng, 2, coils, *shape))
    op = SenseOperator(mask, maps)
    x = t(crandn(rng, 2, *shape))
    want = op.adjoint(op.forward(x))
    assert torch.allclose(op.normal(x), want, atol=1e-5 * float(want.abs().max()))
    assert torch.allclose(op.normal(x.to(torch.complex128)), want.to(torch.complex128), atol=1e-4)


@pytest.mark.parametrize("coils", [1, 8])
@pytest.mark.parametrize("batched_mask", [False, True])
def test_sense_adjoint(rng, coils, batched_mask):
    batch, ny, nx = 3, 40, 24
    mask_shape = (batch, ny, nx) if batched_mask else (ny, nx)
    mask = t(rng.random(mask_shape) < 0.3)
    maps = None if coils == 1 else t(crandn(rng, batch, coils, ny, nx))
    op = SenseOperator(mask, maps)
    x = t(crandn(rng, batch, ny, nx))
    y = t(crandn(rng, batch, coils, ny, nx))
    assert op.forward(x).shape == (batch, coils, ny, nx)
    assert op.forward(x).dtype == torch.complex64
    assert adjoint_error(op.forward, op.adjoint, x, y) < 1e-5
    assert torch.allclose(op.normal(x), op.adjoint(op.forward(x)))
    # Unsampled k-space is zero in the forward model.
    unsampled = ~mask if batched_mask else ~mask.expand(batch, ny, nx)
    assert torch.all(op.forward(x).abs()[unsampled.unsqueeze(1).expand(-1, coils, -1, -1)] == 0)


def test_sense_normal_is_self_adjoint_and_positive(rng):
    op = SenseOperator(t(rng.random((32, 32)) < 0.4), t(crandn(rng, 4, 32, 32)))
    x, z = t(crandn(rng, 2, 32, 32)), t(crandn(rng, 2, 32, 32))
    assert adjoint_error(op.normal, op.normal, x, z) < 1e-5
    assert inner(x, op.normal(x)).real > 0


def test_shared_maps_equal_per_batch_maps(rng):
    maps = t(crandn(rng, 4, 16, 16))
    mask = t(rng.random((16, 16)) < 0.5)
    x = t(crandn(rng, 2, 16, 16))
    shared = SenseOperator(mask, maps).forward(x)
    per_batch = SenseOperator(mask, maps.expand(2, -1, -1, -1)).forward(x)
    assert torch.allclose(shared, per_batch)


def test_exact_data_consistency_single_coil(rng):
    mask = t(rng.random((24, 24)) < 0.3)
    op = SenseOperator(mask)
    y = op.forward(t(crandn(rng, 2, 24, 24)))
    x = op.replace_sampled(t(crandn(rng, 2, 24, 24)), y)
    assert torch.allclose(op.forward(x), y, atol=1e-5)


def test_gradient_step_reduces_residual(rng):
    op = SenseOperator(t(rng.random((24, 24)) < 0.3))
    y = op.forward(t(crandn(rng, 1, 24, 24)))
    x = torch.zeros(1, 24, 24, dtype=torch.complex64)
    before = torch.linalg.norm(op.forward(x) - y)
    after = torch.linalg.norm(op.forward(op.gradient_step(x, y, 0.5)) - y)
    assert after < 0.6 * before


@pytest.mark.parametrize("kernel", [2, 4])
@pytest.mark.parametrize("complex_input", [False, True])
def test_super_resolution_adjoint(rng, kernel, complex_input):
    op = SuperResolutionOperator(kernel)
    if complex_input:
        x, y = t(crandn(rng, 2, 32, 16)), t(crandn(rng, 2, 32 // kernel, 16 // kernel))
    else:
        x = t(rng.standard_normal((2, 32, 16)).astype(np.float32))
        y = t(rng.standard_normal((2, 32 // kernel, 16 // kernel)).astype(np.float32))
    assert op.forward(x).shape == (2, 32 // kernel, 16 // kernel)
    assert adjoint_error(op.forward, op.adjoint, x, y) < 1e-5


def test_super_resolution_is_block_average():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)
    y = SuperResolutionOperator(4).forward(x)
    assert y[0, 0, 0].item() == pytest.approx(x[0, :4, :4].mean().item())
    assert y[0, 1, 1].item() == pytest.approx(x[0, 4:, 4:].mean().item())
    with pytest.raises(ShapeMismatchError):
        SuperResolutionOperator(3).forward(x)


def test_channel_helpers_round_trip(rng):
    x = t(crandn(rng, 2, 8, 6))
    ch = complex_to_channels(x)
    assert ch.shape == (2, 2, 8, 6)
    assert torch.equal(channels_to_complex(ch), x)


def test_operator_errors(rng):
    with pytest.raises(EmptyMaskError):
        SenseOperator(torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError):
        SenseOperator(torch.ones(8, 8, dtype=torch.bool), t(crandn(rng, 4, 8, 9)))
    bad_maps = t(crandn(rng, 4, 8, 8))
    bad_maps[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteDataError):
        SenseOperator(torch.ones(8, 8, dtype=torch.bool), bad_maps)
    op = SenseOperator(torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError):
        op.forward(t(crandn(rng, 1, 8, 7)))
    with pytest.raises(ShapeMismatchError):
        op.adjoint(t(crandn(rng, 1, 2, 8, 8)))
