"""The training loop on every data source: images (blocks, coils), fully sampled raw files, super-resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from raw_helpers import tiny_3d

from recon_plugin import sample_raw as sr
from recon_plugin.model import load_bundle
from training.checkpoint import list_checkpoints, load_checkpoint
from training.config import config_from_dict, load_config
from training.errors import TrainingConfigError
from training.loop import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_section(out: Path, **over: Any) -> dict[str, Any]:
    run = {"out": str(out), "checkpoint_every": 0, "validate_every": 0, "log_every": 1, "progress": False}
    return {**run, "device": "cpu", "seed": 1, **over}


@pytest.fixture(scope="module")
def sr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six smooth 24x20 grayscale-ish PNGs."""
    folder = tmp_path_factory.mktemp("sr")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:20, 0:24]
    for i in range(6):
        img = 127 + 100 * np.sin(xx / rng.uniform(2, 5) + yy / rng.uniform(2, 5))
        Image.fromarray(np.repeat(img[..., None], 3, -1).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


def sr_raw(folder: Path, out: Path, **over: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"copies": 2, "blocks": 1, "features": 8, "shared": False, "channels": 1},
        "data": {"kind": "sr", "path": str(folder), "train_range": [0, 4], "val_range": [4, 6], "crop": 16},
        "loss": {"lambda_gan": 0.1, "gan_ramp_steps": 2},
        "optim": {"lr": 1e-3, "steps": 6},
        "run": run_section(out),
    }
    raw["model"]["output_activation"] = "sigmoid"
    for section, values in over.items():
        raw[section].update(values)
    return raw


def test_sr_fit_writes_one_channel_bundle_and_resumes_exactly(tmp_path: Path, sr_folder: Path) -> None:
    straight = Trainer(config_from_dict(sr_raw(sr_folder, tmp_path / "a")))
    assert straight.disc is not None and straight.disc.net[0].in_channels == 1
    metrics = straight.fit()
    assert set(metrics) == {"snr_db", "ssim", "x0_snr_db", "x0_ssim"} and all(np.isfinite(list(metrics.values())))
    bundle = load_bundle(tmp_path / "a" / "bundle")
    assert bundle.sidecar["model"]["channels"] == 1 and bundle.sidecar["model"]["output_activation"] == "sigmoid"
    assert bundle.sidecar["training_data"]["kind"] == "sr" and bundle.sidecar["training_data"]["matrix"] == [16, 16]

    half = Trainer(config_from_dict(sr_raw(sr_folder, tmp_path / "b")))

    def interrupt(trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.step == 3:
            raise KeyboardInterrupt

    half.callbacks.append(interrupt)
    with pytest.raises(KeyboardInterrupt):
        half.fit()
    state = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[-1])
    assert state["data_rng"] == half.train_data.rng.bit_generator.state
    resumed = Trainer(config_from_dict(sr_raw(sr_folder, tmp_path / "b")))
    resumed.fit(resume=tmp_path / "b")
    for module in ("model", "disc"):
        a, b = getattr(straight, module).state_dict(), getattr(resumed, module).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), module


def test_sr_named_errors(tmp_path: Path, sr_folder: Path) -> None:
    with pytest.raises(TrainingConfigError, match=r"\[model\]\.channels"):
        config_from_dict(sr_raw(sr_folder, tmp_path, model={"channels": 2}))
    with pytest.raises(TrainingConfigError, match=r"\[model\]\.output_activation"):
        config_from_dict(sr_raw(sr_folder, tmp_path, model={"output_activation": "linear"}))
    with pytest.raises(TrainingConfigError, match=r"\[model\]\.channels"):  # MR needs 2 channels
        config_from_dict(sr_raw(sr_folder, tmp_path, data={"kind": "images"}))
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.crop"):
        config_from_dict(sr_raw(sr_folder, tmp_path, data={"crop": 18}))
    missing = config_from_dict(sr_raw(tmp_path / "nowhere", tmp_path))  # existence is checked by the Trainer
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.path.*nowhere"):
        Trainer(missing)


def test_shipped_sr_config_loads_without_its_folder() -> None:
    config = load_config(CONFIGS / "sr_5x2_independent.toml")
    assert config.data.kind == "sr" and not Path(config.data.path).exists()
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.path"):
        Trainer(config)


def test_raw_file_fit(tmp_path: Path) -> None:
    scan = sr.build_raw(tiny_3d())
    path = sr.write_ismrmrd(tmp_path / "full.h5", scan.header, scan.acquisitions)  # 8 fully sampled ky-kz planes
    raw = {
        "model": {"copies": 2, "blocks": 1, "features": 8},
        "data": {"kind": "raw", "paths": [str(path)], "train_range": [0, 6], "val_range": [6, 8], "acceleration": 3.0},
        "optim": {"lr": 1e-3, "steps": 2},
        "run": run_section(tmp_path / "run"),
    }
    trainer = Trainer(config_from_dict(raw))
    metrics = trainer.fit()
    assert set(metrics) == {"snr_db", "ssim", "zero_filled_snr_db", "zero_filled_ssim"}
    sidecar = load_bundle(tmp_path / "run" / "bundle").sidecar
    assert sidecar["training_data"]["kind"] == "raw" and sidecar["training_data"]["coils"] == 4
    assert sidecar["training_data"]["train_slices"] == 6
    raw["data"] = {"kind": "raw", "path": str(tmp_path / "*.h5"), "val_fraction": 0.25, "acceleration": 3.0}
    assert Trainer(config_from_dict(raw)).data_summary["validation_slices"] == 2
    raw["data"] = {"kind": "raw", "path": str(tmp_path / "none*.h5")}
    with pytest.raises(TrainingConfigError, match="no file matches"):
        Trainer(config_from_dict(raw))


def test_images_blocks_coils_and_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "s.npy", rng.random((30, 16, 16)).astype(np.float32))
    raw = {
        "model": {"copies": 1, "blocks": 1, "features": 4},
        "data": {"path": str(tmp_path / "s.npy"), "train_blocks": [1, 2], "val_blocks": [3], "coils": 3},
        "optim": {"steps": 1},
        "run": run_section(tmp_path / "run"),
    }
    raw["data"]["noise"] = 0.01
    trainer = Trainer(config_from_dict(raw))
    assert trainer.data_summary["train_slices"] == 20 and trainer.data_summary["validation_slices"] == 10
    assert trainer.val_batches[0].op.coils == 3
    trainer.fit()
    raw["data"]["val_blocks"] = [2]
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.train_blocks"):
        Trainer(config_from_dict(raw))
    raw["data"] = {"path": "s.npy", "paths": ["a.h5"]}
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.paths"):
        config_from_dict(raw)
