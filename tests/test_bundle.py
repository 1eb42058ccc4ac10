"""Model bundles: round trip, hash check, tampering, truncation, mismatch, no pickle."""

from __future__ import annotations

import json

import pytest
import torch

from recon_plugin.errors import BundleError, BundleIntegrityError, BundleMismatchError
from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle, save_bundle
from recon_plugin.model.bundle import sha256_file


@pytest.fixture
def bundle_dir(tmp_path):
    net = RecurrentProximalNet(ModelConfig(copies=3, blocks=1, features=8))
    with torch.no_grad():
        net.alpha.copy_(torch.tensor([0.3, 0.6, 0.9]))
    folder = tmp_path / "tiny"
    save_bundle(net, folder, mask={"family": "radial", "acceleration": 5.0}, training_data={"slices": 0})
    return folder, net


def test_round_trip(bundle_dir):
    folder, net = bundle_dir
    bundle = load_bundle(folder)
    assert bundle.model.config == net.config
    for (k, a), (_, b) in zip(net.state_dict().items(), bundle.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not bundle.model.training
    side = json.loads((folder / "bundle.json").read_text())
    for key in ("model", "normalisation", "mask", "training_data", "package_version", "weights_sha256"):
        assert key in side
    assert side["weights_sha256"] == sha256_file(folder / "weights.safetensors")
    assert bundle.sha256 == side["weights_sha256"]
    assert load_bundle(folder / "bundle.json").name == "tiny"


def test_tampered_weights_are_refused(bundle_dir):
    folder, _ = bundle_dir
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        load_bundle(folder)


def test_truncated_weights_are_refused(bundle_dir):
    folder, _ = bundle_dir
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BundleIntegrityError):
        load_bundle(folder)


def test_truncated_weights_with_matching_hash_still_refused(bundle_dir):
    """A truncated file whose hash was re-recorded fails as unreadable safetensors, not silently."""
    folder, _ = bundle_dir
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    side = json.loads((folder / "bundle.json").read_text())
    side["weights_sha256"] = sha256_file(weights)
    (folder / "bundle.json").write_text(json.dumps(side))
    with pytest.raises(BundleIntegrityError, match="safetensors"):
        load_bundle(folder)


def test_mismatched_architecture_is_refused(bundle_dir):
    folder, _ = bundle_dir
    side = json.loads((folder / "bundle.json").read_text())
    side["model"]["features"] = 16
    (folder / "bundle.json").write_text(json.dumps(side))
    with pytest.raises(BundleMismatchError):
        load_bundle(folder)
    side["model"]["features"] = 8
    side["model"]["shared"] = False
    (folder / "bundle.json").write_text(json.dumps(side))
    with pytest.raises(BundleMismatchError):
        load_bundle(folder)
    side["model"]["shared"] = True
    side["model"]["data_consistency"] = "magic"
    (folder / "bundle.json").write_text(json.dumps(side))
    with pytest.raises(BundleMismatchError):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"architecture": "unet"}}, "does not know \\(architecture\\)"),
        ({"model": {"features": "8"}}, "features must be a int"),
        ({"model": {"shared": 1}}, "shared must be a bool"),
        ({"parameters": 12345}, "records 12345 parameters"),
        ({"architecture": "UNet3D"}, "holds a 'UNet3D' model"),
    ],
)
def test_sidecar_is_checked_field_by_field(bundle_dir, change, message):
    """A sidecar that names another architecture, or the right one with wrong types or counts, does not load."""
    folder, _ = bundle_dir
    path = folder / "bundle.json"
    original = path.read_text()
    side = json.loads(original)
    for key, value in change.items():
        if isinstance(value, dict):
            side[key].update(value)
        else:
            side[key] = value
    path.write_text(json.dumps(side))
    try:
        with pytest.raises(BundleMismatchError, match=message):
            load_bundle(folder)
    finally:
        path.write_text(original)


def test_bad_sidecars(bundle_dir, tmp_path):
    folder, _ = bundle_dir
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nowhere")
    sidecar = folder / "bundle.json"
    original = sidecar.read_text()
    sidecar.write_text(original[:40])
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(folder)
    side = json.loads(original)
    del side["weights_sha256"]
    sidecar.write_text(json.dumps(side))
    with pytest.raises(BundleError, match="weights_sha256"):
        load_bundle(folder)
    side = json.loads(original)
    side["format_version"] = 99
    sidecar.write_text(json.dumps(side))
    with pytest.raises(BundleError, match="format version"):
        load_bundle(folder)


def test_pickle_checkpoint_is_not_a_bundle(tmp_path):
    """A torch pickle renamed into place is rejected before anything is unpickled."""
    folder = tmp_path / "pickled"
    net = RecurrentProximalNet(ModelConfig(copies=1, blocks=1, features=4))
    save_bundle(net, folder, mask={}, training_data={})
    torch.save(net.state_dict(), folder / "weights.safetensors")
    side = json.loads((folder / "bundle.json").read_text())
    side["weights_sha256"] = sha256_file(folder / "weights.safetensors")
    (folder / "bundle.json").write_text(json.dumps(side))
    with pytest.raises(BundleIntegrityError):
        load_bundle(folder)


def test_shipped_bundles_load_and_verify():
    from pathlib import Path

    folders = sorted((Path(__file__).resolve().parents[1] / "sample_data" / "weights").iterdir())
    assert {f.name for f in folders} >= {"rgancs_demo_cpu", "rgancs_cg_10x1x32_multicoil"}
    for folder in folders:
        bundle = load_bundle(folder)
        assert bundle.sha256 == sha256_file(folder / "weights.safetensors")
        assert bundle.sidecar["mask"]["family"] in ("radial", "mixture") and (folder / "MODEL_CARD.md").is_file()
