"""Real-data validation at the inference's CG steps (``[data] real_val_cg_iterations``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_plugin.evaluation import image_case
from recon_plugin.masks import make_mask
from recon_plugin.model import RecurrentProximalNet
from recon_plugin.simulate import with_smooth_phase
from training.config import config_from_dict
from training.errors import TrainingConfigError
from training.loop import _comparable, _differences
from training.real_validation import validate_real


def _net(cg_iterations: int) -> RecurrentProximalNet:
    torch.manual_seed(5)
    return RecurrentProximalNet(
        copies=2,
        blocks=1,
        features=8,
        shared=False,
        data_consistency="cg",
        init="cg_sense",
        norm="none",
        cg_iterations=cg_iterations,
    )


def test_validation_runs_the_asked_cg_steps_and_restores_the_model() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:48j, -1:1:48j]
    image = ((xx**2 + yy**2) < 0.6).astype(np.float32) * (1 + 0.3 * rng.standard_normal((48, 48)))
    image = with_smooth_phase(image.astype(np.complex64), rng)
    mask = make_mask("radial", (48, 48), 3.0, seed=1, calib=12).mask
    cases = [image_case("disc", image, mask, coils=4, calib_width=12)]
    net = _net(2).train()
    as_trained = validate_real(net, cases, 99.0, torch.device("cpu"))
    at_four = validate_real(net, cases, 99.0, torch.device("cpu"), cg_iterations=4)
    assert net.training and net.config.cg_iterations == 2  # the model's own setting is back
    reference = _net(4)
    reference.load_state_dict(net.state_dict())
    assert at_four == validate_real(reference, cases, 99.0, torch.device("cpu"))
    assert at_four["real_snr_db"] != as_trained["real_snr_db"]
    assert validate_real(net, cases, 99.0, torch.device("cpu")) == as_trained


def test_the_setting_is_refused_for_a_model_without_cg(tmp_path) -> None:
    raw = {
        "model": {"data_consistency": "gradient"},
        "data": {"path": str(tmp_path / "x.npy"), "real_val_path": str(tmp_path), "real_val_cg_iterations": 4},
        "run": {"out": str(tmp_path / "run")},
    }
    with pytest.raises(TrainingConfigError, match=r"real_val_cg_iterations.*data_consistency"):
        config_from_dict(raw)
    raw["model"]["data_consistency"] = "cg"
    assert config_from_dict(raw).data.real_val_cg_iterations == 4


def test_a_resume_may_change_how_real_data_is_validated(tmp_path) -> None:
    raw = {
        "model": {"data_consistency": "cg"},
        "data": {"path": str(tmp_path / "x.npy"), "real_val_path": str(tmp_path), "real_val_cg_iterations": 4},
        "run": {"out": str(tmp_path / "run")},
    }
    before = config_from_dict(raw).to_dict()
    raw["data"]["real_val_cg_iterations"] = 0
    assert not _differences(_comparable(before), _comparable(config_from_dict(raw).to_dict()))
    raw["data"]["crop"] = 64  # a training setting still counts
    assert _differences(_comparable(before), _comparable(config_from_dict(raw).to_dict()))
