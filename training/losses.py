"""Generator and discriminator costs of RGANCS (pixel and data-fidelity parts; LSGAN terms)."""

from __future__ import annotations

import torch

from recon_plugin.physics import SenseOperator


def data_fidelity(outputs: list[torch.Tensor], y: torch.Tensor, op: SenseOperator) -> torch.Tensor:
    """Sum over copies of ||y - A x_k||^2 / (number of k-space points), averaged over the batch."""
    return sum(((op.forward(x) - y).abs() ** 2).mean() for x in outputs)  # type: ignore[return-value]


def pixel_loss(x_hat: torch.Tensor, x: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """gamma * l1 + (1 - gamma) * l2 between complex images, per pixel."""
    diff = (x_hat - x).abs()
    return gamma * diff.mean() + (1 - gamma) * (diff**2).mean()


def lsgan_generator(fake_scores: torch.Tensor) -> torch.Tensor:
    """(1 - D(x_hat))^2."""
    return ((1 - fake_scores) ** 2).mean()


def lsgan_discriminator(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """(1 - D(x))^2 + D(x_hat)^2."""
    return ((1 - real_scores) ** 2).mean() + (fake_scores**2).mean()
