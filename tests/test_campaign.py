"""The committed training campaigns: each has a checkpoint that fits its configuration, a run log and a bundle,
and (with the shared data present) resumes from the committed checkpoint and trains on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from recon_plugin.model import RecurrentProximalNet, load_bundle
from training.checkpoint import load_checkpoint, resolve_checkpoint
from training.config import load_config
from training.loop import Trainer, _comparable, _differences

CAMPAIGNS = Path(__file__).resolve().parents[1] / "campaigns"
NAMES = sorted(p.name for p in CAMPAIGNS.iterdir() if (p / "config.toml").is_file())


@pytest.mark.parametrize("name", NAMES)
def test_committed_checkpoint_fits_its_config(name: str) -> None:
    folder = CAMPAIGNS / name
    config = load_config(folder / "config.toml")
    state = load_checkpoint(resolve_checkpoint(folder))
    assert not _differences(_comparable(state["config"]), _comparable(config.to_dict()))
    assert state["step"] > 0
    model = RecurrentProximalNet(config.model)
    model.load_state_dict(state["model"], strict=True)
    assert (folder / "log.csv").is_file() and (folder / "curve.png").is_file()
    bundle = load_bundle(folder / "bundle")
    assert bundle.sidecar["training"]["steps"] <= state["step"]


@pytest.mark.parametrize("name", NAMES)
def test_campaign_resumes_from_the_committed_checkpoint(name: str, tmp_path: Path) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data {SHARED_DATA} not present (fresh clone without ../shared/data)")
    folder = tmp_path / name
    shutil.copytree(CAMPAIGNS / name, folder, ignore=shutil.ignore_patterns("tensorboard"))
    config = load_config(CAMPAIGNS / name / "config.toml")
    config.run.out = str(folder)
    config.data.bank_workers, config.data.real_val_path = 0, ""  # in this process; real validation not needed
    config.data.real_val_cg_iterations = 0  # its setting goes with it
    config.run.validate_every = config.run.checkpoint_every = 0
    if config.run.device == "cuda" and not torch.cuda.is_available():
        config.run.device = "cpu"  # a GPU campaign continues on a CPU: the device is not part of the state
    trainer = Trainer(config)
    start = trainer.resume(folder)
    committed = load_checkpoint(resolve_checkpoint(CAMPAIGNS / name))
    for key, value in committed["model"].items():
        assert torch.equal(trainer.model.state_dict()[key], value)
    trainer.train_step()
    assert trainer.step == start + 1
