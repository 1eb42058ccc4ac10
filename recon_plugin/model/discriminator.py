"""The 8-layer LSGAN discriminator of RGANCS."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """Eight conv layers, BN + ReLU on all but the last, score averaged to one number.

    Layers 1-4: 3x3, stride 2, 8/16/32/64 maps. Layers 5-6: 3x3, stride 1, 64
    maps (the paper states 3x3 for the first five and 1x1 for the last two of
    eight; layer 6 is unspecified there and we keep it 3x3). Layers 7-8: 1x1,
    64 then 1 map. No sigmoid: the least-squares GAN loss takes the raw score.
    """

    def __init__(self, channels: int = 2, width: int = 8) -> None:
        super().__init__()
        maps = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in maps:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        for kernel in (3, 3, 1):
            layers += [nn.Conv2d(c_in, maps[-1], kernel, padding=kernel // 2), nn.BatchNorm2d(maps[-1]), nn.ReLU()]
            c_in = maps[-1]
        layers.append(nn.Conv2d(c_in, 1, 1))
        self.net = nn.Sequential(*layers)

    @property
    def conv_layers(self) -> int:
        """Number of convolutional layers (8)."""
        return sum(isinstance(m, nn.Conv2d) for m in self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score per image [batch] (the last layer's map averaged)."""
        return self.net(x).mean(dim=(1, 2, 3))
