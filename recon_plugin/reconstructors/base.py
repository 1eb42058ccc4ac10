"""The one reconstructor interface: ``reconstruct(problem) -> Result``."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DeviceError
from ..physics import SenseOperator
from ..problem import Problem


@dataclass
class Result:
    """A reconstructed complex image [ny, nx] with what produced it (method, seconds, residual, ...)."""

    image: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class Reconstructor(abc.ABC):
    """Turns Problems into Results; subclasses set ``name`` and implement ``reconstruct_batch``."""

    name: str = "base"

    def reconstruct(self, problem: Problem) -> Result:
        """Reconstruct one slice."""
        return self.reconstruct_batch([problem])[0]

    def for_exam(self, problems: list[Problem]) -> Reconstructor:
        """The reconstructor for the exam made of ``problems`` (all of them, before any is reconstructed): this one,
        unless a subclass prepares something once per exam (RGANCS adapted to the exam)."""
        return self

    @abc.abstractmethod
    def reconstruct_batch(self, problems: list[Problem]) -> list[Result]:
        """Reconstruct several slices; results in the same order."""


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """'auto'/None picks CUDA when present, else CPU; an unavailable explicit device is an error."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(requested, torch.device):
        device = requested
    else:
        try:
            device = torch.device(str(requested))
        except RuntimeError:  # torch's own parse error lists every backend it knows; name ours instead
            raise DeviceError(f"unsupported device {requested!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} was asked for but no CUDA GPU is reachable; use 'cpu' or 'auto'")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {requested!r}; use 'cpu', 'cuda' or 'auto'")
    return device


def batch_operator(problems: list[Problem], device: torch.device) -> tuple[SenseOperator, torch.Tensor]:
    """Stack same-shape problems into one SENSE operator and k-space tensor [batch, coils, ny, nx]."""
    mask = torch.from_numpy(np.stack([p.mask for p in problems])).to(device)
    y = torch.from_numpy(np.stack([p.kspace for p in problems])).to(device)
    maps_list = [p.coil_maps() for p in problems]
    maps = None if maps_list[0] is None else torch.from_numpy(np.stack(maps_list)).to(device)
    return SenseOperator(mask, maps), y


def relative_residual(op: SenseOperator, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Data-consistency residual ||A x - y|| / ||y|| per slice."""
    num = torch.linalg.vector_norm((op.forward(x) - y).flatten(1), dim=1)
    den = torch.linalg.vector_norm(y.flatten(1), dim=1)
    return (num / den).tolist()


def group_by_shape(problems: list[Problem]) -> dict[tuple[int, int, int, bool], list[int]]:
    """Indices of problems that can share a batch (same coils, matrix, maps or not)."""
    groups: dict[tuple[int, int, int, bool], list[int]] = {}
    for i, p in enumerate(problems):
        key = (p.coils, *p.shape, p.coils > 1 or p.maps is not None)
        groups.setdefault(key, []).append(i)
    return groups
