"""The output gain: one real scale per slice, fitted to the measured samples, applied to the final image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import crandn

from recon_plugin.masks import make_mask
from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle, save_bundle
from recon_plugin.model.recurrent import data_gain
from recon_plugin.physics import SenseOperator
from recon_plugin.simulate import birdcage_coil_maps
from training.model_card import write_model_card


def sense_problem(rng: np.random.Generator, coils: int = 4, batch: int = 2, shape=(32, 24)):
    masks = np.stack([make_mask("poisson", shape, 3.0, seed=i, calib=6).mask for i in range(batch)])
    maps = torch.from_numpy(np.stack([birdcage_coil_maps(shape, coils)] * batch))
    op = SenseOperator(torch.from_numpy(masks), maps)
    x = torch.from_numpy(crandn(rng, batch, *shape))
    return op, x, op.forward(x)


def test_gain_recovers_a_known_scale_per_slice(rng):
    op, x, y = sense_problem(rng)
    scaled = x * torch.tensor([0.5, 1.25])[:, None, None]  # an estimate that is too dark / too bright
    gain = data_gain(scaled, y, op)
    assert gain.shape == (2, 1, 1) and gain.dtype == torch.float32
    assert torch.allclose(gain.flatten(), torch.tensor([2.0, 0.8]), rtol=1e-4)


def test_gain_is_the_least_squares_fit_under_noise(rng):
    op, x, y = sense_problem(rng, batch=1)
    noisy = y + 0.3 * torch.from_numpy(crandn(rng, *y.shape)) * op.mask.unsqueeze(1)
    c = data_gain(x, noisy, op).flatten()[0]
    residual = lambda s: float((s * op.forward(x) - noisy).norm())  # noqa: E731
    assert residual(c) <= min(residual(c * 1.01), residual(c * 0.99))
    assert abs(float(c) - 1.0) < 0.05  # noise of zero mean barely moves one scalar fitted to every sample


def test_gain_of_an_empty_estimate_is_one(rng):
    op, x, y = sense_problem(rng)
    gain = data_gain(torch.zeros_like(x), y, op)
    assert torch.equal(gain.flatten(), torch.ones(2))


def test_model_applies_the_gain_to_its_final_image_only(rng):
    op, _, y = sense_problem(rng)
    torch.manual_seed(0)
    plain = RecurrentProximalNet(copies=2, blocks=1, features=8, data_consistency="cg", init="cg_sense", norm="none")
    gained = RecurrentProximalNet(plain.config, output_gain=True)
    gained.load_state_dict(plain.state_dict())  # no weights of its own
    with torch.no_grad():
        x0, outs0 = plain.eval()(y, op)
        x1, outs1 = gained.eval()(y, op)
    assert torch.allclose(x1, data_gain(x0, y, op) * x0, atol=1e-6)
    assert torch.equal(outs1[0], outs0[0]) and torch.equal(outs1[-1], x1)
    fit = lambda v: float((op.forward(v) - y).norm())  # noqa: E731
    assert fit(x1) <= fit(x0) + 1e-6


def test_gain_is_differentiable_for_training(rng):
    op, x, y = sense_problem(rng)
    net = RecurrentProximalNet(copies=2, blocks=1, features=8, data_consistency="cg", init="cg_sense", output_gain=True)
    x_hat, _ = net(y, op)
    ((x_hat - x).abs() ** 2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_bundles_without_the_field_load_without_the_gain(tmp_path):
    net = RecurrentProximalNet(copies=1, blocks=1, features=4, data_consistency="cg", output_gain=True)
    save_bundle(net, tmp_path / "b", mask={"family": "mixture"}, training_data={"kind": "test"})
    assert load_bundle(tmp_path / "b").model.config.output_gain is True
    card = write_model_card(tmp_path / "b", "test terms").read_text()
    assert "output gain fitted to the measured data" in card
    sidecar = tmp_path / "b" / "bundle.json"
    meta = json.loads(sidecar.read_text())
    del meta["model"]["output_gain"]  # a bundle written before the field existed
    sidecar.write_text(json.dumps(meta))
    assert load_bundle(tmp_path / "b").model.config.output_gain is False


def test_config_rejects_a_non_boolean_gain():
    with pytest.raises(ValueError, match="output_gain"):
        ModelConfig(output_gain="yes")  # type: ignore[arg-type]
