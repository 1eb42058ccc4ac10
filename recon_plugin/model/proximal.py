"""The ResNet proximal G of RGANCS: residual blocks then a 1x1 convolutional head."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

OutputActivation = Literal["linear", "sigmoid", "tanh"]
Norm = Literal["batch", "instance", "none"]
NORMS = ("batch", "instance", "none")


def _norm(kind: str, features: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(features)
    if kind == "instance":
        return nn.InstanceNorm2d(features, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}; use one of {', '.join(NORMS)}")


class ResidualBlock(nn.Module):
    """Pre-activation residual block: (norm, ReLU, 3x3 conv) twice, identity skip.

    ``norm``: "batch" (the paper's BN), "instance" (per-slice statistics, also at inference) or "none".
    """

    def __init__(self, features: int, norm: str = "batch") -> None:
        super().__init__()
        self.bn1 = _norm(norm, features)
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.bn2 = _norm(norm, features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(torch.relu(self.bn1(x)))
        h = self.conv2(torch.relu(self.bn2(h)))
        return x + h


class ResNetProximal(nn.Module):
    """G: 1x1 projection to ``features`` maps, ``blocks`` residual blocks, three 1x1 convs.

    The head is conv1x1-ReLU-conv1x1-ReLU-conv1x1 followed by the output
    activation: "linear" for complex MR in two channels (real, imaginary),
    "sigmoid" for [0, 1] magnitude images as in the paper's text.
    ``global_skip`` adds the input to the head's output (G(x) = x + R(x), before the output
    activation) and starts the last conv at zero, so an untrained G is the identity and the
    network learns a correction of its input (e.g. of a CG-SENSE image) rather than the image.
    ``norm`` picks the blocks' normalisation. BN's running statistics are one set for all copies of a
    shared-weight network, whose inputs differ from copy to copy (and from training crops to whole
    slices); "none" or "instance" avoid that mismatch.
    """

    def __init__(
        self,
        channels: int = 2,
        features: int = 128,
        blocks: int = 1,
        output_activation: OutputActivation = "linear",
        global_skip: bool = False,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.global_skip = global_skip
        self.project = nn.Conv2d(channels, features, 1)
        self.blocks = nn.Sequential(*(ResidualBlock(features, norm) for _ in range(blocks)))
        self.head = nn.Sequential(
            nn.Conv2d(features, features, 1),
            nn.ReLU(),
            nn.Conv2d(features, features, 1),
            nn.ReLU(),
            nn.Conv2d(features, channels, 1),
        )
        if global_skip:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        self.output_activation = output_activation
        if output_activation not in ("linear", "sigmoid", "tanh"):
            raise ValueError(f"unknown output activation {output_activation!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.head(self.blocks(self.project(x))), x)

    def finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The head's output ``out`` for input ``x`` -> G(x): the global skip, then the output activation."""
        if self.global_skip:
            out = out + x
        if self.output_activation == "sigmoid":
            return torch.sigmoid(out)
        if self.output_activation == "tanh":
            return torch.tanh(out)
        return out
