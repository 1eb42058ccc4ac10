"""Keep the forward model in full precision while the network runs under bf16 autocast."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..physics import SenseOperator, SuperResolutionOperator


class FullPrecisionOperator:
    """Wraps an operator so that A, A^H and data consistency run in complex64 with autocast off.

    A real operator (super-resolution) runs in float32 instead.
    """

    def __init__(self, op: SenseOperator | SuperResolutionOperator, device_type: str) -> None:
        self.op = op
        self.device_type = device_type
        self.dtype = torch.float32 if isinstance(op, SuperResolutionOperator) else torch.complex64

    def _off(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device_type, enabled=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._off():
            return self.op.forward(x.to(self.dtype))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        with self._off():
            return self.op.adjoint(y)

    def gradient_step(self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        with self._off():
            a = alpha.float() if isinstance(alpha, torch.Tensor) else alpha
            return self.op.gradient_step(x.to(self.dtype), y, a)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        with self._off():
            return self.op.normal(x.to(self.dtype))

    def regularised_solve(
        self, z: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float, iterations: int = 5
    ) -> torch.Tensor:
        with self._off():
            lam = lam.float() if isinstance(lam, torch.Tensor) else lam
            return self.op.regularised_solve(z.to(self.dtype), y, lam, iterations)

    def cg_sense(self, y: torch.Tensor, iterations: int = 10, lam: float = 0.0) -> torch.Tensor:
        with self._off():
            return self.op.cg_sense(y, iterations, lam)

    def replace_sampled(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self._off():
            return self.op.replace_sampled(x.to(torch.complex64), y)
