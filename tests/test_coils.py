"""Coil sensitivities by ESPIRiT: simulated coils always, the real 8-coil slice when present."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import real_data

from recon_plugin.coils import bart_available, espirit_maps, rss, sense_combine
from recon_plugin.errors import CoilMapError, InvalidInputError
from recon_plugin.physics import fft2c, ifft2c
from recon_plugin.problem import Problem
from recon_plugin.simulate import simulated_coil_maps, with_smooth_phase


def projection_error(kspace: np.ndarray, maps: np.ndarray, region: np.ndarray) -> float:
    """How far the coil images are from S (S^H coil images) inside ``region``."""
    coil_images = ifft2c(kspace)
    x = sense_combine(kspace, maps)
    return float(np.linalg.norm((maps * x[None] - coil_images)[:, region]) / np.linalg.norm(coil_images[:, region]))


BACKENDS = ["sigpy", pytest.param("bart", marks=pytest.mark.skipif(not bart_available(), reason="BART not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_espirit_recovers_simulated_maps(rng, backend):
    img = np.zeros((64, 64), np.float32)
    img[10:-10, 12:-12] = 1.0
    image = with_smooth_phase(img, rng)
    kspace = fft2c(simulated_coil_maps((64, 64), 6) * image[None])
    maps = espirit_maps(kspace, 20, backend=backend)
    assert maps.shape == kspace.shape and maps.dtype == np.complex64
    inside = img > 0
    assert projection_error(kspace, maps, inside) < 0.02
    assert np.median((np.abs(maps) ** 2).sum(0)[inside]) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_8_coil_slice(backend):
    kspace = np.load(real_data("multicoil_kspace") / "marcsous_head_8ch_kspace.npy")
    maps = espirit_maps(kspace, 24, backend=backend)
    assert maps.shape == (8, 256, 256) and np.isfinite(maps).all()
    coil_rss = rss(ifft2c(kspace))
    head = coil_rss > 0.1 * coil_rss.max()
    assert np.median((np.abs(maps) ** 2).sum(0)[head]) == pytest.approx(1.0, abs=0.02)
    # Measured 0.056: the maps explain the coil images to about 6 % inside the head.
    assert projection_error(kspace, maps, head) < 0.1
    # The SENSE-combined magnitude matches the root-sum-of-squares image inside the head.
    combined = np.abs(sense_combine(kspace, maps))
    assert np.linalg.norm(combined[head] - coil_rss[head]) / np.linalg.norm(coil_rss[head]) < 0.02


def test_single_coil_maps_are_ones(rng):
    k = (rng.standard_normal((1, 16, 16)) + 0j).astype(np.complex64)
    assert np.array_equal(espirit_maps(k), np.ones((1, 16, 16), np.complex64))


def test_problem_estimates_maps_once(rng):
    img = np.zeros((48, 48), np.float32)
    img[8:-8, 8:-8] = 1.0
    kspace = fft2c(simulated_coil_maps((48, 48), 4) * with_smooth_phase(img, rng)[None])
    mask = np.zeros((48, 48), bool)
    mask[::2] = True
    mask[14:34, 14:34] = True
    p = Problem(kspace, mask, calib_width=20)
    maps = p.coil_maps()
    assert maps is not None and maps.shape == (4, 48, 48)
    assert p.coil_maps() is maps


def test_calibration_must_be_fully_sampled(rng):
    k = (rng.standard_normal((4, 32, 32)) + 1j * rng.standard_normal((4, 32, 32))).astype(np.complex64)
    k[:, 16, :] = 0
    with pytest.raises(CoilMapError, match="not fully sampled"):
        espirit_maps(k, 16)
    with pytest.raises(InvalidInputError):
        espirit_maps(k[0], 16)


def test_backends_agree(rng):
    """Both ESPIRiT implementations give the same SENSE-combined magnitude (maps agree up to a phase)."""
    if not bart_available():
        pytest.skip("BART not installed")
    img = np.zeros((64, 64), np.float32)
    img[12:-12, 10:-10] = 1.0
    kspace = fft2c(simulated_coil_maps((64, 64), 6) * with_smooth_phase(img, rng)[None])
    a = np.abs(sense_combine(kspace, espirit_maps(kspace, 20, backend="sigpy")))
    b = np.abs(sense_combine(kspace, espirit_maps(kspace, 20, backend="bart")))
    inside = img > 0
    assert np.linalg.norm(a[inside] - b[inside]) / np.linalg.norm(a[inside]) < 0.02
    with pytest.raises(InvalidInputError, match="backend"):
        espirit_maps(kspace, 20, backend="matlab")
