"""scripts/checkpoint_bundle.py: a campaign checkpoint's generator as a bundle, with that step's sidecar fields."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle, save_bundle
from training.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from checkpoint_bundle import checkpoint_bundle

CONFIG = ModelConfig(copies=2, features=4)


def _campaign(tmp_path: Path) -> tuple[Path, RecurrentProximalNet]:
    """A campaign folder: bundle/ (the last step's weights) and one earlier checkpoint with other weights."""
    torch.manual_seed(1)
    last = RecurrentProximalNet(CONFIG)
    extra = {"training": {"steps": 500, "seconds": 900.0, "lr": 2.5e-5}, "validation": {"real_snr_db": 27.8}}
    save_bundle(last, tmp_path / "bundle", mask={"family": "mixture"}, training_data={"kind": "images"}, extra=extra)
    torch.manual_seed(2)
    earlier = RecurrentProximalNet(CONFIG)
    state = {"step": 300, "seconds": 540.25, "metrics": {"real_snr_db": 27.9}, "model": earlier.state_dict()}
    save_checkpoint(tmp_path / "checkpoints" / "checkpoint-00000300.safetensors", state)
    return tmp_path / "checkpoints" / "checkpoint-00000300.safetensors", earlier


def test_the_bundle_carries_the_checkpoint_weights_step_and_validation(tmp_path):
    checkpoint, earlier = _campaign(tmp_path)
    checkpoint_bundle(checkpoint, tmp_path / "step300")
    bundle = load_bundle(tmp_path / "step300")  # checks the hash and the architecture
    for name, tensor in earlier.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[name], tensor)
    assert bundle.sidecar["training"] == {"steps": 300, "seconds": 540.2, "lr": 2.5e-5}
    assert bundle.sidecar["validation"] == {"real_snr_db": 27.9}
    assert bundle.sidecar["mask"] == {"family": "mixture"} and bundle.name == "step300"


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    checkpoint, _ = _campaign(tmp_path)
    save_bundle(RecurrentProximalNet(ModelConfig(copies=2, features=8)), tmp_path / "wide", mask={}, training_data={})
    with pytest.raises(RuntimeError, match="size mismatch"):
        checkpoint_bundle(checkpoint, tmp_path / "out", like=tmp_path / "wide")
    assert not (tmp_path / "out").exists()
