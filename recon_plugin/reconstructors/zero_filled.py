"""Zero-filled reconstruction: A^H y, coil-combined with the SENSE maps."""

from __future__ import annotations

import time

import torch

from ..problem import Problem
from .base import Reconstructor, Result, batch_operator, group_by_shape, relative_residual


class ZeroFilled(Reconstructor):
    """The adjoint of the sampling: the baseline every other method must beat."""

    name = "zero_filled"

    def reconstruct_batch(self, problems: list[Problem]) -> list[Result]:
        results: list[Result | None] = [None] * len(problems)
        device = torch.device("cpu")
        for indices in group_by_shape(problems).values():
            start = time.perf_counter()
            group = [problems[i] for i in indices]
            op, y = batch_operator(group, device)
            x = op.adjoint(y)
            residuals = relative_residual(op, x, y)
            seconds = (time.perf_counter() - start) / len(group)
            for j, i in enumerate(indices):
                meta = {
                    "method": "zero_filled",
                    "seconds": seconds,
                    "dc_residual": residuals[j],
                    "acceleration": problems[i].acceleration,
                    **problems[i].meta,
                }
                results[i] = Result(image=x[j].numpy(), meta=meta)
        return results  # type: ignore[return-value]
