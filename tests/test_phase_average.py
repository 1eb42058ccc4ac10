"""Phase averaging at inference: the mean of passes over globally rotated data, each rotated back."""

from __future__ import annotations

import cmath
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import crandn

from recon_plugin.errors import BundleMismatchError, ProtocolError
from recon_plugin.gadget_settings import GadgetSettings
from recon_plugin.masks import make_mask
from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle
from recon_plugin.physics import SenseOperator
from recon_plugin.reconstructors import RGANCS
from recon_plugin.sample_data import DEFAULT_BUNDLE, UNTIED_BUNDLE
from recon_plugin.simulate import birdcage_coil_maps, simulate_problem, simulated_coil_maps, with_smooth_phase


def sense_problem(rng: np.random.Generator, coils: int = 4, batch: int = 2, shape=(32, 24)):
    masks = np.stack([make_mask("poisson", shape, 3.0, seed=i, calib=6).mask for i in range(batch)])
    maps = torch.from_numpy(np.stack([birdcage_coil_maps(shape, coils)] * batch))
    op = SenseOperator(torch.from_numpy(masks), maps)
    return op, op.forward(torch.from_numpy(crandn(rng, batch, *shape)))


def small_net(**overrides) -> RecurrentProximalNet:
    torch.manual_seed(3)
    net = RecurrentProximalNet(
        copies=2, blocks=1, features=8, shared=False, data_consistency="cg", init="cg_sense", norm="none", **overrides
    )
    with torch.no_grad():  # a network far from phase-equivariant, so the average is not one pass
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


def rotate(k: int, n: int) -> torch.Tensor:
    return torch.tensor(cmath.exp(2j * math.pi * k / n), dtype=torch.complex64)


def test_the_average_is_the_mean_of_the_rotated_passes(rng):
    op, y = sense_problem(rng)
    one = small_net(output_gain=True)
    three = RecurrentProximalNet(one.config, phase_average=3).eval()
    three.load_state_dict(one.state_dict())  # no weights of its own
    with torch.no_grad():
        passes = [one(y * rotate(k, 3), op) for k in range(3)]
        x, outs = three(y, op)
        single, _ = one(y, op)
    expected = sum(p[0] * rotate(k, 3).conj() for k, p in enumerate(passes)) / 3
    assert torch.allclose(x, expected, atol=1e-5)
    for c in range(2):  # every copy's output is averaged the same way
        want = sum(p[1][c] * rotate(k, 3).conj() for k, p in enumerate(passes)) / 3
        assert torch.allclose(outs[c], want, atol=1e-5)
    assert not torch.allclose(x, single, atol=1e-3)  # the network is not phase-equivariant: averaging changes x


def test_the_average_commutes_with_its_own_rotations(rng):
    op, y = sense_problem(rng, batch=1)
    net = small_net(phase_average=4)
    with torch.no_grad():
        x, _ = net(y, op)
        turned, _ = net(y * rotate(1, 4), op)
        plain, _ = RecurrentProximalNet(net.config, phase_average=1).eval()(y, op)
    assert torch.allclose(turned, x * rotate(1, 4), atol=1e-5)  # exact for a quarter turn: the same four passes
    assert not torch.allclose(plain, x, atol=1e-3)


def test_training_runs_one_pass(rng):
    op, y = sense_problem(rng)
    one, four = small_net(), small_net(phase_average=4)
    one.train(), four.train()
    x1, _ = one(y, op)
    x4, _ = four(y, op)
    assert torch.equal(x1, x4)


@pytest.mark.parametrize("bad", [{"phase_average": 0}, {"phase_average": -2}, {"phase_average": 2, "channels": 1}])
def test_impossible_phase_average_is_a_named_error(bad):
    with pytest.raises(ValueError, match="phase_average"):
        ModelConfig(**bad)


def test_older_bundles_load_with_one_pass():
    sidecar = json.loads((UNTIED_BUNDLE / "bundle.json").read_text())  # written before the setting existed
    assert "phase_average" not in sidecar["model"]
    assert load_bundle(UNTIED_BUNDLE).model.config.phase_average == 1
    assert load_bundle(DEFAULT_BUNDLE).model.config.phase_average == 1  # the shipped default runs one pass


def _problem(rng: np.random.Generator):
    shape = (48, 40)
    img = np.abs(crandn(rng, *shape)).astype(np.float32)
    mask = make_mask("poisson", shape, 3.0, seed=1, calib=8).mask
    return simulate_problem(with_smooth_phase(img, rng), mask, simulated_coil_maps(shape, 4))


def test_rgancs_overrides_the_bundles_setting_without_touching_it(rng, tmp_path):
    problem = _problem(rng)
    bundle = load_bundle(DEFAULT_BUNDLE)
    plain = RGANCS(bundle, device="cpu", fast_path="fp32").reconstruct(problem)
    averaged = RGANCS(bundle, device="cpu", fast_path="fp32", phase_average=4).reconstruct(problem)
    assert plain.meta["phase_average"] == 1 and averaged.meta["phase_average"] == 4
    assert bundle.model.config.phase_average == 1  # the caller's model is not changed
    assert not np.allclose(plain.image, averaged.image, atol=1e-4 * np.abs(plain.image).max())
    # a bundle that ships phase_average = 4 gives the same image without the override
    shipped = tmp_path / "pa4"
    shutil.copytree(DEFAULT_BUNDLE, shipped)
    side = json.loads((shipped / "bundle.json").read_text())
    side["model"]["phase_average"] = 4
    (shipped / "bundle.json").write_text(json.dumps(side))
    again = RGANCS(shipped, device="cpu", fast_path="fp32").reconstruct(problem)
    assert again.meta["phase_average"] == 4
    np.testing.assert_allclose(again.image, averaged.image, rtol=0, atol=1e-6 * np.abs(averaged.image).max())
    with pytest.raises(BundleMismatchError, match="phase_average"):
        RGANCS(bundle, device="cpu", phase_average=-1)


def test_gadget_property_parses_and_names_bad_values():
    assert GadgetSettings.from_properties("rgancs", {}).phase_average == 0
    assert GadgetSettings.from_properties("rgancs", {"phase_average": "4"}).phase_average == 4
    for bad in ("-1", "two", "2.5"):
        with pytest.raises(ProtocolError, match="phase_average"):
            GadgetSettings.from_properties("rgancs", {"phase_average": bad})
    with pytest.raises(ProtocolError, match="phase_average"):  # a typo is named with the right spelling
        GadgetSettings.from_properties("rgancs", {"phase_averge": "4"})
    with pytest.raises(ProtocolError, match="phase_average"):  # not a BART property
        GadgetSettings.from_properties("cs_wavelet", {"phase_average": "4"})
