"""Mirror averaging at inference: each copy's G is the mean of its mirrored passes, mirrored back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import crandn

from recon_plugin.errors import BundleMismatchError, ProtocolError
from recon_plugin.gadget_settings import GadgetSettings
from recon_plugin.masks import make_mask
from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle
from recon_plugin.reconstructors import RGANCS
from recon_plugin.sample_data import WEIGHTS_DIR
from recon_plugin.simulate import simulate_problem, with_smooth_phase

#: A packaged single-coil bundle written before the setting existed (one pass).
ONE_PASS_BUNDLE = WEIGHTS_DIR / "rgancs_10x1x128_siat2"


def small_net(**overrides) -> RecurrentProximalNet:
    torch.manual_seed(5)
    net = RecurrentProximalNet(copies=2, blocks=1, features=8, shared=True, norm="none", **overrides)
    with torch.no_grad():  # far from mirror-equivariant, so the average is not one pass
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


def image(rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(crandn(rng, 2, 20, 16))


@pytest.mark.parametrize("n", [2, 4])
def test_each_copy_commutes_with_its_mirrors(rng, n):
    x = image(rng)
    net = small_net(flip_average=n)
    plain = RecurrentProximalNet(net.config, flip_average=1).eval()
    plain.load_state_dict(net.state_dict())  # no weights of its own
    axes = [(-1,)] if n == 2 else [(-1,), (-2,), (-2, -1)]
    with torch.no_grad():
        z = net.denoise(0, x)
        for dims in axes:
            assert torch.allclose(net.denoise(0, x.flip(dims)), z.flip(dims), atol=1e-5)
            assert not torch.allclose(plain.denoise(0, x.flip(dims)), plain.denoise(0, x).flip(dims), atol=1e-3)


def test_the_average_is_the_mean_of_the_mirrored_passes(rng):
    x = image(rng)
    one = small_net()
    two = RecurrentProximalNet(one.config, flip_average=2).eval()
    two.load_state_dict(one.state_dict())
    with torch.no_grad():
        want = (one.denoise(1, x) + one.denoise(1, x.flip(-1)).flip(-1)) / 2
        assert torch.allclose(two.denoise(1, x), want, atol=1e-5)
        assert not torch.allclose(two.denoise(1, x), one.denoise(1, x), atol=1e-3)


def test_training_runs_one_pass(rng):
    x = image(rng)
    one, four = small_net().train(), small_net(flip_average=4).train()
    assert torch.equal(one.denoise(0, x), four.denoise(0, x))


@pytest.mark.parametrize("bad", [0, 3, 8, -1])
def test_impossible_flip_average_is_a_named_error(bad):
    with pytest.raises(ValueError, match="flip_average"):
        ModelConfig(flip_average=bad)


def test_older_bundles_load_with_one_pass():
    sidecar = json.loads((ONE_PASS_BUNDLE / "bundle.json").read_text())  # written before the setting
    assert "flip_average" not in sidecar["model"]
    assert load_bundle(ONE_PASS_BUNDLE).model.config.flip_average == 1


def test_a_bundle_that_ships_flip_average_reconstructs_with_it(rng, tmp_path):
    shape = (48, 40)
    img = with_smooth_phase(np.abs(crandn(rng, *shape)).astype(np.float32), rng)
    mask = make_mask("radial", shape, 5.0, seed=2).mask
    problem = simulate_problem(img, mask, np.ones((1, *shape), np.complex64))
    shipped = tmp_path / "f2"
    shutil.copytree(ONE_PASS_BUNDLE, shipped)
    side = json.loads((shipped / "bundle.json").read_text())
    side["model"]["flip_average"] = 2
    (shipped / "bundle.json").write_text(json.dumps(side))
    plain = RGANCS(ONE_PASS_BUNDLE, device="cpu", fast_path="fp32").reconstruct(problem)
    averaged = RGANCS(shipped, device="cpu", fast_path="fp32").reconstruct(problem)
    assert plain.meta["flip_average"] == 1 and averaged.meta["flip_average"] == 2
    assert np.isfinite(averaged.image).all()
    assert not np.allclose(plain.image, averaged.image, atol=1e-4 * np.abs(plain.image).max())
    # the mirrored passes are close to the plain one: the network learned mirror symmetry from augmentation
    assert np.linalg.norm(averaged.image - plain.image) < 0.2 * np.linalg.norm(plain.image)


def test_rgancs_overrides_the_bundles_setting_without_touching_it(rng):
    shape = (48, 40)
    img = with_smooth_phase(np.abs(crandn(rng, *shape)).astype(np.float32), rng)
    problem = simulate_problem(img, make_mask("radial", shape, 5.0, seed=4).mask, np.ones((1, *shape), np.complex64))
    bundle = load_bundle(ONE_PASS_BUNDLE)
    plain = RGANCS(bundle, device="cpu", fast_path="fp32", flip_average=1).reconstruct(problem)
    four = RGANCS(bundle, device="cpu", fast_path="fp32", flip_average=4).reconstruct(problem)
    assert plain.meta["flip_average"] == 1 and four.meta["flip_average"] == 4
    assert bundle.model.config.flip_average == 1  # the caller's model is not changed
    assert not np.allclose(plain.image, four.image, atol=1e-4 * np.abs(plain.image).max())
    with pytest.raises(BundleMismatchError, match="flip_average"):
        RGANCS(bundle, device="cpu", flip_average=3)


def test_gadget_property_parses_and_names_bad_values():
    assert GadgetSettings.from_properties("rgancs", {}).flip_average == 0
    assert GadgetSettings.from_properties("rgancs", {"flip_average": "2"}).flip_average == 2
    for bad in ("-1", "3", "two", "8"):
        with pytest.raises(ProtocolError, match="flip_average"):
            GadgetSettings.from_properties("rgancs", {"flip_average": bad})
    with pytest.raises(ProtocolError, match="flip_average"):  # a typo is named with the right spelling
        GadgetSettings.from_properties("rgancs", {"flip_averge": "2"})
    with pytest.raises(ProtocolError, match="flip_average"):  # not a BART property
        GadgetSettings.from_properties("cs_tv", {"flip_average": "2"})
