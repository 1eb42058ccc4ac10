"""Gadget settings from protocol properties, and the resident-model cache."""

from __future__ import annotations

import numpy as np
import pytest

from recon_plugin.errors import ProtocolError
from recon_plugin.images import SERIES_INDEX
from recon_plugin.pipeline import GadgetSettings, build_reconstructor


@pytest.mark.parametrize("method", ["zero_filled", "rgancs", "cs_wavelet", "cs_tv"])
def test_defaults(method):
    s = GadgetSettings.from_properties(method, {})
    assert s.series_index == SERIES_INDEX[method] and s.retro is None and not s.complex_output


def test_parsing():
    s = GadgetSettings.from_properties(
        "cs_tv",
        {
            "lambda": "0.002",
            "iterations": "50",
            "retro_acceleration": "4",
            "mask": "poisson",
            "seed": "3",
            "complex": "true",
            "reference": "yes",
            "series_index": "14",
        },
    )
    assert s.lam == 0.002 and s.iterations == 50 and s.complex_output and s.send_reference
    assert s.retro.acceleration == 4 and s.retro.family == "poisson" and s.retro.seed == 3
    assert s.series_index == 14


def test_mask_file(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.ones((8, 8), bool))
    s = GadgetSettings.from_properties("zero_filled", {"mask": str(path)})
    assert s.retro.mask_file == path
    with pytest.raises(ProtocolError, match="neither a mask family"):
        GadgetSettings.from_properties("zero_filled", {"mask": str(tmp_path / "missing.npy")})


@pytest.mark.parametrize(
    "props", [{"batch_size": "many"}, {"retro_acceleration": "fast"}, {"complex": "maybe"}, {"lambda": "x"}]
)
def test_bad_values_name_the_property(props):
    (name,) = props
    with pytest.raises(ProtocolError, match=name):
        GadgetSettings.from_properties("rgancs", props)


def test_unknown_method():
    with pytest.raises(ProtocolError, match="unknown method"):
        GadgetSettings.from_properties("grappa", {})


def test_models_stay_resident():
    s = GadgetSettings.from_properties("rgancs", {"device": "cpu"})
    assert build_reconstructor(s) is build_reconstructor(s)


def test_default_weights_follow_the_device():
    from recon_plugin.pipeline import default_weights
    from recon_plugin.sample_data import DEMO_BUNDLE, FULL_BUNDLE

    assert default_weights("cpu") == DEMO_BUNDLE
    assert default_weights("cuda") == (FULL_BUNDLE if (FULL_BUNDLE / "bundle.json").is_file() else DEMO_BUNDLE)
    assert GadgetSettings.from_properties("rgancs", {"device": "cpu"}).weights == DEMO_BUNDLE


def test_fast_path_property_reaches_the_reconstructor():
    from recon_plugin.errors import FastPathError

    settings = GadgetSettings.from_properties("rgancs", {"device": "cpu", "fast_path": "bf16"})
    assert build_reconstructor(settings).fast_path.name == "bf16"
    with pytest.raises(FastPathError):
        build_reconstructor(GadgetSettings.from_properties("rgancs", {"device": "cpu", "fast_path": "nitro"}))
