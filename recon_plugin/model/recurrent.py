"""RecurrentProximalNet: K copies of the ResNet proximal, each followed by data consistency."""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Literal, Protocol

import torch
from torch import nn

from ..physics import channels_to_complex, complex_to_channels
from .proximal import NORMS, Norm, OutputActivation, ResNetProximal

DataConsistency = Literal["gradient", "exact", "cg"]
InitialImage = Literal["adjoint", "cg_sense"]
DATA_CONSISTENCIES = ("gradient", "exact", "cg")
INITIAL_IMAGES = ("adjoint", "cg_sense")
#: flip_average N -> the mirrorings (image axes flipped) whose mean is each copy's G at inference.
FLIPS: dict[int, tuple[tuple[int, ...], ...]] = {1: ((),), 2: ((), (-1,)), 4: ((), (-1,), (-2,), (-2, -1))}


class ForwardModel(Protocol):
    """What the network needs of an operator (SenseOperator, SuperResolutionOperator)."""

    def adjoint(self, y: torch.Tensor) -> torch.Tensor: ...

    def gradient_step(self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a RecurrentProximalNet; stored in every bundle's sidecar."""

    copies: int = 10
    blocks: int = 1
    features: int = 128
    shared: bool = True
    data_consistency: DataConsistency = "gradient"
    channels: int = 2
    output_activation: OutputActivation = "linear"
    cg_iterations: int = 5
    cg_lambda: float = 0.1
    init: InitialImage = "adjoint"
    init_iterations: int = 10
    global_skip: bool = False
    norm: Norm = "batch"
    output_gain: bool = False
    #: Inference only: average N passes over the data rotated by the global phases e^{2 pi i k / N} (1 = one pass).
    phase_average: int = 1
    #: Inference only: each copy's G is the mean over 1, 2 or 4 mirrorings of its input (none; left-right;
    #: left-right, up-down and both), each mirrored back (see :meth:`RecurrentProximalNet.denoise`).
    flip_average: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):  # a sidecar is JSON: "32" or 32.0 where an int belongs is an error, not a guess
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            else:
                ok = isinstance(value, str)
            if not ok:
                raise ValueError(f"{f.name} must be a {type(default).__name__}, got {value!r}")
        if self.copies < 1 or self.blocks < 0 or self.features < 1:
            raise ValueError(f"copies, features must be >= 1 and blocks >= 0, got {self}")
        if self.data_consistency not in DATA_CONSISTENCIES:
            raise ValueError(
                f"data_consistency must be one of {', '.join(DATA_CONSISTENCIES)}, got {self.data_consistency!r}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.init not in INITIAL_IMAGES:
            raise ValueError(f"init must be one of {', '.join(INITIAL_IMAGES)}, got {self.init!r}")
        if self.cg_iterations < 1 or self.init_iterations < 1:
            raise ValueError(
                f"cg_iterations and init_iterations must be >= 1, got {self.cg_iterations}, {self.init_iterations}"
            )
        if not (math.isfinite(self.cg_lambda) and self.cg_lambda > 0):
            raise ValueError(f"cg_lambda (the initial lambda) must be a positive number, got {self.cg_lambda}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 (magnitude) or 2 (real, imaginary), got {self.channels}")
        if self.phase_average < 1 or (self.phase_average > 1 and self.channels != 2):
            raise ValueError(
                f"phase_average must be >= 1, and 1 for a magnitude (1-channel) model; got {self.phase_average}"
            )
        if self.flip_average not in FLIPS:
            raise ValueError(f"flip_average must be one of {', '.join(map(str, FLIPS))}, got {self.flip_average}")

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


class RecurrentProximalNet(nn.Module):
    """x_0 = A^H y; x_{k+1} = DC_k(G_k(x_k)) for k < copies; returns x_K and every x_k.

    ``shared``: one G for all copies (recurrent); otherwise one G per copy.
    ``data_consistency``: "gradient" is z + alpha_k A^H (y - A z) with a learned
    step per copy (the paper's); "exact" replaces the sampled k-space of z by y; "cg" is the
    proximal solve x = argmin ||A x - y||^2 + lambda_k ||x - z||^2 by ``cg_iterations`` CG steps
    on (A^H A + lambda_k I), with lambda_k > 0 learned per copy (stored as its logarithm), which
    inverts a multi-coil SENSE operator where one gradient step cannot.
    ``init``: x_0 = A^H y ("adjoint") or ``init_iterations`` steps of CG-SENSE ("cg_sense").
    ``output_gain``: scale x_K by the real gain that best fits the measured samples (:func:`data_gain`); it has
    no weights, and corrects the network's overall shrinkage of the image's intensity.
    ``phase_average`` N > 1 (eval mode only): the mean of N passes over the data rotated by e^{2 pi i k / N}, each
    rotated back. The SENSE model commutes with a global phase, so every pass is a valid reconstruction; the
    network is only approximately phase-equivariant (it learned that from augmentation), so the mean is a small
    ensemble at N times the cost.
    ``flip_average`` N in (2, 4) (eval mode only): each copy's G is replaced by the mean of g^-1 G(g x) over N
    mirrorings g of the image (:data:`FLIPS`), so G becomes exactly mirror-equivariant; the data consistency is
    untouched. N times the CNN's cost, batched.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides: object) -> None:
        super().__init__()
        base = config or ModelConfig()
        self.config = ModelConfig(**{**base.to_dict(), **overrides}) if overrides else base
        c = self.config
        count = 1 if c.shared else c.copies
        self.proximals = nn.ModuleList(
            ResNetProximal(c.channels, c.features, c.blocks, c.output_activation, c.global_skip, c.norm)
            for _ in range(count)
        )
        self.alpha = nn.Parameter(torch.ones(c.copies)) if c.data_consistency == "gradient" else None
        self.log_lambda = (
            nn.Parameter(torch.full((c.copies,), math.log(c.cg_lambda))) if c.data_consistency == "cg" else None
        )

    @property
    def lambdas(self) -> torch.Tensor | None:
        """The per-copy lambda of "cg" data consistency (None for the other modes)."""
        return None if self.log_lambda is None else self.log_lambda.exp()

    def proximal(self, k: int) -> ResNetProximal:
        """The G used by copy ``k``."""
        return self.proximals[0 if self.config.shared else k]

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        return complex_to_channels(x) if self.config.channels == 2 else x.real.unsqueeze(1)

    def _from_net(self, x: torch.Tensor) -> torch.Tensor:
        return channels_to_complex(x) if self.config.channels == 2 else x[:, 0].float()

    def forward(
        self, y: torch.Tensor, op: ForwardModel, x0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Reconstruct from measurements ``y``; returns (final image, outputs of every copy)."""
        n = self.config.phase_average
        if n == 1 or self.training:
            return self._forward(y, op, x0)
        if not torch.is_complex(y):
            raise TypeError(f"phase_average needs complex measurements, got {y.dtype}")
        x0 = self._initial(y, op) if x0 is None else x0  # linear in y: computed once, turned with the data
        final: torch.Tensor | None = None
        outputs: list[torch.Tensor] = []
        for k in range(n):
            turn = torch.tensor(cmath.exp(2j * math.pi * k / n), dtype=y.dtype, device=y.device)
            x, xs = self._forward(y * turn, op, x0 * turn)
            x, xs = x * turn.conj(), [v * turn.conj() for v in xs]
            final = x if final is None else final + x
            outputs = xs if not outputs else [a + b for a, b in zip(outputs, xs, strict=True)]
        assert final is not None
        return final / n, [v / n for v in outputs]

    def _forward(
        self, y: torch.Tensor, op: ForwardModel, x0: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        c = self.config
        x = self._initial(y, op) if x0 is None else x0
        outputs: list[torch.Tensor] = []
        for k in range(c.copies):
            z = self.denoise(k, x)
            if self.alpha is not None:
                x = op.gradient_step(z, y, self.alpha[k])
            elif self.log_lambda is not None:
                x = self._require(op, "regularised_solve")(z, y, self.log_lambda[k].exp(), c.cg_iterations)
            else:
                replace = getattr(op, "replace_sampled", None)
                if replace is None:
                    raise TypeError(f"{type(op).__name__} has no exact data consistency; use 'gradient'")
                x = replace(z, y)
            outputs.append(x)
        if c.output_gain:
            x = data_gain(x, y, op) * x
            outputs[-1] = x
        return x, outputs

    def denoise(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Copy ``k``'s G on the complex image ``x`` (mirror-averaged per ``flip_average`` in eval mode)."""
        flips = FLIPS[1 if self.training else self.config.flip_average]
        if len(flips) == 1:
            return self._from_net(self.proximal(k)(self._to_net(x)))
        mirrored = torch.cat([x.flip(dims) if dims else x for dims in flips])
        z = self._from_net(self.proximal(k)(self._to_net(mirrored))).chunk(len(flips))
        return torch.stack([v.flip(dims) if dims else v for v, dims in zip(z, flips, strict=True)]).mean(0)

    def _initial(self, y: torch.Tensor, op: ForwardModel) -> torch.Tensor:
        """x_0: ``init_iterations`` CG-SENSE steps or A^H y."""
        if self.config.init == "cg_sense":
            # no weights in the initial image: without a gradient to y there is nothing to record for backward
            with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
                return self._require(op, "cg_sense")(y, self.config.init_iterations)
        return op.adjoint(y)

    def _require(self, op: object, method: str) -> Callable[..., torch.Tensor]:
        fn = getattr(op, method, None)
        if fn is None:
            raise TypeError(
                f"{type(op).__name__} has no {method}; it cannot run {self.config.data_consistency!r} / "
                f"{self.config.init!r} data consistency"
            )
        return fn


def data_gain(x: torch.Tensor, y: torch.Tensor, op: ForwardModel) -> torch.Tensor:
    """Per slice, the real c minimising ||c A x - y||^2 over the measured samples: Re<A x, y> / ||A x||^2, shaped
    to broadcast over ``x``. One scalar fitted to every sample of a slice, so noise hardly moves it; 1 where
    A x is zero or the fit is not finite."""
    forward = getattr(op, "forward", None)
    if forward is None:
        raise TypeError(f"{type(op).__name__} has no forward; it cannot fit an output gain")
    ax = forward(x)
    dims = tuple(range(1, ax.ndim))
    num = (ax.conj() * y).real.sum(dims) if ax.is_complex() else (ax * y).sum(dims)
    den = (ax.abs() ** 2).sum(dims)
    gain = num / den
    gain = torch.where(torch.isfinite(gain) & (den > 0), gain, torch.ones_like(gain))
    return gain.reshape(-1, *([1] * (x.ndim - 1))).to(x.real.dtype if x.is_complex() else x.dtype)
