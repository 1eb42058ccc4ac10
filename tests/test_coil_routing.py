"""One default for every coil count: without a ``weights`` property, single-coil slices get the single-coil
default bundle and multi-coil slices the multi-coil default; ``weights`` or ``single_coil_weights`` override it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon_plugin.errors import BundleError, ProtocolError
from recon_plugin.masks import make_mask
from recon_plugin.pipeline import GadgetSettings, build_reconstructor, default_rgancs, default_weights
from recon_plugin.problem import Problem
from recon_plugin.reconstructors import RGANCS, CoilRoutedRGANCS
from recon_plugin.sample_data import DEFAULT_SINGLE_COIL_BUNDLE, DEMO_BUNDLE, MODEL_BUNDLES
from recon_plugin.simulate import birdcage_coil_maps


def problem(coils: int, shape: tuple[int, int] = (32, 32), seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    image = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    maps = birdcage_coil_maps(shape, coils) if coils > 1 else np.ones((1, *shape), np.complex64)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps * image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    mask = make_mask("radial", shape, 3.0, seed=seed).mask
    return Problem(kspace=k.astype(np.complex64), mask=mask, maps=maps if coils > 1 else None)


def test_defaults_route_single_coil_slices_to_the_single_coil_bundle() -> None:
    settings = GadgetSettings.from_properties("rgancs", {"device": "cpu"})
    assert settings.weights == default_weights("cpu") and settings.single_coil_weights == DEFAULT_SINGLE_COIL_BUNDLE
    recon = build_reconstructor(settings)
    assert isinstance(recon, CoilRoutedRGANCS) and recon.name == "rgancs"
    problems = [problem(4, seed=1), problem(1, seed=2), problem(8, seed=3), problem(1, seed=4)]
    results = recon.reconstruct_batch(problems)
    models = [r.meta["model"] for r in results]
    single, multi = DEFAULT_SINGLE_COIL_BUNDLE.name, default_weights("cpu").name
    assert single != multi
    assert models == [multi, single, multi, single]  # in the order of the problems
    alone = RGANCS(DEFAULT_SINGLE_COIL_BUNDLE, device="cpu").reconstruct(problems[1])
    assert np.allclose(results[1].image, alone.image, atol=1e-5)  # the routed slice is the single-coil model's
    assert isinstance(default_rgancs("cpu"), CoilRoutedRGANCS)


@pytest.mark.parametrize(
    ("props", "single"),
    [
        ({"weights": str(DEMO_BUNDLE)}, None),  # explicit weights serve every coil count
        ({"single_coil_weights": "same"}, None),
        ({"weights": str(DEMO_BUNDLE), "single_coil_weights": str(DEFAULT_SINGLE_COIL_BUNDLE)}, "routed"),
    ],
)
def test_weights_properties_override_the_routing(props: dict[str, str], single: str | None) -> None:
    settings = GadgetSettings.from_properties("rgancs", {"device": "cpu", **props})
    recon = build_reconstructor(settings)
    if single is None:
        assert settings.single_coil_weights is None and isinstance(recon, RGANCS)
    else:
        assert isinstance(recon, CoilRoutedRGANCS)
        assert recon.route(problem(1)).bundle.name == DEFAULT_SINGLE_COIL_BUNDLE.name
        assert recon.route(problem(4)).bundle.name == DEMO_BUNDLE.name


def test_bad_single_coil_weights_fail_when_the_gadget_starts(tmp_path: Path) -> None:
    settings = GadgetSettings.from_properties("rgancs", {"device": "cpu", "single_coil_weights": str(tmp_path)})
    with pytest.raises(BundleError):
        build_reconstructor(settings)
    with pytest.raises(ProtocolError, match="single_coil_weights"):
        GadgetSettings.from_properties("rgancs", {"single_coil_weight": "x"})


def test_eval_default_is_routed_and_records_both_bundles(tmp_path: Path) -> None:
    from conftest import ellipse_slices

    from training.evaluate import run_eval

    np.save(tmp_path / "img.npy", ellipse_slices(2, 32).astype(np.complex64))
    report = run_eval(tmp_path / "img.npy", methods="rgancs", device="cpu", calib=8)
    assert report.settings["single_coil_bundle"].endswith(DEFAULT_SINGLE_COIL_BUNDLE.name)
    assert report.settings["bundle"].endswith(default_weights("cpu").name)
    for model, bundle in MODEL_BUNDLES.items():  # --model: the property's choice, whatever this CPU is
        chosen = run_eval(tmp_path / "img.npy", methods="rgancs", device="cpu", calib=8, model=model, slices="0:1")
        assert chosen.settings["bundle"].endswith(bundle.name), model
    assert {r["method"] for r in report.rows} == {"rgancs"}
