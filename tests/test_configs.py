"""The shipped training configurations load and describe the paper's models."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_config

ROOT = Path(__file__).resolve().parents[1] / "configs"
STUDIES = sorted((ROOT / "study").glob("*.toml"))
CONFIGS = sorted(p for p in ROOT.glob("**/*.toml") if p not in STUDIES)


def test_there_are_configs():
    assert {p.stem for p in CONFIGS} >= {
        "mri_10x1_shared_pixel",
        "mri_10x1_shared_lsgan",
        "mri_deep_1x10",
        "sr_5x2_independent",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads(path):
    config = load_config(path)
    assert config.data.train_range == [0, 140] and config.data.val_range == [140, 160]  # split by scan block
    assert config.optim.beta1 == 0.9
    if "cpu" in str(path.relative_to(ROOT)):  # short CPU runs: larger learning rate with a cosine schedule
        assert config.optim.lr >= 5e-4 and config.optim.schedule == "cosine"
    else:
        assert config.optim.lr == 1e-5 and config.optim.batch_size == 2  # the paper's
    if "lsgan" in path.stem:
        assert config.loss.lambda_gan == 0.1 and config.loss.eta == 0.9
    if config.data.kind == "sr":  # super-resolution: 1 channel in [0, 1], independent copies
        assert (config.model.copies, config.model.blocks, config.model.shared) == (5, 2, False)
        assert (config.model.channels, config.model.output_activation) == (1, "sigmoid")
        assert (config.data.crop, config.data.sr_kernel) == (128, 4)
    elif "deep" in path.stem or path.stem.startswith("1x10"):
        assert (config.model.copies, config.model.blocks) == (1, 10)
    else:
        assert (config.model.copies, config.model.blocks, config.model.shared) == (10, 1, True)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_files_load_and_every_variant_is_a_valid_config(path):
    from training.study import load_study, variant_config

    study = load_study(path)
    configs = [variant_config(study, v) for v in study.variants]
    assert len({c.optim.steps for c in configs}) == 1  # an equal budget
    assert len({str(sorted(vars(c.data).items())) for c in configs}) == 1  # the same data and masks
    assert all(c.run.init_weights == "" for c in configs)  # every variant from scratch


def test_every_model_setting_round_trips_through_a_training_config():
    """The producers rebuild a run's configuration from its dict: every ModelConfig field must be a known key."""
    from dataclasses import fields

    from recon_plugin.model import ModelConfig
    from training.config import _MODEL_KEYS, config_from_dict

    assert set(_MODEL_KEYS) == {f.name for f in fields(ModelConfig)}
    raw = {"model": ModelConfig(features=8, phase_average=2).to_dict(), "data": {"path": "x.npy"}}
    assert config_from_dict(raw).model.phase_average == 2
