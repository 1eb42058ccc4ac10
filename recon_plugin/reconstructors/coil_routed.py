"""RGANCS with one bundle for single-coil slices and another for multi-coil slices.

A model trained on multi-coil data can lose to a single-coil model on single-coil exams (and the other way
round), so the gadgets route each slice by its coil count: slices with one coil go to ``single``, the rest
to ``multi``. Results come back in the order of the problems; their meta names the bundle that made them.
"""

from __future__ import annotations

import torch

from ..problem import Problem
from .base import Reconstructor, Result
from .fast_paths import FastPath
from .rgancs import RGANCS


class CoilRoutedRGANCS(Reconstructor):
    """``multi`` reconstructs slices with several coils, ``single`` slices with one."""

    name = "rgancs"

    def __init__(self, multi: RGANCS, single: RGANCS) -> None:
        self.multi = multi
        self.single = single

    @property
    def fast_path(self) -> FastPath:
        """The inference path (both models are built with the same gadget settings)."""
        return self.multi.fast_path

    @property
    def device(self) -> torch.device:
        """Where both models run."""
        return self.multi.device

    def route(self, problem: Problem) -> RGANCS:
        """The reconstructor that gets ``problem``."""
        return self.single if problem.coils == 1 else self.multi

    def for_exam(self, problems: list[Problem]) -> CoilRoutedRGANCS:
        """Each model prepared for the exam's slices it gets (:meth:`RGANCS.for_exam`); itself when neither changes."""
        multi = self.multi.for_exam([p for p in problems if self.route(p) is self.multi])
        single = self.single.for_exam([p for p in problems if self.route(p) is self.single])
        return self if multi is self.multi and single is self.single else CoilRoutedRGANCS(multi, single)

    def reconstruct_batch(self, problems: list[Problem]) -> list[Result]:
        results: list[Result | None] = [None] * len(problems)
        for target in (self.single, self.multi):
            indices = [i for i, p in enumerate(problems) if self.route(p) is target]
            if indices:
                for i, result in zip(indices, target.reconstruct_batch([problems[i] for i in indices]), strict=True):
                    results[i] = result
        return results  # type: ignore[return-value]
