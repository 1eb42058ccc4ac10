"""Metrics on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recon_plugin.errors import ShapeMismatchError
from recon_plugin.metrics import all_metrics, nmse, psnr_db, snr_db, ssim


def test_snr_definition():
    x = np.ones((10, 10))
    est = x.copy()
    est[0, 0] = 0.0  # ||x|| = 10, ||x - est|| = 1
    assert snr_db(x, est) == pytest.approx(20.0)
    assert nmse(x, est) == pytest.approx(0.01)
    assert psnr_db(x, est) == pytest.approx(10 * math.log10(1 / 0.01))
    assert snr_db(x, x) == math.inf


def test_metrics_use_magnitude():
    x = np.ones((8, 8)) * np.exp(1j * 0.7)
    assert snr_db(x, np.abs(x)) == math.inf


def test_ssim_behaviour(rng):
    img = rng.random((64, 64))
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = img + 0.3 * rng.standard_normal(img.shape)
    slightly = img + 0.01 * rng.standard_normal(img.shape)
    assert ssim(img, noisy) < ssim(img, slightly) < 1.0
    assert set(all_metrics(img, noisy)) == {"snr_db", "psnr_db", "nmse", "ssim"}


def test_shape_mismatch():
    with pytest.raises(ShapeMismatchError):
        snr_db(np.ones((4, 4)), np.ones((4, 5)))


def test_sharpness_is_one_for_the_reference_and_below_for_a_blur():
    from scipy import ndimage

    from recon_plugin.metrics import sharpness

    rng = np.random.default_rng(3)
    img = ndimage.gaussian_filter(rng.random((64, 64)), 1.0) + (np.add.outer(np.arange(64), np.arange(64)) > 64)
    assert sharpness(img, img) == pytest.approx(1.0)
    assert sharpness(img, ndimage.gaussian_filter(img, 2.0)) < 0.8
    assert sharpness(img, img + 0.2 * rng.standard_normal(img.shape)) > 1.2
    assert np.isnan(sharpness(np.ones((8, 8)), np.ones((8, 8))))
