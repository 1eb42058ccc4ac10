"""Reconstructors: zero-filled, RGANCS batching, normalisation, residual, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import crandn

from recon_plugin.errors import (
    DeviceError,
    EmptyMaskError,
    InvalidInputError,
    NonFiniteDataError,
    ShapeMismatchError,
)
from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle, save_bundle
from recon_plugin.physics import ifft2c
from recon_plugin.problem import Problem
from recon_plugin.reconstructors import RGANCS, ZeroFilled, resolve_device
from recon_plugin.simulate import simulate_problem, simulated_coil_maps, with_smooth_phase


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(3)
    net = RecurrentProximalNet(ModelConfig(copies=3, blocks=1, features=8))
    # Give batch norm non-trivial running statistics so eval mode is exercised for real.
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net.proximal(0)(torch.randn(4, 2, 16, 16))
    folder = tmp_path_factory.mktemp("b") / "tiny"
    save_bundle(net, folder, mask={"family": "radial", "acceleration": 5.0}, training_data={})
    return load_bundle(folder)


def phantom(rng, shape=(32, 24)) -> np.ndarray:
    img = np.zeros(shape, np.float32)
    img[6:-6, 5:-5] = 1.0
    img[12:18, 8:14] = 0.4
    return with_smooth_phase(img + 0.05 * rng.random(shape), rng)


def make_problems(rng, n=5, shape=(32, 24), coils=1):
    problems = []
    for i in range(n):
        mask = rng.random(shape) < 0.35
        mask[shape[0] // 2 - 3 : shape[0] // 2 + 3, shape[1] // 2 - 3 : shape[1] // 2 + 3] = True
        maps = simulated_coil_maps(shape, coils) if coils > 1 else None
        problems.append(simulate_problem(phantom(rng, shape), mask, maps, meta={"slice": i}))
    return problems


def test_zero_filled_single_coil_is_inverse_fft(rng):
    p = make_problems(rng, 1)[0]
    res = ZeroFilled().reconstruct(p)
    assert np.allclose(res.image, ifft2c(p.kspace[0] * p.mask), atol=1e-6)
    assert res.meta["method"] == "zero_filled" and res.meta["slice"] == 0
    assert res.meta["dc_residual"] == pytest.approx(0.0, abs=1e-5)
    assert res.meta["acceleration"] == pytest.approx(p.acceleration)


def test_zero_filled_fully_sampled_multicoil_recovers_image(rng):
    shape = (32, 24)
    image = phantom(rng, shape)
    p = simulate_problem(image, np.ones(shape, bool), simulated_coil_maps(shape, 4))
    assert np.allclose(ZeroFilled().reconstruct(p).image, image, atol=1e-4)


def test_rgancs_batched_equals_per_slice(rng, tiny_bundle):
    problems = make_problems(rng, 5) + make_problems(rng, 2, shape=(24, 16))  # two shape groups
    recon = RGANCS(tiny_bundle, device="cpu", batch_size=3)
    batched = recon.reconstruct_batch(problems)
    for p, b in zip(problems, batched, strict=True):
        single = recon.reconstruct(p)
        assert b.image.shape == p.shape
        scale = np.abs(single.image).max()
        assert np.abs(b.image - single.image).max() <= 1e-5 * scale
        assert b.meta["slice"] == p.meta["slice"]


def test_rgancs_meta_and_residual(rng, tiny_bundle):
    p = make_problems(rng, 1, coils=4)[0]
    res = RGANCS(tiny_bundle, device="cpu").reconstruct(p)
    meta = res.meta
    assert meta["method"] == "rgancs" and meta["model"] == "tiny" and meta["device"] == "cpu"
    assert meta["weights_sha256"] == tiny_bundle.sha256
    assert meta["seconds"] > 0
    # Residual recomputed independently with numpy.
    from recon_plugin.physics import fft2c

    y_hat = fft2c(p.maps * res.image[None]) * p.mask
    expected = np.linalg.norm(y_hat - p.kspace) / np.linalg.norm(p.kspace)
    assert meta["dc_residual"] == pytest.approx(expected, rel=1e-3)


def test_rgancs_normalisation_is_undone(rng, tiny_bundle):
    """Scaling the k-space scales the image by the same factor (the network sees the same input)."""
    p = make_problems(rng, 1)[0]
    recon = RGANCS(tiny_bundle, device="cpu")
    a = recon.reconstruct(p).image
    scaled = Problem(kspace=p.kspace * 1e-6, mask=p.mask)
    b = recon.reconstruct(scaled).image
    assert np.allclose(b, a * 1e-6, rtol=1e-4, atol=1e-4 * 1e-6 * np.abs(a).max())


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("mps")


def test_problem_errors(rng):
    k = crandn(rng, 2, 16, 16)
    mask = np.ones((16, 16), bool)
    bad = k.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(NonFiniteDataError, match="NaN"):
        Problem(bad, mask)
    with pytest.raises(ShapeMismatchError):
        Problem(k, mask, maps=crandn(rng, 2, 16, 15))
    with pytest.raises(ShapeMismatchError):
        Problem(k, np.ones((16, 15), bool))
    with pytest.raises(EmptyMaskError):
        Problem(k, np.zeros((16, 16), bool))
    with pytest.raises(InvalidInputError):
        Problem(k.real, mask)
    with pytest.raises(InvalidInputError, match="zero"):
        Problem(np.zeros((2, 16, 16), np.complex64), mask)
    with pytest.raises(ShapeMismatchError):
        Problem(crandn(rng, 16), mask)
