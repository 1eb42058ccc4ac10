"""Gadget settings from protocol properties, and the resident-model cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_plugin.errors import ProtocolError
from recon_plugin.images import SERIES_INDEX
from recon_plugin.model import load_bundle
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


def test_default_weights_follow_the_device(monkeypatch):
    import recon_plugin.cpu_features as cpu_features
    from recon_plugin.pipeline import default_weights
    from recon_plugin.sample_data import DEFAULT_BUNDLES

    here = DEFAULT_BUNDLES["cpu_bf16" if cpu_features.native_bf16() else "cpu"]
    assert default_weights("cpu") == here
    assert default_weights("cuda") == default_weights("cuda:1") == DEFAULT_BUNDLES["cuda"]
    auto = DEFAULT_BUNDLES["cuda"] if torch.cuda.is_available() else here
    assert default_weights("auto") == auto
    assert GadgetSettings.from_properties("rgancs", {"device": "cpu"}).weights == here
    assert GadgetSettings.from_properties("rgancs", {}).weights == auto
    for native, key in ((True, "cpu_bf16"), (False, "cpu")):  # the CPU class decides, whatever this machine is
        monkeypatch.setattr(cpu_features, "native_bf16", lambda native=native: native)
        assert default_weights("cpu") == DEFAULT_BUNDLES[key]
        assert default_weights("cuda") == DEFAULT_BUNDLES["cuda"]
    assert DEFAULT_BUNDLES["cpu"] != DEFAULT_BUNDLES["cpu_bf16"] == DEFAULT_BUNDLES["cuda"]


def test_model_property_picks_the_packaged_bundle_and_rejects_typos_and_conflicts(tmp_path):
    from recon_plugin.sample_data import MODEL_BUNDLES

    for model, bundle in MODEL_BUNDLES.items():
        for device in ("cpu", "cuda"):
            settings = GadgetSettings.from_properties("rgancs", {"device": device, "model": model.upper()})
            assert settings.weights == bundle
    assert MODEL_BUNDLES["accurate"] != MODEL_BUNDLES["fast"]
    auto = GadgetSettings.from_properties("rgancs", {"device": "cpu", "model": "auto"})
    assert auto.weights == GadgetSettings.from_properties("rgancs", {"device": "cpu"}).weights
    with pytest.raises(ProtocolError, match=r"model='acurate' must be one of auto, accurate, fast"):
        GadgetSettings.from_properties("rgancs", {"model": "acurate"})
    with pytest.raises(ProtocolError, match="weights and model=fast both name a bundle"):
        GadgetSettings.from_properties("rgancs", {"model": "fast", "weights": str(tmp_path)})
    with pytest.raises(ProtocolError, match="unknown property model"):
        GadgetSettings.from_properties("cs_wavelet", {"model": "fast"})
    same = GadgetSettings.from_properties("rgancs", {"model": "auto", "weights": str(tmp_path)})
    assert same.weights == tmp_path


def test_default_bundles_load_and_are_the_multicoil_cg_model():
    """The shipped defaults exist, verify, and are the study's pick: cg data consistency for multi-coil data."""
    from recon_plugin.sample_data import DEFAULT_BUNDLES

    for device, folder in DEFAULT_BUNDLES.items():
        bundle = load_bundle(folder)
        assert bundle.model.config.data_consistency == "cg", device
        assert (folder / "MODEL_CARD.md").is_file(), device
        card = (folder / "MODEL_CARD.md").read_text()
        assert "cs_wavelet" in card.lower() or "CS-WV" in card, device


def test_fast_path_property_reaches_the_reconstructor():
    from recon_plugin.errors import FastPathError

    settings = GadgetSettings.from_properties("rgancs", {"device": "cpu", "fast_path": "bf16"})
    assert build_reconstructor(settings).fast_path.name == "bf16"
    with pytest.raises(FastPathError):
        build_reconstructor(GadgetSettings.from_properties("rgancs", {"device": "cpu", "fast_path": "nitro"}))


@pytest.mark.parametrize(
    ("method", "props", "message"),
    [
        ("rgancs", {"retro_accleration": "5"}, "unknown property retro_accleration \\(did you mean retro_acceleration"),
        ("rgancs", {"lambda": "0.01"}, "only cs_wavelet, cs_tv gadgets read it"),
        ("zero_filled", {"weights": "x"}, "the zero_filled gadget accepts: .*retro_acceleration"),
        ("rgancs", {"retro_acceleration": "nan"}, "retro_acceleration='nan' must be a finite number"),
        ("rgancs", {"retro_acceleration": "-1"}, "retro_acceleration='-1' must be >= 1, or 0"),
        ("rgancs", {"retro_acceleration": "0.5"}, "must be >= 1, or 0"),
        ("rgancs", {"batch_size": "-3"}, "batch_size='-3' must be >= 0"),
        ("rgancs", {"batch_size": "2.5"}, "batch_size='2.5' is not a valid int"),
        ("cs_tv", {"lambda": "inf"}, "lambda='inf' must be a finite number"),
        ("cs_tv", {"time_limit": "0"}, "time_limit='0' must be > 0"),
        ("cs_wavelet", {"iterations": "0"}, "iterations='0' must be >= 1"),
        ("cs_wavelet", {"workers": "0"}, "workers='0' must be >= 1"),
        ("rgancs", {"calib_width": "0"}, "calib_width='0' must be >= 1"),
        ("rgancs", {"series_index": "-2"}, "series_index='-2' must be >= 0"),
    ],
)
def test_bad_properties_are_named(method: str, props: dict, message: str) -> None:
    """A typo or an out-of-domain value is a ProtocolError naming it, never a silently different exam."""
    with pytest.raises(ProtocolError, match=message):
        GadgetSettings.from_properties(method, props)


def test_retro_acceleration_zero_or_absent_means_off() -> None:
    for props in ({}, {"retro_acceleration": "0"}, {"retro_acceleration": ""}):
        assert GadgetSettings.from_properties("zero_filled", props).retro is None
    assert GadgetSettings.from_properties("zero_filled", {"retro_acceleration": "4"}).retro.acceleration == 4.0


def test_mask_files_are_checked_when_the_gadget_starts(tmp_path) -> None:
    text = tmp_path / "mask.txt"
    text.write_text("1 0 1\n0 1 0\n")
    with pytest.raises(ProtocolError, match=r"is not a NumPy \.npy array \(write masks with numpy\.save"):
        GadgetSettings.from_properties("zero_filled", {"mask": str(text)})
    for array, message in (
        (np.ones((2, 3, 4), bool), "must hold a 2D array"),
        (np.full((4, 4), 0.5), "must be boolean or 0/1"),
        (np.zeros((4, 4), bool), "samples no point"),
    ):
        path = tmp_path / "m.npy"
        np.save(path, array)
        with pytest.raises(ProtocolError, match=message):
            GadgetSettings.from_properties("zero_filled", {"mask": str(path)})
    good = np.eye(4, dtype=np.uint8)
    np.save(tmp_path / "ok.npy", good)
    assert GadgetSettings.from_properties("zero_filled", {"mask": str(tmp_path / "ok.npy")}).retro.mask_file
