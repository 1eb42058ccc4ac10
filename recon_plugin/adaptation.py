"""Scan-specific self-supervised adaptation: fine-tune a copy of the network on the scan's own k-space.

Training saw simulated scans only; the scan being reconstructed is real data, and its measured samples can teach
the network without a reference. Each step splits the measured samples of a slice at random into an input set
Theta and a loss set Lambda (``holdout`` of the measured samples outside a small centre box, which always stays in
Theta), reconstructs from Theta, and scores the prediction of the Lambda samples; the network's weights (and its CG
lambdas) move by Adam on that score. The loss weights every Lambda sample by the inverse of the mask's local
sampling density, so that the sparsely sampled outer k-space, which looks like what was not measured, counts as
much as the dense centre. After ``steps`` steps every slice of the group is reconstructed from all its samples with
the adapted copy; the bundle's model is never modified. The copy serves one slice (``scope`` "slice", the
default) or every slice of an exam with the same matrix and coils ("exam": one adaptation over all of them, its
time shared by the exam's slices; :meth:`recon_plugin.reconstructors.RGANCS.for_exam`).

It is the scan-specific zero-shot self-supervision of Yaman et al. (ZS-SSL, ICLR 2022) without its extra held-out
set: the step count and learning rate are fixed, chosen on training's real-data validation cases
(docs/model_study.md). It costs ``steps`` forward and backward passes of the network with ``splits`` slices each,
so it is off (0 steps) unless asked for.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .errors import InvalidInputError
from .model import RecurrentProximalNet
from .model.precision import FullPrecisionOperator
from .physics import SenseOperator

#: Learning-rate schedules of the adaptation's Adam steps.
SCHEDULES = ("constant", "cosine")
#: How measured samples are drawn into the loss set: one by one, by whole k-space lines, the two in turn, or
#: chosen by the coil count ("auto").
SPLITS = ("points", "lines", "mixed", "auto")
#: "auto" splits by points above this many coils and as "mixed" at or below it (docs/model_study.md).
AUTO_POINTS_ABOVE_COILS = 4
#: What one adapted copy serves: one slice, or every slice of an exam with the same matrix and coils.
SCOPES = ("slice", "exam")


@dataclass(frozen=True)
class AdaptSettings:
    """How to adapt: ``steps`` (0 = off), Adam ``lr``, the share of measured samples in the loss set
    (``holdout``), ``splits`` per step, the centre box kept in the input (``centre``: the samples less than that
    many pixels from the centre on both axes), the Gaussian width of the density estimate (``density_sigma``,
    k-space pixels), CG steps per copy while adapting (None = the model's own) and the ``seed`` of the splits.

    ``schedule``: "constant" ``lr``, or "cosine" from ``lr`` down to 0 at the last step. ``random_phase``: turn
    each split's k-space by a random global phase (the loss does not see it; the network, not phase-equivariant,
    does). ``split``: "points" draws measured samples into the loss set one by one; "lines", where the mask is
    made of whole k-space lines (Cartesian phase encoding), draws whole lines (the ``centre`` lines nearest the
    centre stay in the input), so the loss asks what the scan asks, a missing line; other masks go by points.
    "mixed" draws the splits by points and by lines in turn (points first, counted across steps). "auto" (the
    default) is "points" for slices with more than ``AUTO_POINTS_ABOVE_COILS`` coils and "mixed" for that many or
    fewer. ``scope``: "slice" adapts one copy to each slice; "exam" one copy to all the slices of an exam that share
    a matrix and coil count (each step draws ``splits`` of them at random), so ``steps`` are spent once per exam.
    Slices with fewer than ``min_coils`` coils are not adapted (the reconstructor runs its own network on them): on
    single-coil slices adapting lost 0.38-1.18 dB on every slice measured (docs/model_study.md)."""

    steps: int = 0
    lr: float = 8e-4  # above 4e-4 on five of the seven real evaluation sets at 160 steps (docs/model_study.md)
    holdout: float = 0.4
    splits: int = 1
    centre: int = 6
    density_sigma: float = 6.0
    cg_iterations: int | None = None
    seed: int = 0
    schedule: str = "constant"
    random_phase: bool = False
    split: str = "auto"
    scope: str = "slice"
    min_coils: int = 2

    def __post_init__(self) -> None:
        checks = (
            ("steps", self.steps >= 0, "an integer >= 0"),
            ("lr", self.lr > 0 and np.isfinite(self.lr), "a finite number > 0"),
            ("holdout", 0 < self.holdout < 1, "in (0, 1)"),
            ("splits", self.splits >= 1, "an integer >= 1"),
            ("centre", self.centre >= 0, "an integer >= 0"),
            ("density_sigma", self.density_sigma > 0, "> 0"),
            ("cg_iterations", self.cg_iterations is None or self.cg_iterations >= 1, "None or an integer >= 1"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("split", self.split in SPLITS, f"one of {', '.join(SPLITS)}"),
            ("scope", self.scope in SCOPES, f"one of {', '.join(SCOPES)}"),
            ("min_coils", self.min_coils >= 1, "an integer >= 1"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise InvalidInputError(f"adaptation {name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def enabled(self) -> bool:
        """True when there is anything to do (steps > 0)."""
        return self.steps > 0


@dataclass
class AdaptReport:
    """What one adaptation did: the loss of every step (relative weighted l2 on the loss sets), its time, the
    split it used ("auto" resolved by the coil count) and the number of slices it adapted to."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    split: str | None = None
    slices: int = 1

    def summary(self) -> dict[str, Any]:
        """Steps, first and last loss (mean of the first / last five steps), seconds, split and slices, for result
        metadata."""
        head, tail = self.losses[:5], self.losses[-5:]
        return {
            "steps": len(self.losses),
            "loss_first": float(np.mean(head)) if head else None,
            "loss_last": float(np.mean(tail)) if tail else None,
            "seconds": self.seconds,
            "split": self.split,
            "slices": self.slices,
        }


def loss_weights(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Inverse local sampling density of a 2D mask (Gaussian-smoothed), scaled to mean 1 over the measured samples."""
    density = gaussian_filter(mask.astype(np.float64), sigma, mode="wrap") + 1e-3
    weights = 1.0 / density
    return (weights / weights[mask].mean()).astype(np.float32)


def loss_candidates(y: np.ndarray, mask: np.ndarray, centre: int) -> np.ndarray:
    """Measured samples that may go to a loss set: not in the centre box (less than ``centre`` pixels from the
    centre on both axes) and not zero in every coil (a zero there is a gap in the data, not a measurement)."""
    ny, nx = mask.shape
    yy, xx = np.ogrid[:ny, :nx]
    box = (np.abs(yy - ny // 2) < centre) & (np.abs(xx - nx // 2) < centre)
    return mask & ~box & (np.abs(y).sum(0) > 0)


def line_axis(mask: np.ndarray) -> int | None:
    """0 when every sampled row of the 2D ``mask`` is sampled whole (the mask is a set of rows), 1 for columns,
    None when it is neither (radial, Poisson-disc and other 2D patterns)."""
    for axis in (0, 1):
        lines = mask if axis == 0 else mask.T
        sampled = lines.any(axis=1)
        if sampled.any() and lines[sampled].all() and not sampled.all():
            return axis
    return None


def resolve_split(split: str, coils: int) -> str:
    """The split an adaptation of slices with ``coils`` coils uses: ``split`` itself unless it is "auto", which is
    "points" above ``AUTO_POINTS_ABOVE_COILS`` coils and "mixed" at or below it."""
    if split != "auto":
        return split
    return "points" if coils > AUTO_POINTS_ABOVE_COILS else "mixed"


def loss_set(
    candidates: np.ndarray, axis: int | None, settings: AdaptSettings, rng: np.random.Generator, index: int = 0
) -> np.ndarray:
    """One random loss set (the ``index``-th split of an adaptation): a ``holdout`` share of the candidate samples, by
    lines along ``axis`` when the split is "lines" (or "mixed" and ``index`` is odd) and the mask is made of lines
    (the ``centre`` lines nearest the centre never), else by points."""
    if settings.split == "auto":
        raise InvalidInputError('loss_set needs a resolved split: call resolve_split for "auto" first')
    by_lines = settings.split == "lines" or (settings.split == "mixed" and index % 2 == 1)
    if not by_lines or axis is None:
        return candidates & (rng.random(candidates.shape) < settings.holdout)
    n = candidates.shape[axis]
    picked = rng.random(n) < settings.holdout
    picked[np.abs(np.arange(n) - n // 2) < settings.centre] = False
    return candidates & (picked[:, None] if axis == 0 else picked[None, :])


def adapt_model(
    model: RecurrentProximalNet,
    y: torch.Tensor,
    op: SenseOperator,
    settings: AdaptSettings,
    bf16: bool = False,
    on_step: Callable[[int, RecurrentProximalNet], None] | None = None,
) -> tuple[RecurrentProximalNet, AdaptReport]:
    """A copy of ``model`` adapted to the slices ``y`` [batch, coils, ny, nx] (normalised as the network expects)
    under ``op``; ``bf16`` runs the network under bf16 autocast with the operator in full precision. ``on_step``
    (step number from 1, the copy in train mode) is called after every step, e.g. to score the copy as it goes."""
    if y.ndim != 4:
        raise InvalidInputError(f"adaptation needs k-space [batch, coils, ny, nx], got {tuple(y.shape)}")
    report = AdaptReport(slices=int(y.shape[0]))
    with torch.inference_mode(False), torch.enable_grad():
        net = copy.deepcopy(model).to(y.device)
        if not settings.enabled:
            return net.eval(), report
        start = time.perf_counter()
        device = y.device
        y = y.clone()
        masks = op.mask.expand(y.shape[0], *op.shape).cpu().numpy()
        maps = None if op.maps is None else op.maps.clone().expand(y.shape[0], -1, -1, -1)
        y_np = y.cpu().numpy()
        candidates = [loss_candidates(y_np[i], masks[i], settings.centre) for i in range(len(masks))]
        axes = [line_axis(m) for m in masks]
        weights = torch.from_numpy(np.stack([loss_weights(m, settings.density_sigma) for m in masks])).to(device)
        if not any(c.any() for c in candidates):
            raise InvalidInputError("adaptation: no measured sample outside the centre box to learn from")
        settings = replace(settings, split=resolve_split(settings.split, y.shape[1]))
        report.split = settings.split
        cg = settings.cg_iterations or net.config.cg_iterations
        net.config = replace(net.config, cg_iterations=cg)
        net.train()
        optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.steps)
            if settings.schedule == "cosine"
            else None
        )
        rng = np.random.default_rng(settings.seed)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        for step in range(settings.steps):
            picks = rng.integers(len(masks), size=settings.splits)
            first = step * settings.splits  # splits are numbered across steps, so "mixed" alternates with 1 a step
            lam = np.stack([loss_set(candidates[i], axes[i], settings, rng, first + k) for k, i in enumerate(picks)])
            theta = masks[picks] & ~lam
            lam_t, theta_t = torch.from_numpy(lam).to(device), torch.from_numpy(theta).to(device)
            idx = torch.from_numpy(picks).to(device)
            sub_maps = None if maps is None else maps[idx]
            op_theta = SenseOperator(theta_t, sub_maps)
            y_pick = y[idx]
            if settings.random_phase:
                turn = torch.from_numpy(rng.uniform(0, 2 * np.pi, size=len(picks))).to(device)
                y_pick = y_pick * torch.polar(torch.ones_like(turn), turn).to(y.dtype)[:, None, None, None]
            with autocast:
                x, _ = net(
                    y_pick * theta_t[:, None], FullPrecisionOperator(op_theta, device.type) if bf16 else op_theta
                )
            w = weights[idx][:, None] * lam_t[:, None]
            residual = SenseOperator(lam_t, sub_maps).forward(x.to(torch.complex64)) - y_pick * lam_t[:, None]
            num = (w * residual.abs().square()).flatten(1).sum(1)
            den = (w * y_pick.abs().square()).flatten(1).sum(1).clamp_min(1e-12)
            loss = (num / den).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            report.losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(report.losses), net)
        net.config = replace(net.config, cg_iterations=model.config.cg_iterations)
        report.seconds = time.perf_counter() - start
        return net.eval(), report
