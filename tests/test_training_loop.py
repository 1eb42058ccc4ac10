"""The RGANCS training loop: config validation, GAN ramp, LSGAN terms, exact resume, bundle, Ctrl-C."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ellipse_slices

from recon_plugin.model import load_bundle
from recon_plugin.model.precision import FullPrecisionOperator
from training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from training.config import TrainConfig, config_from_dict, load_config
from training.errors import CheckpointError, TrainingConfigError
from training.loop import Trainer, gan_weight, lr_factor, resolve_channels_last
from training.losses import lsgan_discriminator, lsgan_generator

N_SLICES, SIZE = 10, 32


@pytest.fixture(scope="module")
def slices_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smooth synthetic 32x32 magnitude slices (ellipses of different sizes)."""
    path = tmp_path_factory.mktemp("data") / "slices.npy"
    np.save(path, ellipse_slices(N_SLICES, SIZE))
    return path


def make_raw(slices: Path, out: Path, **over: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"copies": 2, "blocks": 1, "features": 8},
        "data": {"path": str(slices), "train_range": [0, 8], "val_range": [8, 10], "seed": 3},
        "loss": {"eta": 1.0, "gamma": 0.5, "lambda_gan": 0.1, "gan_ramp_steps": 4},
        "optim": {"lr": 1e-3, "batch_size": 2, "steps": 6, "schedule": "cosine"},
        "run": {
            "out": str(out),
            "checkpoint_every": 0,
            "validate_every": 3,
            "log_every": 1,
            "progress": False,
            "device": "cpu",
            "seed": 1,
        },
    }
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return raw


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def make_config(slices: Path, out: Path, **over: dict[str, Any]) -> TrainConfig:
    return config_from_dict(make_raw(slices, out, **over))


# ---------------------------------------------------------------- config
def test_load_config_from_toml_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        '[model]\ncopies = 2\nfeatures = 8\n[data]\npath = "slices.npy"\nmask_family = "poisson"\n'
        '[loss]\nlambda_gan = 0.1\n[optim]\nsteps = 10\n[run]\nout = "runs/a"\n'
    )
    cfg = load_config(tmp_path / "run.toml")
    assert cfg.model.copies == 2 and cfg.data.mask_family == "poisson"
    assert cfg.optim.lr == 1e-5 and cfg.optim.batch_size == 2 and cfg.loss.gan_ramp_steps == 1000
    assert Path(cfg.data.path) == tmp_path / "slices.npy" and Path(cfg.run.out) == tmp_path / "runs/a"


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("optim", {"learning_rate": 1e-3}, "[optim].learning_rate"),
        ("model", {"width": 3}, "[model].width"),
        ("optim", {"lr": -1.0}, "[optim].lr"),
        ("optim", {"steps": 0}, "[optim].steps"),
        ("optim", {"schedule": "step"}, "[optim].schedule"),
        ("data", {"mask_family": "spiral"}, "[data].mask_family"),
        ("data", {"acceleration": 0.5}, "[data].acceleration"),
        ("data", {"random_crop": True}, "[data].random_crop"),
        ("data", {"kind": "ismrmrd"}, "[data].kind"),
        ("loss", {"eta": -0.1}, "[loss].eta"),
        ("loss", {"gamma": 1.5}, "[loss].gamma"),
        ("loss", {"lambda_gan": "0.1"}, "[loss].lambda_gan"),
        ("model", {"copies": 0}, "[model].copies"),
        ("model", {"output_activation": "softmax"}, "[model].output_activation"),
        ("run", {"device": "tpu"}, "[run].device"),
        ("run", {"bf16": 1}, "[run].bf16"),
        ("run", {"channels_last": "yes"}, "[run].channels_last"),
        ("optim", {"lambda_lr_scale": 0}, "[optim].lambda_lr_scale"),
        ("optim", {"lr_scales": {"blocks.0.": 0}}, "[optim].lr_scales"),
        ("optim", {"lr_scales": {"blocks.0.": "ten"}}, "[optim].lr_scales"),
        ("optim", {"lr_scales": ["blocks.0."]}, "[optim].lr_scales"),
        ("optim", {"warmup_steps": -1}, "[optim].warmup_steps"),
        ("optim", {"warmup_steps": 6}, "[optim].warmup_steps"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, section: str, values: dict[str, Any], key: str) -> None:
    raw = make_raw(tmp_path / "s.npy", tmp_path, **{section: values})
    with pytest.raises(TrainingConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw)


def test_unknown_section_and_bad_data_file(tmp_path: Path, slices_path: Path) -> None:
    with pytest.raises(TrainingConfigError, match="trainer"):
        config_from_dict({"trainer": {}, "data": {"path": "x.npy"}})
    cfg = make_config(tmp_path / "missing.npy", tmp_path)
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.path"):
        Trainer(cfg)
    cfg = make_config(slices_path, tmp_path, data={"train_range": [0, 9], "val_range": [8, 10]})
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.val_range"):
        Trainer(cfg)


# ---------------------------------------------------------------- losses
def test_gan_weight_ramp() -> None:
    assert gan_weight(0, 0.1, 1000) == 0.0
    assert gan_weight(500, 0.1, 1000) == pytest.approx(0.05)
    assert gan_weight(1000, 0.1, 1000) == pytest.approx(0.1)
    assert gan_weight(5000, 0.1, 1000) == pytest.approx(0.1)
    assert gan_weight(500, 0.0, 1000) == 0.0
    assert gan_weight(0, 0.1, 0) == pytest.approx(0.1)


def test_lsgan_terms_on_known_inputs() -> None:
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5])
    assert lsgan_generator(fake).item() == pytest.approx((1 + 0.25) / 2)
    assert lsgan_discriminator(real, fake).item() == pytest.approx((0 + 1) / 2 + (0 + 0.25) / 2)
    assert lsgan_discriminator(torch.ones(3), torch.zeros(3)).item() == 0.0


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_without_pickle(tmp_path: Path) -> None:
    state = {
        "t": torch.arange(4.0),
        "nested": {0: {"a": torch.ones(2, dtype=torch.uint8)}, "b": (0.9, 0.999)},
        "np": np.random.default_rng(5).bit_generator.state,
        "none": None,
    }
    path = save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(path)
    assert torch.equal(back["t"], state["t"]) and torch.equal(back["nested"][0]["a"], state["nested"][0]["a"])
    assert back["nested"]["b"] == (0.9, 0.999) and back["np"] == state["np"] and back["none"] is None
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.safetensors")


def _interrupt_at(trainer: Trainer, step: int) -> None:
    """Run ``trainer`` until a simulated Ctrl-C after ``step`` (it leaves a resumable checkpoint)."""

    def interrupt(trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.step == step:
            raise KeyboardInterrupt

    trainer.callbacks.append(interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def _assert_same_weights(a: Trainer, b: Trainer) -> None:
    for name, module in (("generator", "model"), ("discriminator", "disc")):
        if getattr(a, module) is None and getattr(b, module) is None:
            continue
        sa, sb = getattr(a, module).state_dict(), getattr(b, module).state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name} {key} differs"


def _assert_resume_matches(straight: Trainer, slices: Path, out: Path, stop_at: int, **over: Any) -> Trainer:
    """Stop a run of the same config as ``straight`` (already fitted) after ``stop_at``, resume it from its
    checkpoint and check the weights equal the straight run's; returns the resumed trainer."""
    half = Trainer(make_config(slices, out, **over))
    _interrupt_at(half, stop_at)
    resumed = Trainer(make_config(slices, out, **over))
    resumed.fit(resume=out)
    assert resumed.step == straight.step
    _assert_same_weights(straight, resumed)
    return resumed


def test_resume_is_exact_with_discriminator(tmp_path: Path, slices_path: Path) -> None:
    straight = Trainer(make_config(slices_path, tmp_path / "a"))
    straight.fit()
    assert straight.disc is not None

    half = Trainer(make_config(slices_path, tmp_path / "b", optim={"steps": 6}))
    stop_at = 3
    _interrupt_at(half, stop_at)
    saved = list_checkpoints(tmp_path / "b" / "checkpoints")
    assert [p.name for p in saved] == [f"checkpoint-{stop_at:08d}.safetensors"]

    resumed = Trainer(make_config(slices_path, tmp_path / "b"))
    resumed.fit(resume=tmp_path / "b")
    assert resumed.step == 6
    _assert_same_weights(straight, resumed)
    for g1, g2 in zip(
        straight.opt_d.state_dict()["state"].values(), resumed.opt_d.state_dict()["state"].values(), strict=True
    ):
        assert torch.equal(g1["exp_avg"], g2["exp_avg"])
    rows = read_rows(tmp_path / "b" / "log.csv")
    train_steps = [int(r["step"]) for r in rows if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # no duplicated rows after resume


def test_warmup_rises_linearly_then_follows_the_cosine_and_resumes_exactly(tmp_path: Path, slices_path: Path) -> None:
    """optim.warmup_steps: lr / W, 2 lr / W, ... up to lr, times the cosine of the whole run; the schedule's state
    survives a resume (the weights after a stop and a resume are those of a straight run)."""
    over = {"loss": {"lambda_gan": 0.0}, "optim": {"steps": 6, "warmup_steps": 3, "schedule": "cosine"}}
    seen: list[float] = []
    straight = Trainer(make_config(slices_path, tmp_path / "a", **over))
    straight.callbacks.append(lambda t, stats: seen.append(t.opt_g.param_groups[0]["lr"]))
    assert straight.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 / 3)  # the first step's lr
    straight.fit()
    expected = [1e-3 * min(1.0, (s + 1) / 3) * 0.5 * (1 + np.cos(np.pi * s / 6)) for s in range(1, 7)]
    assert seen == pytest.approx(expected)
    assert seen[0] < seen[1] and seen[-1] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("none", 6, 3, 10) == 1.0 and lr_factor("none", 6, 0, 0) == 1.0

    _assert_resume_matches(straight, slices_path, tmp_path / "b", 2, **over)  # stopped inside the warm-up


def test_mismatched_resume_is_refused(tmp_path: Path, slices_path: Path) -> None:
    first = Trainer(make_config(slices_path, tmp_path / "a", optim={"steps": 2}, run={"validate_every": 0}))
    first.fit()
    other = Trainer(make_config(slices_path, tmp_path / "b", model={"features": 4}))
    with pytest.raises(CheckpointError, match="features"):
        other.resume(tmp_path / "a")
    no_gan = Trainer(make_config(slices_path, tmp_path / "c", loss={"lambda_gan": 0.0}))
    with pytest.raises(CheckpointError, match="lambda_gan"):
        no_gan.fit(resume=tmp_path / "a")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        no_gan.resume(tmp_path / "nowhere")


def test_init_weights_start_from_a_bundle_and_must_match(tmp_path: Path, slices_path: Path) -> None:
    """run.init_weights fine-tunes: the model starts at the bundle's weights; another architecture is refused."""
    no_gan = {"lambda_gan": 0.0}
    short = {"validate_every": 0}
    first = Trainer(make_config(slices_path, tmp_path / "a", loss=no_gan, optim={"steps": 2}, run=short))
    first.fit()
    bundle = tmp_path / "a" / "bundle"
    tuned = Trainer(make_config(slices_path, tmp_path / "b", loss=no_gan, run={"init_weights": str(bundle)}))
    fresh = Trainer(make_config(slices_path, tmp_path / "c", loss=no_gan))
    want = load_bundle(bundle).model.state_dict()
    for name, value in tuned.model.state_dict().items():
        assert torch.equal(value, want[name]), name
    assert any(not torch.equal(v, want[k]) for k, v in fresh.model.state_dict().items())
    assert tuned.step == 0  # a new run: step, optimiser and schedule start afresh
    solver = Trainer(
        make_config(
            slices_path,
            tmp_path / "f",
            model={"cg_iterations": 5, "output_gain": True},
            run={"init_weights": str(bundle)},
        )
    )
    assert solver.model.config.cg_iterations == 5  # solver settings hold no weights: they may change
    assert solver.model.config.output_gain is True
    with pytest.raises(CheckpointError, match="features: bundle 8, run 4"):
        Trainer(make_config(slices_path, tmp_path / "d", model={"features": 4}, run={"init_weights": str(bundle)}))
    with pytest.raises(CheckpointError, match=r"run\.init_weights: no model bundle"):
        Trainer(make_config(slices_path, tmp_path / "e", run={"init_weights": str(tmp_path / "nowhere")}))


def _two_step_bundle(slices: Path, out: Path) -> Path:
    """The bundle of a 2-step run without the GAN term (a start for ``run.init_weights``)."""
    Trainer(make_config(slices, out, loss={"lambda_gan": 0.0}, optim={"steps": 2}, run={"validate_every": 0})).fit()
    return out / "bundle"


def test_init_weights_unties_a_shared_bundle_into_independent_copies(tmp_path: Path, slices_path: Path) -> None:
    """A shared-weights bundle starts an independent-weights run: every copy holds the shared network, so the
    untied model computes exactly what the bundle does; the reverse (independent into shared) is refused."""
    no_gan = {"lambda_gan": 0.0}
    bundle = _two_step_bundle(slices_path, tmp_path / "a")
    init = {"init_weights": str(bundle)}
    untied = Trainer(make_config(slices_path, tmp_path / "b", loss=no_gan, model={"shared": False}, run=init))
    shared = load_bundle(bundle).model
    copies = untied.model.config.copies
    assert copies > 1 and len(untied.model.proximals) == copies
    for copy in range(copies):
        for name, value in shared.proximals[0].state_dict().items():
            assert torch.equal(untied.model.proximals[copy].state_dict()[name], value), (copy, name)
    x = torch.randn(1, 2, 16, 16)
    untied.model.eval()
    shared.eval()
    with torch.no_grad():
        for copy in range(copies):
            assert torch.equal(untied.model.proximals[copy](x), shared.proximals[0](x))
    untied.model.proximals[1].project.weight.data.add_(1.0)  # the copies are separate tensors now
    assert not torch.equal(untied.model.proximals[0].project.weight, untied.model.proximals[1].project.weight)
    independent = tmp_path / "b" / "bundle"
    untied.fit()
    with pytest.raises(CheckpointError, match="shared: bundle False, run True"):
        Trainer(make_config(slices_path, tmp_path / "c", loss=no_gan, run={"init_weights": str(independent)}))


def test_init_weights_widens_a_narrower_bundle(tmp_path: Path, slices_path: Path) -> None:
    """A narrower bundle starts a wider run with the same function at step 0; a wider bundle is refused."""
    no_gan = {"lambda_gan": 0.0}
    bundle = _two_step_bundle(slices_path, tmp_path / "a")
    init = {"init_weights": str(bundle)}
    wide = Trainer(make_config(slices_path, tmp_path / "b", loss=no_gan, model={"features": 12}, run=init))
    narrow = load_bundle(bundle).model
    assert wide.model.proximals[0].project.weight.shape[0] == 12
    x = torch.randn(1, 2, 16, 16)
    wide.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(wide.model.proximals[0](x), narrow.proximals[0](x), rtol=1e-5, atol=1e-5)
    wide.fit()
    assert wide.step == wide.config.optim.steps  # and it trains
    with pytest.raises(CheckpointError, match="features: bundle 12, run 8"):
        wider = {"init_weights": str(tmp_path / "b" / "bundle")}
        Trainer(make_config(slices_path, tmp_path / "c", loss=no_gan, run=wider))


def test_init_weights_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    raw = {"data": {"path": "s.npy"}, "run": {"out": "run", "init_weights": "../weights/b"}}
    cfg = config_from_dict(raw, base_dir=tmp_path / "configs")
    assert cfg.run.init_weights == str(tmp_path / "configs" / "../weights/b")


# ---------------------------------------------------------------- end to end
def test_fit_writes_bundle_and_log(tmp_path: Path, slices_path: Path) -> None:
    cfg = make_config(
        slices_path,
        tmp_path / "run",
        loss={"lambda_gan": 0.0},
        optim={"steps": 4},
        run={"validate_every": 2, "log_every": 2, "checkpoint_every": 2},
    )
    trainer = Trainer(cfg)
    assert trainer.disc is None
    metrics = trainer.fit()
    assert set(metrics) == {"snr_db", "ssim", "zero_filled_snr_db", "zero_filled_ssim"}
    bundle = load_bundle(tmp_path / "run" / "bundle")
    assert bundle.sidecar["model"]["copies"] == 2 and bundle.sidecar["mask"]["family"] == "radial"
    assert bundle.sidecar["training"]["steps"] == 4 and bundle.sidecar["validation"] == metrics
    assert bundle.sidecar["training_data"]["train_slices"] == 8
    rows = read_rows(tmp_path / "run" / "log.csv")
    val = [r for r in rows if r["kind"] == "val"]
    assert [int(r["step"]) for r in val] == [2, 4] and all(float(r["ssim"]) > 0 for r in val)
    assert all(float(r["slices_per_s"]) > 0 for r in rows if r["kind"] == "train")
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == "checkpoint-00000004.safetensors"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_g", "val/snr_db", "val/ssim"} <= tags
    assert [e.step for e in events.Scalars("val/snr_db")] == [2, 4]
    assert events.Scalars("val/snr_db")[-1].value == pytest.approx(float(val[-1]["snr_db"]), rel=1e-5)


def test_real_sigint_stops_after_the_step_with_a_checkpoint(tmp_path: Path, slices_path: Path) -> None:
    import os
    import signal

    def press_ctrl_c(trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    trainer = Trainer(make_config(slices_path, tmp_path / "run", run={"validate_every": 0}), callbacks=[press_ctrl_c])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == 2
    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert state["step"] == 2 and state["data_rng"] == trainer.train_data.rng.bit_generator.state


def test_bf16_path_keeps_data_consistency_in_complex64(tmp_path: Path, slices_path: Path) -> None:
    """The bf16 autocast path on CPU: network in bf16, DC and losses in fp32."""
    trainer = Trainer(make_config(slices_path, tmp_path / "run", run={"bf16": True}))
    assert trainer.bf16 is True
    seen: list[torch.dtype] = []
    trainer.model.proximals[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    stats = [trainer.train_step() for _ in range(2)]
    assert all(np.isfinite(v) for s in stats for v in s.values())
    assert seen and all(d == torch.bfloat16 for d in seen)
    batch = trainer.val_batches[0]
    with torch.no_grad(), trainer._autocast():
        x_hat, outputs = trainer.model(batch.y, FullPrecisionOperator(batch.op, "cpu"))
    assert x_hat.dtype == torch.complex64 and all(o.dtype == torch.complex64 for o in outputs)


def test_channels_last_trains_in_that_layout_and_resumes_exactly(tmp_path: Path, slices_path: Path) -> None:
    """run.channels_last: the convolutions' weights in channels_last, the same function as the default layout,
    and a resumed run (checkpoints store the weights contiguous) equal to an uninterrupted one."""
    run = {"channels_last": True}
    straight = Trainer(make_config(slices_path, tmp_path / "a", run=run, optim={"steps": 4}))
    assert straight.channels_last is True
    weight = straight.model.proximals[0].blocks[0].conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    plain = Trainer(make_config(slices_path, tmp_path / "p", optim={"steps": 4}))
    assert plain.channels_last is False
    batch = plain.val_batches[0]
    straight.model.eval(), plain.model.eval()  # no BN statistics update from this comparison
    with torch.no_grad():
        torch.testing.assert_close(straight.model(batch.y, batch.op)[0], plain.model(batch.y, batch.op)[0])
    straight.model.train()
    straight.fit()

    resumed = _assert_resume_matches(straight, slices_path, tmp_path / "b", 2, run=run, optim={"steps": 4})
    assert resumed.step == 4


def test_lambda_lr_scale_moves_the_cg_lambdas_at_their_own_rate(tmp_path: Path, slices_path: Path) -> None:
    """optim.lambda_lr_scale: the per-copy CG lambdas get lr x scale (Adam's first step moves each log lambda by
    about its group's lr, every other weight by at most the lr), and a resumed run equals an uninterrupted one."""
    over: dict[str, Any] = {
        "model": {"data_consistency": "cg", "cg_iterations": 2},
        "loss": {"lambda_gan": 0.0},
        "optim": {"lr": 1e-3, "steps": 1, "schedule": "none", "lambda_lr_scale": 50.0},
    }
    scaled = Trainer(make_config(slices_path, tmp_path / "s", **over))
    groups = scaled.opt_g.param_groups
    assert len(groups) == 2 and groups[1]["params"] == [scaled.model.log_lambda]
    assert groups[0]["lr"] == pytest.approx(1e-3) and groups[1]["lr"] == pytest.approx(0.05)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in scaled.model.parameters())
    before = {n: p.detach().clone() for n, p in scaled.model.named_parameters()}
    scaled.fit()
    for name, p in scaled.model.named_parameters():
        moved = (p.detach() - before[name]).abs().max().item()
        if name == "log_lambda":
            assert 0.04 < moved < 0.06
        else:
            assert moved < 1.1e-3, name
    plain = Trainer(
        make_config(slices_path, tmp_path / "p", **{**over, "optim": {**over["optim"], "lambda_lr_scale": 1}})
    )
    assert len(plain.opt_g.param_groups) == 1
    lam = plain.model.log_lambda.detach().clone()
    plain.fit()
    assert (plain.model.log_lambda.detach() - lam).abs().max().item() < 1.1e-3

    over["optim"]["steps"] = 4
    straight = Trainer(make_config(slices_path, tmp_path / "a", **over))
    straight.fit()
    _assert_resume_matches(straight, slices_path, tmp_path / "b", 2, **over)


@pytest.mark.parametrize(
    ("setting", "bf16", "expected"), [("auto", True, True), ("auto", False, False), (True, False, True)]
)
def test_channels_last_auto_follows_bf16(setting: bool | str, bf16: bool, expected: bool) -> None:
    assert resolve_channels_last(setting, bf16) is expected


def test_train_extra_adds_training_only_slices(tmp_path: Path, slices_path: Path) -> None:
    """[data].train_extra: slices of another file (another matrix, magnitude) join training, never validation."""
    volume = (np.random.default_rng(0).uniform(1, 200, (9, 40, 24))).astype(np.uint8)
    np.save(tmp_path / "t1.npy", volume)
    extra = [{"path": str(tmp_path / "t1.npy"), "slices": [1, 8], "exclude": [[3, 5]]}]
    trainer = Trainer(make_config(slices_path, tmp_path / "run", data={"train_extra": extra}))
    data = trainer.train_data
    assert data.data.shape == (N_SLICES + 5, SIZE, SIZE) and data.magnitude is not None
    assert data.indices.tolist() == [*range(8), *range(N_SLICES, N_SLICES + 5)]
    assert data.data.dtype == np.complex64 and data.magnitude.all()  # both files are magnitude: all get a phase
    assert trainer.data_summary["train_extra"][0]["file"] == "t1.npy"
    assert trainer.val_batches[0].x.shape[0] == 2
    stats = trainer.train_step()
    assert all(np.isfinite(v) for v in stats.values())
    bad = [{"path": str(tmp_path / "t1.npy"), "slice": [1, 8]}]
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.train_extra\[0\].*unknown key"):
        make_config(slices_path, tmp_path / "run", data={"train_extra": bad})
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.train_extra"):
        make_config(slices_path, tmp_path / "run", data={"train_extra": ["t1.npy"]})


def test_random_crop_trains_on_crops_and_validates_whole_slices(tmp_path: Path, slices_path: Path) -> None:
    trainer = Trainer(make_config(slices_path, tmp_path / "run", data={"crop": 16, "random_crop": True}))
    whole = np.load(slices_path).shape[1:]
    batch = trainer.train_data.batch([0, 1])
    assert tuple(batch.x.shape[-2:]) == (16, 16)
    assert tuple(trainer.val_batches[0].x.shape[-2:]) == tuple(whole)
    crops = {trainer.train_data.batch([0]).x.numpy().tobytes() for _ in range(6)}
    assert len(crops) > 1  # a new position (and mask) per draw
    assert "random 16x16 training crops" in trainer.data_summary["simulation"]


def test_init_weights_deepens_a_shallower_bundle(tmp_path: Path, slices_path: Path) -> None:
    """A bundle with fewer residual blocks per copy starts a deeper (and wider) run with the same function at
    step 0; a deeper bundle is refused."""
    no_gan = {"lambda_gan": 0.0}
    bundle = _two_step_bundle(slices_path, tmp_path / "a")
    shallow = load_bundle(bundle).model
    init = {"init_weights": str(bundle)}
    blocks = shallow.config.blocks + 1
    deep = Trainer(make_config(slices_path, tmp_path / "b", loss=no_gan, model={"blocks": blocks}, run=init))
    both = Trainer(
        make_config(slices_path, tmp_path / "c", loss=no_gan, model={"blocks": blocks, "features": 12}, run=init)
    )
    assert len(deep.model.proximals[0].blocks) == blocks
    x = torch.randn(1, 2, 16, 16)
    deep.model.eval()
    both.model.eval()
    with torch.no_grad():
        want = shallow.proximals[0](x)
        torch.testing.assert_close(deep.model.proximals[0](x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(both.model.proximals[0](x), want, rtol=1e-5, atol=1e-5)
    deep.fit()
    assert deep.step == deep.config.optim.steps
    with pytest.raises(CheckpointError, match=f"blocks: bundle {blocks}, run {blocks - 1}"):
        deeper = {"init_weights": str(tmp_path / "b" / "bundle")}
        Trainer(make_config(slices_path, tmp_path / "d", loss=no_gan, run=deeper))


def test_lr_scales_give_named_parameters_their_own_rate(tmp_path: Path, slices_path: Path) -> None:
    """optim.lr_scales: parameters whose name contains a pattern get lr x its scale (Adam's first step moves each by
    about its group's lr), the rest the lr; a pattern naming no parameter is refused; a resume equals a straight run."""
    over: dict[str, Any] = {
        "model": {"blocks": 2},
        "loss": {"lambda_gan": 0.0},
        "optim": {"lr": 1e-3, "steps": 1, "schedule": "cosine", "lr_scales": {"blocks.1.": 20.0}},
    }
    scaled = Trainer(make_config(slices_path, tmp_path / "s", **over))
    groups = scaled.opt_g.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 2e-2])
    names = {id(p): n for n, p in scaled.model.named_parameters()}
    assert groups[1]["params"] and all("blocks.1." in names[id(p)] for p in groups[1]["params"])
    assert not any("blocks.1." in names[id(p)] for p in groups[0]["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in scaled.model.parameters())
    before = {n: p.detach().clone() for n, p in scaled.model.named_parameters()}
    scaled.fit()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in scaled.model.named_parameters()}
    assert max(v for n, v in moved.items() if "blocks.1." in n) > 1.5e-2
    assert max(v for n, v in moved.items() if "blocks.1." not in n) < 1.1e-3
    assert load_bundle(tmp_path / "s" / "bundle").sidecar["training"]["lr_scales"] == {"blocks.1.": 20.0}

    with pytest.raises(TrainingConfigError, match=r"no parameter name contains 'blocks\.7\.'"):
        Trainer(make_config(slices_path, tmp_path / "t", **{**over, "optim": {"lr_scales": {"blocks.7.": 2.0}}}))

    over["optim"]["steps"] = 4
    straight = Trainer(make_config(slices_path, tmp_path / "a", **over))
    straight.fit()
    _assert_resume_matches(straight, slices_path, tmp_path / "b", 2, **over)
    plain = Trainer(make_config(slices_path, tmp_path / "c", **{**over, "optim": {"steps": 4}}))
    with pytest.raises(CheckpointError, match="lr_scales"):
        plain.resume(tmp_path / "b")
