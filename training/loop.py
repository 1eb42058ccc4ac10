"""The RGANCS training loop: generator + LSGAN discriminator, exact resume, validation, bundle.

Generator cost per minibatch (Mardani et al.)::

    fidelity_weight * sum_k ||y - A x_k||^2 + eta * (gamma l1 + (1 - gamma) l2)(x_hat, x)
        + lambda(t) * (1 - D(x_hat))^2

with lambda(t) ramping linearly from 0 to ``lambda_gan`` over ``gan_ramp_steps``
minibatches; discriminator cost (1 - D(x))^2 + D(x_hat)^2 on detached x_hat.
Per step the generator is updated first (D frozen), then the discriminator.

Mixed precision: with ``run.bf16`` on CUDA the network runs under bf16
autocast while every operator call (A, A^H, the data-consistency step) is
wrapped to run with autocast disabled in complex64, and the losses are
computed in fp32 outside autocast. On CPU the flag is ignored.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from recon_plugin.metrics import snr_db, ssim
from recon_plugin.model import Discriminator, RecurrentProximalNet, save_bundle
from recon_plugin.physics import SenseOperator, complex_to_channels
from recon_plugin.reconstructors import resolve_device

from .checkpoint import (
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .data import Batch, SimulatedSlices
from .errors import CheckpointError, TrainingConfigError
from .losses import data_fidelity, lsgan_discriminator, lsgan_generator, pixel_loss

log = logging.getLogger(__name__)

CSV_NAME = "log.csv"
CSV_FIELDS = (
    "step",
    "kind",
    "loss_g",
    "fidelity",
    "pixel",
    "gan_g",
    "loss_d",
    "gan_weight",
    "lr",
    "snr_db",
    "ssim",
    "zero_filled_snr_db",
    "zero_filled_ssim",
    "slices_per_s",
)
VAL_CHUNK = 8

Callback = Callable[["Trainer", dict[str, float]], None]


def gan_weight(step: int, target: float, ramp_steps: int) -> float:
    """lambda(t): linear from 0 at step 0 to ``target`` at ``ramp_steps`` minibatches, constant after."""
    if target <= 0:
        return 0.0
    if ramp_steps <= 0:
        return float(target)
    return float(target) * min(1.0, max(0, step) / ramp_steps)


class _FullPrecisionOperator:
    """Wraps an operator so that A, A^H and data consistency run in complex64 with autocast off."""

    def __init__(self, op: SenseOperator, device_type: str) -> None:
        self.op = op
        self.device_type = device_type

    def _off(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device_type, enabled=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._off():
            return self.op.forward(x.to(torch.complex64))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        with self._off():
            return self.op.adjoint(y)

    def gradient_step(self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        with self._off():
            a = alpha.float() if isinstance(alpha, torch.Tensor) else alpha
            return self.op.gradient_step(x.to(torch.complex64), y, a)

    def replace_sampled(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self._off():
            return self.op.replace_sampled(x.to(torch.complex64), y)


def _load_slices(config: TrainConfig) -> np.ndarray:
    path = Path(config.data.path)
    try:
        slices = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise TrainingConfigError(f"[data].path: cannot read slices from {path}: {exc}") from exc
    if slices.ndim != 3 or min(slices.shape) < 1:
        raise TrainingConfigError(f"[data].path: expected slices [n, ny, nx], got shape {slices.shape} in {path}")
    return np.asarray(slices)


def _split(n: int, config: TrainConfig) -> tuple[range, range]:
    d = config.data
    if d.train_range is None and d.val_range is None:
        n_val = max(1, math.ceil(n * d.val_fraction))
        if n - n_val < 1:
            raise TrainingConfigError(f"[data].val_fraction: {n} slices leave none for training")
        return range(0, n - n_val), range(n - n_val, n)
    if d.train_range is None or d.val_range is None:
        missing = "train_range" if d.train_range is None else "val_range"
        raise TrainingConfigError(f"[data].{missing}: give both train_range and val_range, or neither")
    train, val = range(*d.train_range), range(*d.val_range)
    for key, r in (("train_range", train), ("val_range", val)):
        if r.stop > n:
            raise TrainingConfigError(
                f"[data].{key}: {list(d.train_range if key == 'train_range' else d.val_range)} "
                f"exceeds the {n} slices in {d.path}"
            )
    if set(train) & set(val):
        raise TrainingConfigError("[data].val_range: overlaps train_range; validation slices must be held out")
    return train, val


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match for a resume (run settings and data path may change)."""
    out = {k: dict(v) for k, v in config.items() if k in ("model", "data", "loss", "optim")}
    out["data"].pop("path", None)
    if out["optim"].get("schedule") == "none":
        out["optim"].pop("steps", None)
    return out


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted({(s, k) for s in a for k in a[s]} | {(s, k) for s in b for k in b[s]})
    return [
        f"[{s}].{k}: {a.get(s, {}).get(k)!r} vs {b.get(s, {}).get(k)!r}"
        for s, k in keys
        if a.get(s, {}).get(k) != b.get(s, {}).get(k)
    ]


class Trainer:
    """Trains a RecurrentProximalNet (and an LSGAN discriminator when ``loss.lambda_gan > 0``).

    ``callbacks`` are called after every step with the step's losses; raising
    KeyboardInterrupt there (or pressing Ctrl-C) saves a checkpoint and exits.
    """

    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback] = ()) -> None:
        config.check()
        self.config = config
        self.callbacks = list(callbacks)
        self.device = resolve_device(config.run.device)
        self.bf16 = bool(config.run.bf16 and self.device.type == "cuda")
        if config.run.bf16 and not self.bf16:
            log.info("bf16 autocast is only used on CUDA; training in fp32 on %s", self.device)
        self.out = Path(config.run.out)
        self.checkpoint_dir = self.out / "checkpoints"

        slices = _load_slices(config)
        train_idx, val_idx = _split(len(slices), config)
        self.data_summary = {
            "source": Path(config.data.path).name,
            "kind": config.data.kind,
            "train_slices": len(train_idx),
            "validation_slices": len(val_idx),
            "train_range": [train_idx.start, train_idx.stop],
            "validation_range": [val_idx.start, val_idx.stop],
            "matrix": list(slices.shape[1:]),
            "complex": bool(np.iscomplexobj(slices)),
            "simulation": "single coil, smooth random phase for magnitude input"
            + (", flips/rotations" if config.data.augment else ""),
        }
        d = config.data
        self.train_data = SimulatedSlices(
            np.ascontiguousarray(slices[train_idx.start : train_idx.stop]),
            mask_family=d.mask_family,
            acceleration=d.acceleration,
            per_sample_masks=d.per_sample_masks,
            augment=d.augment,
            percentile=d.percentile,
            seed=d.seed,
        )
        val_source = SimulatedSlices(
            np.ascontiguousarray(slices[val_idx.start : val_idx.stop]),
            mask_family=d.mask_family,
            acceleration=d.acceleration,
            per_sample_masks=False,
            augment=False,
            percentile=d.percentile,
            seed=d.seed + 1,
        )
        # Fixed validation examples, built once: validation never touches a training RNG.
        self.val_batches = [
            val_source.batch(list(range(i, min(i + VAL_CHUNK, len(val_idx)))))
            for i in range(0, len(val_idx), VAL_CHUNK)
        ]

        torch.manual_seed(config.run.seed)
        self.model = RecurrentProximalNet(config.model).to(self.device)
        self.disc = (
            Discriminator(channels=config.model.channels).to(self.device) if config.loss.lambda_gan > 0 else None
        )
        o = config.optim
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
        self.opt_d = (
            torch.optim.Adam(self.disc.parameters(), lr=o.lr_d or o.lr, betas=(o.beta1, o.beta2))
            if self.disc is not None
            else None
        )
        self.sched_g = self._scheduler(self.opt_g)
        self.sched_d = self._scheduler(self.opt_d) if self.opt_d is not None else None
        self.step = 0
        self.seconds = 0.0
        self.metrics: dict[str, float] = {}
        self._baseline: dict[str, float] | None = None
        self._stop_requested = False

    # ------------------------------------------------------------------ setup helpers
    def _scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        if self.config.optim.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.config.optim.steps)
        return None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, SenseOperator, torch.Tensor]:
        return batch.y.to(self.device), batch.op.to(self.device), batch.x.to(self.device)

    def _disc_input(self, x: torch.Tensor) -> torch.Tensor:
        return complex_to_channels(x) if torch.is_complex(x) else x.unsqueeze(1)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to continue this run bit for bit."""
        return {
            "config": self.config.to_dict(),
            "data_summary": self.data_summary,
            "step": self.step,
            "seconds": self.seconds,
            "metrics": self.metrics,
            "model": self.model.state_dict(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "sched_g": self.sched_g.state_dict() if self.sched_g is not None else None,
            "sched_d": self.sched_d.state_dict() if self.sched_d is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "data_rng": self.train_data.rng.bit_generator.state,
        }

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step into ``<out>/checkpoints``; keeps the newest few."""
        path = save_checkpoint(checkpoint_path(self.checkpoint_dir, self.step), self.state())
        prune_checkpoints(self.checkpoint_dir, self.config.run.keep_checkpoints)
        return path

    def resume(self, path: str | Path) -> int:
        """Restore a checkpoint (file, or the newest in a run folder); returns its step.

        Raises CheckpointError when it was written for another architecture or
        training configuration.
        """
        file = resolve_checkpoint(path)
        state = load_checkpoint(file)
        try:
            theirs, ours = _comparable(state["config"]), _comparable(self.config.to_dict())
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{file} has no usable training configuration") from exc
        diffs = _differences(theirs, ours)
        if diffs:
            raise CheckpointError(f"{file} was written for another configuration: {'; '.join(diffs)}")
        if state.get("data_summary", {}).get("matrix") != self.data_summary["matrix"]:
            raise CheckpointError(f"{file} was trained on another matrix size: {state.get('data_summary')}")
        if (state.get("disc") is None) != (self.disc is None):
            raise CheckpointError(f"{file} and this run disagree on whether a discriminator is trained")
        try:
            self.model.load_state_dict(state["model"], strict=True)
            self.opt_g.load_state_dict(state["opt_g"])
            if self.disc is not None and self.opt_d is not None:
                self.disc.load_state_dict(state["disc"], strict=True)
                self.opt_d.load_state_dict(state["opt_d"])
            for sched, key in ((self.sched_g, "sched_g"), (self.sched_d, "sched_d")):
                if sched is not None:
                    sched.load_state_dict(state[key])
            torch.set_rng_state(state["torch_rng"])
            if self.device.type == "cuda" and state.get("cuda_rng"):
                torch.cuda.set_rng_state_all(list(state["cuda_rng"]))
            self.train_data.rng.bit_generator.state = state["data_rng"]
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{file} does not fit this model: {str(exc).splitlines()[0]}") from exc
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        self.metrics = dict(state.get("metrics") or {})
        log.info("resumed from %s at step %d", file, self.step)
        return self.step

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One minibatch: generator update (D frozen), then discriminator update."""
        cfg = self.config
        y, op, x = self._to_device(self.train_data.sample(cfg.optim.batch_size))
        lam = gan_weight(self.step, cfg.loss.lambda_gan, cfg.loss.gan_ramp_steps)
        with self._autocast():
            x_hat, outputs = self.model(y, _FullPrecisionOperator(op, self.device.type))
        fidelity = data_fidelity(outputs, y, op)
        pixel = pixel_loss(x_hat, x, cfg.loss.gamma)
        loss_g = cfg.loss.fidelity_weight * fidelity + cfg.loss.eta * pixel
        stats = {"fidelity": fidelity.item(), "pixel": pixel.item(), "gan_weight": lam}
        if self.disc is not None:
            self.disc.requires_grad_(False)
            with self._autocast():
                fake_scores = self.disc(self._disc_input(x_hat))
            gan_g = lsgan_generator(fake_scores.float())
            loss_g = loss_g + lam * gan_g
            stats["gan_g"] = gan_g.item()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if cfg.optim.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip)
        self.opt_g.step()
        stats["loss_g"] = loss_g.item()
        if self.disc is not None and self.opt_d is not None:
            self.disc.requires_grad_(True)
            with self._autocast():
                real = self.disc(self._disc_input(x))
                fake = self.disc(self._disc_input(x_hat.detach()))
            loss_d = lsgan_discriminator(real.float(), fake.float())
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            stats["loss_d"] = loss_d.item()
        stats["lr"] = self.opt_g.param_groups[0]["lr"]
        for sched in (self.sched_g, self.sched_d):
            if sched is not None:
                sched.step()
        self.step += 1
        return stats

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Mean SNR / SSIM of the model and of zero-filled on the fixed validation slices."""
        refs, ests, bases = [], [], []
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for batch in self.val_batches:
                y, op, x = self._to_device(batch)
                with self._autocast():
                    x_hat, _ = self.model(y, _FullPrecisionOperator(op, self.device.type))
                refs += list(x.cpu().numpy())
                ests += list(x_hat.float().cpu().numpy() if not torch.is_complex(x_hat) else x_hat.cpu().numpy())
                if self._baseline is None:
                    bases += list(op.adjoint(y).cpu().numpy())
        self.model.train(was_training)
        if self._baseline is None:
            self._baseline = {
                "zero_filled_snr_db": float(np.mean([snr_db(r, b) for r, b in zip(refs, bases, strict=True)])),
                "zero_filled_ssim": float(np.mean([ssim(r, b) for r, b in zip(refs, bases, strict=True)])),
            }
        self.metrics = {
            "snr_db": float(np.mean([snr_db(r, e) for r, e in zip(refs, ests, strict=True)])),
            "ssim": float(np.mean([ssim(r, e) for r, e in zip(refs, ests, strict=True)])),
            **self._baseline,
        }
        return self.metrics

    # ------------------------------------------------------------------ logging
    def _open_csv(self) -> tuple[Any, csv.DictWriter]:
        path = self.out / CSV_NAME
        kept: list[dict[str, str]] = []
        if path.is_file():  # drop rows written after the checkpoint we resumed from
            with open(path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= self.step]
        fh = open(path, "w", newline="")  # noqa: SIM115 - closed in fit()
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(kept)
        fh.flush()
        return fh, writer

    @contextlib.contextmanager
    def _deferred_sigint(self) -> Iterator[None]:
        """First Ctrl-C stops at the end of the current step (checkpoint written); a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning("interrupt: stopping after this step and writing a checkpoint (Ctrl-C again to abort)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # ------------------------------------------------------------------ the run
    def fit(self, resume: str | Path | None = None) -> dict[str, float]:
        """Train to ``optim.steps``, validating and checkpointing on schedule; writes the bundle.

        Returns the final validation metrics. On Ctrl-C or a KeyboardInterrupt
        from a callback, writes a checkpoint of the last completed step and
        re-raises KeyboardInterrupt.
        """
        if resume is not None:
            self.resume(resume)
        cfg, run = self.config, self.config.run
        self.out.mkdir(parents=True, exist_ok=True)
        fh, writer = self._open_csv()
        self._stop_requested = False
        window: dict[str, float] = {}
        window_steps, window_seconds = 0, 0.0
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc="train", unit="step", disable=not run.progress)
        in_step = False
        try:
            with self._deferred_sigint():
                while self.step < cfg.optim.steps:
                    start = time.perf_counter()
                    in_step = True
                    stats = self.train_step()
                    in_step = False
                    elapsed = time.perf_counter() - start
                    self.seconds += elapsed
                    window_seconds += elapsed
                    window_steps += 1
                    for k, v in stats.items():
                        window[k] = window.get(k, 0.0) + v
                    speed = window_steps * cfg.optim.batch_size / max(window_seconds, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss_g']:.4g}", slices_s=f"{speed:.1f}")
                    if run.log_every and (self.step % run.log_every == 0 or self.step == cfg.optim.steps):
                        row = {k: v / window_steps for k, v in window.items()}
                        row.update(step=self.step, kind="train", lr=stats["lr"], slices_per_s=speed)
                        writer.writerow(row)
                        fh.flush()
                        window, window_steps, window_seconds = {}, 0, 0.0
                    if run.validate_every and self.step % run.validate_every == 0 and self.step < cfg.optim.steps:
                        self._log_validation(writer, fh)
                    if run.checkpoint_every and self.step % run.checkpoint_every == 0:
                        self.save_checkpoint()
                    for callback in self.callbacks:
                        callback(self, stats)
                    if self._stop_requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            if in_step:
                log.warning("interrupted inside step %d; not checkpointing a half-updated state", self.step + 1)
            else:
                path = self.save_checkpoint()
                log.warning("interrupted at step %d; resume from %s", self.step, path)
            fh.close()
            raise
        bar.close()
        metrics = self._log_validation(writer, fh)
        fh.close()
        self.save_checkpoint()
        self.write_bundle()
        return metrics

    def _log_validation(self, writer: csv.DictWriter, fh: Any) -> dict[str, float]:
        metrics = self.validate()
        log.info("step %d validation: %s", self.step, {k: round(v, 4) for k, v in metrics.items()})
        writer.writerow({"step": self.step, "kind": "val", **metrics})
        fh.flush()
        return metrics

    def write_bundle(self, folder: str | Path | None = None) -> Path:
        """Write the generator as a bundle (default ``<out>/bundle``) with training settings in the sidecar."""
        cfg = self.config
        folder = Path(folder) if folder is not None else self.out / "bundle"
        gan = cfg.loss.lambda_gan > 0
        return save_bundle(
            self.model.eval(),
            folder,
            mask={
                "family": cfg.data.mask_family,
                "acceleration": cfg.data.acceleration,
                "per_sample": cfg.data.per_sample_masks,
            },
            normalisation={"kind": "percentile", "percentile": cfg.data.percentile},
            training_data=self.data_summary,
            extra={
                "training": {
                    "loss": "data fidelity + eta * gamma-mixed l1/l2"
                    + (" + lambda(t) * LSGAN" if gan else " (no GAN)"),
                    "steps": self.step,
                    "batch_size": cfg.optim.batch_size,
                    "lr": cfg.optim.lr,
                    "betas": [cfg.optim.beta1, cfg.optim.beta2],
                    "schedule": cfg.optim.schedule,
                    "clip": cfg.optim.clip,
                    "eta": cfg.loss.eta,
                    "gamma": cfg.loss.gamma,
                    "lambda_gan": cfg.loss.lambda_gan,
                    "gan_ramp_steps": cfg.loss.gan_ramp_steps,
                    "fidelity_weight": cfg.loss.fidelity_weight,
                    "seed": cfg.run.seed,
                    "seconds": round(self.seconds, 1),
                    "device": self.device.type,
                    "bf16": self.bf16,
                },
                "validation": self.metrics,
            },
        )
