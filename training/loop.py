"""The RGANCS training loop: generator + LSGAN discriminator, exact resume, validation, bundle.

Generator cost per minibatch (Mardani et al.)::

    fidelity_weight * sum_k ||y - A x_k||^2 + eta * (gamma l1 + (1 - gamma) l2)(x_hat, x)
        + lambda(t) * (1 - D(x_hat))^2

with lambda(t) ramping linearly from 0 to ``lambda_gan`` over ``gan_ramp_steps``
minibatches; discriminator cost (1 - D(x))^2 + D(x_hat)^2 on detached x_hat.
Per step the generator is updated first (D frozen), then the discriminator.

Mixed precision: with ``run.bf16`` the network runs under bf16 autocast (CUDA
or CPU) while every operator call (A, A^H, the data-consistency step) is
wrapped to run with autocast disabled in complex64, and the losses are
computed in fp32 outside autocast.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from recon_plugin.errors import BundleError
from recon_plugin.metrics import snr_db, ssim
from recon_plugin.model import Discriminator, ModelConfig, RecurrentProximalNet, load_bundle, save_bundle
from recon_plugin.model.deepen import deepen_state
from recon_plugin.model.precision import FullPrecisionOperator
from recon_plugin.model.widen import widen_state
from recon_plugin.physics import SenseOperator, SuperResolutionOperator, complex_to_channels
from recon_plugin.reconstructors import resolve_device

from . import distributed
from .bank import SimulationBank
from .checkpoint import (
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import DataConfig, OptimConfig, TrainConfig
from .data import Batch
from .datasets import SRBatch
from .errors import CheckpointError, TrainingConfigError
from .losses import data_fidelity, lsgan_discriminator, lsgan_generator, pixel_loss
from .real_validation import real_validation_cases, validate_real
from .run_log import RunLog
from .sources import build_sources

log = logging.getLogger(__name__)

#: Model settings without weights of their own: a fine-tuning run (``run.init_weights``) may change them.
SOLVER_SETTINGS = frozenset({"cg_iterations", "init_iterations", "cg_lambda", "output_gain"})

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
    "x0_snr_db",
    "x0_ssim",
    "real_snr_db",
    "real_ssim",
    "slices_per_s",
)

Callback = Callable[["Trainer", dict[str, float]], None]


def gan_weight(step: int, target: float, ramp_steps: int) -> float:
    """lambda(t): linear from 0 at step 0 to ``target`` at ``ramp_steps`` minibatches, constant after."""
    if target <= 0:
        return 0.0
    if ramp_steps <= 0:
        return float(target)
    return float(target) * min(1.0, max(0, step) / ramp_steps)


def lr_factor(schedule: str, steps: int, warmup: int, step: int) -> float:
    """The learning rate over ``optim.lr`` after ``step`` steps: a linear warm-up over ``warmup`` steps (from
    1 / warmup), then constant or a cosine to 0 at ``steps`` (the cosine counted from step 0, as without warm-up)."""
    rise = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "cosine":
        return rise * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    return rise


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    """``run.bf16``: true/false as given; "auto" = on CUDA, and on a CPU only with native bf16 instructions
    (emulated bf16 on an AVX2-only CPU was measured here 14-32x slower than fp32 for this network)."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return True
    from recon_plugin import cpu_features

    return cpu_features.native_bf16()


def resolve_channels_last(setting: bool | str, bf16: bool) -> bool:
    """``run.channels_last``: true/false as given; "auto" = together with bf16 (oneDNN's bf16 convolutions run in
    that layout; in fp32 it was measured slower on an AVX2 CPU)."""
    return bf16 if setting == "auto" else bool(setting)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match for a resume (run settings and data path may change). A model, data
    or optim field that a checkpoint predates counts as its default, the behaviour the checkpoint was trained with."""
    out = {k: dict(v) for k, v in config.items() if k in ("model", "data", "loss", "optim")}
    out["model"] = {**ModelConfig().to_dict(), **out.get("model", {})}
    out["optim"] = {**asdict(OptimConfig()), **out.get("optim", {})}
    out["data"] = {**asdict(DataConfig()), **out.get("data", {})}
    where = (
        "path",
        "paths",
        "val_path",
        "coil_kspace",
        "real_val_path",
        "bank_workers",
        "bank_nice",
        "real_val_cg_iterations",  # how the run is validated, not what it trains
    )
    for key in where:  # where and how, not what
        out["data"].pop(key, None)
    if out["data"].get("train_extra"):  # the files' names and slices, not where they lie
        out["data"]["train_extra"] = [
            {**{k: v for k, v in i.items() if k != "path"}, "file": Path(i["path"]).name}
            for i in out["data"]["train_extra"]
        ]
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
        self.dist = distributed.current()
        self.device = resolve_device(config.run.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.bf16 = resolve_bf16(config.run.bf16, self.device)
        self.channels_last = resolve_channels_last(config.run.channels_last, self.bf16)
        self.out = Path(config.run.out)
        self.checkpoint_dir = self.out / "checkpoints"

        self.sr = config.data.kind == "sr"
        #: Seed of this process's training data: ``data.seed + rank``, so replicas draw different batches.
        self.data_seed = config.data.seed + self.dist.rank
        sources = build_sources(config, seed_offset=self.dist.rank)
        self.train_data = sources.train
        self.val_batches = sources.val_batches
        self.data_summary = sources.summary
        self.real_val = real_validation_cases(config.data) if config.data.real_val_path else []
        self.bank = self._bank() if config.data.bank_batches else None

        torch.manual_seed(config.run.seed)
        self.model = RecurrentProximalNet(config.model).to(self.device)
        if config.run.init_weights:
            self._load_initial_weights(config.run.init_weights)
        if self.channels_last:  # the parameters' layout only: checkpoints and bundles store them contiguous
            self.model.to(memory_format=torch.channels_last)
        self.disc = (
            Discriminator(channels=config.model.channels).to(self.device) if config.loss.lambda_gan > 0 else None
        )
        self._g: torch.nn.Module = self.model
        self._d: torch.nn.Module | None = self.disc
        if self.dist.enabled:  # same initial weights everywhere (seeded, and DDP broadcasts rank 0's)
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self._g = DistributedDataParallel(self.model, device_ids=ids)
            if self.disc is not None:
                self._d = DistributedDataParallel(self.disc, device_ids=ids)
        o = config.optim
        self.opt_g = torch.optim.Adam(self._generator_groups(), lr=o.lr, betas=(o.beta1, o.beta2))
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
        self._reseed_data = False

    # ------------------------------------------------------------------ setup helpers
    def _generator_groups(self) -> list[dict[str, Any]]:
        """The generator's Adam parameter groups: one, or with ``optim.lambda_lr_scale`` != 1 a second group for the
        per-copy CG lambdas (stored as logarithms, which Adam moves by about the lr a step: at the network's lr they
        hardly leave their initial value), then one group per ``optim.lr_scales`` pattern (parameters whose name
        contains it, first pattern first) at lr x its scale. A pattern that names no parameter is refused."""
        o = self.config.optim
        log_lambda = getattr(self.model, "log_lambda", None)
        scales = o.lr_scales or {}
        if (o.lambda_lr_scale == 1.0 or log_lambda is None) and not scales:
            return [{"params": list(self.model.parameters())}]
        own_lambda = o.lambda_lr_scale != 1.0 and log_lambda is not None
        rest: list[torch.nn.Parameter] = []
        scaled: dict[str, list[torch.nn.Parameter]] = {pattern: [] for pattern in scales}
        for name, param in self.model.named_parameters():
            if own_lambda and param is log_lambda:
                continue
            pattern = next((p for p in scales if p in name), None)
            (rest if pattern is None else scaled[pattern]).append(param)
        unmatched = [p for p, params in scaled.items() if not params]
        if unmatched:
            raise TrainingConfigError(
                f"[optim].lr_scales: no parameter name contains {', '.join(map(repr, unmatched))}"
            )
        groups: list[dict[str, Any]] = [{"params": rest}]
        if own_lambda:
            groups.append({"params": [log_lambda], "lr": o.lr * o.lambda_lr_scale})
        groups += [{"params": params, "lr": o.lr * scales[p]} for p, params in scaled.items()]
        return groups

    def _load_initial_weights(self, path: str) -> None:
        """Start from a bundle's weights; its architecture must be this run's ``[model]`` (the solver settings in
        :data:`SOLVER_SETTINGS` may differ: they hold no weights). A shared-weights bundle may also start an
        independent-weights run: every copy starts as the shared network (untied), the same function at step 0; and a
        narrower bundle may start a wider run (:func:`~recon_plugin.model.widen.widen_state`) and a bundle with fewer
        residual blocks per copy a deeper one (:func:`~recon_plugin.model.deepen.deepen_state`), also the same
        function at step 0."""
        try:
            bundle = load_bundle(path)
        except BundleError as exc:
            raise CheckpointError(f"run.init_weights: {exc}") from exc
        ours = asdict(self.config.model)
        theirs = bundle.sidecar["model"]
        untie = bool(theirs.get("shared", True)) and not ours["shared"]
        widen = int(theirs.get("features", ours["features"])) < ours["features"]
        deepen = int(theirs.get("blocks", ours["blocks"])) < ours["blocks"]
        diffs = [
            f"{k}: bundle {theirs.get(k)!r}, run {v!r}"
            for k, v in ours.items()
            if theirs.get(k, v) != v
            and k not in SOLVER_SETTINGS
            and not (untie and k == "shared")
            and not (widen and k == "features")
            and not (deepen and k == "blocks")
        ]
        if diffs:
            raise CheckpointError(f"run.init_weights {path} has another architecture: {'; '.join(diffs)}")
        state = bundle.model.state_dict()
        if untie:
            shared = {k[len("proximals.0.") :]: v for k, v in state.items() if k.startswith("proximals.0.")}
            state = {k: v for k, v in state.items() if not k.startswith("proximals.")}
            for copy in range(self.config.model.copies):
                state.update({f"proximals.{copy}.{k}": v.clone() for k, v in shared.items()})
        if widen:
            fresh = {k: v.detach() for k, v in self.model.state_dict().items()}
            if deepen:  # widen the bundle's own blocks first, then add the new ones
                fresh = {k: v for k, v in fresh.items() if k in state}
            state = widen_state(state, fresh, int(theirs["features"]), ours["features"])
        if deepen:
            fresh = {k: v.detach() for k, v in self.model.state_dict().items()}
            state = deepen_state(state, fresh, int(theirs["blocks"]), ours["blocks"])
        self.model.load_state_dict(state, strict=True)
        how = ["shared network untied into every copy"] if untie else []
        how += [f"{theirs['features']} features widened to {ours['features']}, same function"] if widen else []
        how += [f"{theirs['blocks']} blocks a copy deepened to {ours['blocks']}, same function"] if deepen else []
        log.info("initial weights from %s%s", path, f" ({'; '.join(how)})" if how else "")

    def _bank(self) -> SimulationBank:
        d, m = self.config.data, self.config.model
        return SimulationBank(
            config=self.config.to_dict(),
            source=self.train_data,
            batch_size=self.config.optim.batch_size,
            seed=self.data_seed,
            batches=d.bank_batches,
            reuse=d.bank_reuse,
            workers=d.bank_workers,
            nice=d.bank_nice,
            init_iterations=m.init_iterations if m.init == "cg_sense" else 0,
            seed_offset=self.dist.rank,
        )

    def _scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        o = self.config.optim
        if o.warmup_steps > 0:  # a fresh Adam state on trained weights moves every weight by ~lr at once
            return torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, o.schedule, o.steps, o.warmup_steps))
        if o.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.steps)
        return None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(
        self, batch: Batch | SRBatch
    ) -> tuple[torch.Tensor, SenseOperator | SuperResolutionOperator, torch.Tensor, torch.Tensor | None]:
        """(y, op, x, network input x0 or None for A^H y) on the training device."""
        if isinstance(batch, SRBatch):
            return batch.y.to(self.device), batch.op, batch.x.to(self.device), batch.x0.to(self.device)
        x0 = None if batch.x0 is None else batch.x0.to(self.device)
        return batch.y.to(self.device), batch.op.to(self.device), batch.x.to(self.device), x0

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

    def save_checkpoint(self, gather: bool = True) -> Path | None:
        """Write a checkpoint of the current step into ``<out>/checkpoints``; keeps the newest few.

        Distributed: every rank must call this (``gather`` collects each rank's data RNG state into
        ``data_rng_ranks``); only rank 0 writes and gets the path, the others get None. With
        ``gather=False`` (an interrupt, when ranks may not meet) ranks > 0 are reseeded on resume.
        """
        ranks: list[Any] | None = None
        if self.dist.enabled and gather:
            ranks = [None] * self.dist.world_size
            dist.all_gather_object(ranks, self.train_data.rng.bit_generator.state)
        if not self.dist.is_main:
            return None
        state = self.state()
        if self.dist.enabled:
            state["data_rng_ranks"] = ranks
        path = save_checkpoint(checkpoint_path(self.checkpoint_dir, self.step), state)
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
            self._restore_data_rng(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{file} does not fit this model: {str(exc).splitlines()[0]}") from exc
        self.step = int(state["step"])
        if self._reseed_data:
            self.train_data.rng = np.random.default_rng([self.data_seed, self.step])
            log.warning("rank %d: no data RNG state for this rank in %s; reseeded", self.dist.rank, file)
        self.seconds = float(state.get("seconds", 0.0))
        self.metrics = dict(state.get("metrics") or {})
        log.info("resumed from %s at step %d", file, self.step)
        return self.step

    def _restore_data_rng(self, state: dict[str, Any]) -> None:
        """Rank 0 (or a single process) takes ``data_rng``; rank r takes ``data_rng_ranks[r]`` when present.

        Otherwise rank r is reseeded deterministically from (data.seed + r, step) after the step is known.
        """
        self._reseed_data = False
        if self.dist.rank == 0:
            self.train_data.rng.bit_generator.state = state["data_rng"]
            return
        ranks = state.get("data_rng_ranks")
        if isinstance(ranks, list | tuple) and len(ranks) == self.dist.world_size and ranks[self.dist.rank]:
            self.train_data.rng.bit_generator.state = ranks[self.dist.rank]
        else:
            self._reseed_data = True

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One minibatch: generator update (D frozen), then discriminator update."""
        cfg = self.config
        batch = self.bank.batch(self.step) if self.bank is not None else self.train_data.sample(cfg.optim.batch_size)
        y, op, x, x0 = self._to_device(batch)
        lam = gan_weight(self.step, cfg.loss.lambda_gan, cfg.loss.gan_ramp_steps)
        with self._autocast():
            x_hat, outputs = self._g(y, FullPrecisionOperator(op, self.device.type), x0)
        pixel = pixel_loss(x_hat, x, cfg.loss.gamma)
        loss_g = cfg.loss.eta * pixel
        stats = {"pixel": pixel.item(), "gan_weight": lam}
        if cfg.loss.fidelity_weight > 0:  # a zero-weight term is neither computed nor back-propagated
            fidelity = data_fidelity(outputs, y, op)
            loss_g = loss_g + cfg.loss.fidelity_weight * fidelity
            stats["fidelity"] = fidelity.item()
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
        if self._d is not None and self.disc is not None and self.opt_d is not None:
            self.disc.requires_grad_(True)
            with self._autocast():  # the generator's GAN term above uses the bare D: no gradient sync for it
                real = self._d(self._disc_input(x))
                fake = self._d(self._disc_input(x_hat.detach()))
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
        """Mean SNR / SSIM of the model and of the baseline on the fixed validation slices.

        The baseline is zero-filled (A^H y, keys ``zero_filled_*``) for MR and the approximate
        inverse x0 (keys ``x0_*``) for super-resolution.
        """
        refs, ests, bases = [], [], []
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for batch in self.val_batches:
                y, op, x, x0 = self._to_device(batch)
                with self._autocast():
                    x_hat, _ = self.model(y, FullPrecisionOperator(op, self.device.type), x0)
                refs += list(x.cpu().numpy())
                ests += list(x_hat.float().cpu().numpy() if not torch.is_complex(x_hat) else x_hat.cpu().numpy())
                if self._baseline is None:
                    bases += list((op.adjoint(y) if x0 is None else x0).cpu().numpy())
        self.model.train(was_training)
        if self._baseline is None:
            name = "x0" if self.sr else "zero_filled"
            self._baseline = {
                f"{name}_snr_db": float(np.mean([snr_db(r, b) for r, b in zip(refs, bases, strict=True)])),
                f"{name}_ssim": float(np.mean([ssim(r, b) for r, b in zip(refs, bases, strict=True)])),
            }
        self.metrics = {
            "snr_db": float(np.mean([snr_db(r, e) for r, e in zip(refs, ests, strict=True)])),
            "ssim": float(np.mean([ssim(r, e) for r, e in zip(refs, ests, strict=True)])),
            **self._baseline,
        }
        if self.real_val:
            d = self.config.data
            self.metrics.update(
                validate_real(self.model, self.real_val, d.percentile, self.device, d.real_val_cg_iterations)
            )
        return self.metrics

    # ------------------------------------------------------------------ logging
    def _open_csv(self) -> tuple[RunLog, RunLog]:
        """The run log (CSV + TensorBoard), as (file, writer) for the loop; ranks > 0 write nowhere."""
        if not self.dist.is_main:  # only rank 0 logs
            fh = open(os.devnull, "w")  # noqa: SIM115 - closed in fit()
            quiet = RunLog(fh, csv.DictWriter(fh, fieldnames=CSV_FIELDS, restval=""), None)
            return quiet, quiet
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
        run_log = RunLog(fh, writer, self.out / "tensorboard")
        return run_log, run_log

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
    def fit(self, resume: str | Path | None = None, max_seconds: float | None = None) -> dict[str, float]:
        """Train to ``optim.steps``, validating and checkpointing on schedule; writes the bundle.

        ``max_seconds`` ends this call (a chunk of a longer campaign) before the first step that would start
        after that much wall time (0: no step, e.g. to write the bundle of a resumed checkpoint): validation, a
        checkpoint and the bundle are written as at the end, and a later ``fit(resume=...)`` continues exactly.
        Returns the final validation metrics. On Ctrl-C or a KeyboardInterrupt from a callback, writes a
        checkpoint of the last completed step and re-raises KeyboardInterrupt.
        """
        try:
            return self._fit(resume, max_seconds)
        finally:
            if self.bank is not None:
                self.bank.close()

    def _fit(self, resume: str | Path | None, max_seconds: float | None) -> dict[str, float]:
        chunk_start = time.monotonic()
        if resume is not None:
            self.resume(resume)
        cfg, run = self.config, self.config.run
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        fh, writer = self._open_csv()
        self._stop_requested = False
        window: dict[str, float] = {}
        window_steps, window_seconds = 0, 0.0
        quiet = not (run.progress and self.dist.is_main)
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc="train", unit="step", disable=quiet)
        in_step = False
        try:
            with self._deferred_sigint():
                while self.step < cfg.optim.steps:
                    if max_seconds is not None and time.monotonic() - chunk_start >= max_seconds:
                        log.info("chunk time of %.0f s used at step %d", max_seconds, self.step)
                        break
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
                path = self.save_checkpoint(gather=False)
                if path is not None:
                    log.warning("interrupted at step %d; resume from %s", self.step, path)
            fh.close()
            raise
        except BaseException:
            bar.close()
            fh.close()
            raise
        bar.close()
        metrics = self._log_validation(writer, fh)
        fh.close()
        self.save_checkpoint()
        if self.dist.is_main:
            self.write_bundle()
        if self.dist.enabled:
            dist.barrier()  # the bundle exists before any rank returns
        return metrics

    def _log_validation(self, writer: RunLog, fh: RunLog) -> dict[str, float]:
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
            mask=(
                {"family": "none", "operator": "block average", "kernel": cfg.data.sr_kernel}
                if self.sr
                else {
                    "family": "mixture",
                    "mixture": cfg.data.mask_mixture or [f"{cfg.data.mask_family}:{cfg.data.acceleration:g}"],
                    "uniform_calib": cfg.data.uniform_calib or [16, 48],
                    "per_sample": True,
                }
                if cfg.data.simulation == "scanner"
                else {
                    "family": cfg.data.mask_family,
                    "acceleration": cfg.data.acceleration,
                    "per_sample": cfg.data.per_sample_masks,
                }
            ),
            normalisation=(
                {"kind": "none", "range": [0, 1], "input": f"{cfg.data.sr_steps} gradient steps of {cfg.data.sr_step}"}
                if self.sr
                else {"kind": "percentile", "percentile": cfg.data.percentile}
            ),
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
                    "lambda_lr_scale": cfg.optim.lambda_lr_scale,
                    "lr_scales": dict(cfg.optim.lr_scales or {}),
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
