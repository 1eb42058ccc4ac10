"""RGANCS reconstruction with a trained RecurrentProximalNet bundle."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

import torch

from ..adaptation import AdaptSettings, adapt_model
from ..errors import BundleMismatchError
from ..model.bundle import Bundle, load_bundle
from ..problem import Problem
from .base import Reconstructor, Result, batch_operator, group_by_shape, relative_residual, resolve_device
from .fast_paths import FastModel, FastPath

log = logging.getLogger(__name__)


def robust_scale(x: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """Per-slice scale [batch] = the given percentile of |x| (never zero)."""
    mag = x.abs().flatten(1)
    scale = torch.quantile(mag, percentile / 100.0, dim=1)
    fallback = mag.max(dim=1).values
    scale = torch.where(scale > 0, scale, fallback)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def default_batch_size(device: torch.device) -> int:
    """Slices per network call: 16 on a GPU; 1 on a CPU, where batching measured slower (docs/performance.md)."""
    return 16 if device.type == "cuda" else 1


class RGANCS(Reconstructor):
    """Batched RGANCS on CUDA when present (overridable), CPU otherwise.

    ``fast_path`` picks the inference optimisations (see :mod:`.fast_paths`; "auto" = the device's default);
    ``batch_size`` None (or 0) = the device's default (:func:`default_batch_size`).
    ``phase_average`` None (or 0) = the bundle's; N > 1 averages N global-phase rotations of each slice
    (:class:`~recon_plugin.model.recurrent.RecurrentProximalNet`), at N times the network's cost.
    ``adapt`` (steps > 0) fine-tunes a copy of the network on each slice's own measured k-space before
    reconstructing that slice (:mod:`recon_plugin.adaptation`; slices with fewer than ``adapt.min_coils`` coils,
    i.e. single-coil ones, are not adapted); the bundle's weights stay as they are. With
    ``adapt.scope`` "exam" one copy is adapted to all the slices of an exam that share a matrix and coil count
    (:meth:`for_exam`; a direct ``reconstruct_batch`` call is one exam) and its time is shared by those slices.

    Each slice is divided by a robust scale of its zero-filled image (as in
    training, from the bundle's sidecar), reconstructed, and scaled back.
    """

    name = "rgancs"

    def __init__(
        self,
        bundle: Bundle | str | Path,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        fast_path: str | FastPath = "auto",
        phase_average: int | None = None,
        adapt: AdaptSettings | None = None,
        flip_average: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.fast_path = fast_path if isinstance(fast_path, FastPath) else FastPath.parse(fast_path, self.device)
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if self.bundle.model.config.channels != 2:
            raise BundleMismatchError(
                f"bundle {self.bundle.name} is a {self.bundle.model.config.channels}-channel model; "
                "MR reconstruction needs a complex (2-channel) model"
            )
        self.fast = FastModel(self.bundle.model, self.fast_path, self.device)  # a private copy on the device
        for name, value in (("phase_average", phase_average), ("flip_average", flip_average)):  # None: the bundle's
            if value:
                try:
                    self.fast.net.config = dataclasses.replace(self.fast.net.config, **{name: int(value)})
                except ValueError as exc:
                    raise BundleMismatchError(f"{name} {value!r} for {self.bundle.name}: {exc}") from exc
        self.phase_average = self.fast.net.config.phase_average
        self.flip_average = self.fast.net.config.flip_average
        norm = self.bundle.normalisation
        if norm.get("kind") != "percentile":
            raise BundleMismatchError(f"unknown normalisation {norm!r} in bundle {self.bundle.name}")
        self.percentile = float(norm.get("percentile", 99.0))
        self.batch_size = max(1, int(batch_size)) if batch_size else default_batch_size(self.device)
        self.adapt = adapt or AdaptSettings()
        self._exam: dict[tuple, tuple[FastModel, dict]] | None = None  # set on an exam's copy (for_exam)

    def for_exam(self, problems: list[Problem]) -> RGANCS:
        """This reconstructor for the exam made of ``problems``: with ``adapt.scope`` "exam", a copy that holds one
        network adapted to each group of same-shape slices of the exam (all of that group's slices at once) and
        reconstructs with it; otherwise itself."""
        groups = {key: idx for key, idx in group_by_shape(problems).items() if self._adapts(key)}
        if self.adapt.scope != "exam" or not groups:
            return self
        exam = copy.copy(self)
        exam._exam = {key: self._adapted([problems[i] for i in idx]) for key, idx in groups.items()}
        return exam

    def _adapts(self, key: tuple) -> bool:
        """Whether slices of the shape group ``key`` (coils first) get an adapted network: adaptation is on and they
        have at least ``adapt.min_coils`` coils."""
        return self.adapt.enabled and key[0] >= self.adapt.min_coils

    @torch.inference_mode()
    def reconstruct_batch(self, problems: list[Problem]) -> list[Result]:
        if self.adapt.scope == "exam" and self._exam is None and (exam := self.for_exam(problems)) is not self:
            return exam.reconstruct_batch(problems)  # a call outside an exam is one exam
        results: list[Result | None] = [None] * len(problems)
        for key, indices in group_by_shape(problems).items():
            fast, adapted = self.fast, None
            if not self._adapts(key):
                pass  # the bundle's network: adaptation off, or too few coils
            elif self._exam is not None:  # the exam's copy for this shape (adapted now if the exam lacked the shape)
                if key not in self._exam:
                    self._exam[key] = self._adapted([problems[i] for i in indices])
                fast, adapted = self._exam[key]
            else:  # one adapted copy per slice, from that slice's own samples
                for i in indices:
                    one, summary = self._adapted([problems[i]])
                    results[i] = self._run([problems[i]], one, summary)[0]
                continue
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for i, result in zip(chunk, self._run([problems[i] for i in chunk], fast, adapted), strict=True):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _adapted(self, problems: list[Problem]) -> tuple[FastModel, dict]:
        """A fast model adapted to the measured k-space of same-shape ``problems`` (one slice, or an exam's group)
        (:func:`~recon_plugin.adaptation.adapt_model`), and its report's summary."""
        op, y = batch_operator(problems, self.device)
        scale = robust_scale(op.adjoint(y), self.percentile)
        y_norm = y / scale[:, None, None, None]
        net, report = adapt_model(self.bundle.model, y_norm, op, self.adapt, bf16=self.fast_path.bf16)
        net.config = dataclasses.replace(  # this reconstructor's inference settings
            net.config, phase_average=self.phase_average, flip_average=self.flip_average
        )
        log.info("adapted %s to %d slice(s): %s", self.bundle.name, len(problems), report.summary())
        return FastModel(net, self.fast_path, self.device), report.summary()

    def _run(self, group: list[Problem], fast: FastModel, adapted: dict | None) -> list[Result]:
        start = time.perf_counter()
        op, y = batch_operator(group, self.device)
        scale = robust_scale(op.adjoint(y), self.percentile)
        y_norm = y / scale[:, None, None, None]
        x = fast(y_norm, op)
        x = x * scale[:, None, None]
        residuals = relative_residual(op, x, y)
        images = x.cpu().numpy()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = (time.perf_counter() - start) / len(group)
        if adapted:  # the adaptation is part of the time: the slice's own, or its share of the exam's
            seconds += adapted["seconds"] / adapted["slices"]
        out = []
        for j, problem in enumerate(group):
            meta = {
                "method": "rgancs",
                "model": self.bundle.name,
                "weights_sha256": self.bundle.sha256,
                "device": str(self.device),
                "fast_path": self.fast_path.name,
                "phase_average": self.phase_average,
                "flip_average": self.flip_average,
                "seconds": seconds,
                "dc_residual": residuals[j],
                "acceleration": problem.acceleration,
                **problem.meta,
            }
            if adapted:
                meta["adapt"], meta["adapt_steps"], meta["adapt_split"] = adapted, adapted["steps"], adapted["split"]
                meta["adapt_scope"] = self.adapt.scope
            out.append(Result(image=images[j], meta=meta))
        return out
