"""A pixel-loss training run (no GAN): the quick way to a working bundle on CPU."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recon_plugin.metrics import snr_db, ssim
from recon_plugin.model import ModelConfig, RecurrentProximalNet, save_bundle

from .data import SimulatedSlices
from .losses import data_fidelity, pixel_loss

log = logging.getLogger(__name__)


@dataclass
class PixelFitSettings:
    """Settings of a pixel-loss run."""

    steps: int = 500
    batch_size: int = 4
    lr: float = 1e-3
    eta: float = 1.0
    gamma: float = 0.5
    fidelity_weight: float = 1.0
    clip: float = 1.0
    seed: int = 0
    mask_family: str = "radial"
    acceleration: float = 5.0
    model: ModelConfig = field(default_factory=ModelConfig)


def validate(model: RecurrentProximalNet, data: SimulatedSlices, indices: list[int]) -> dict[str, float]:
    """Mean SNR / SSIM of the model and of zero-filled on fixed validation slices."""
    model.eval()
    with torch.no_grad():
        batch = data.batch(indices)
        x_hat, _ = model(batch.y, batch.op)
        zf = batch.op.adjoint(batch.y)
    ref, est, base = batch.x.numpy(), x_hat.numpy(), zf.numpy()
    model.train()
    return {
        "snr_db": float(np.mean([snr_db(r, e) for r, e in zip(ref, est, strict=True)])),
        "ssim": float(np.mean([ssim(r, e) for r, e in zip(ref, est, strict=True)])),
        "zero_filled_snr_db": float(np.mean([snr_db(r, e) for r, e in zip(ref, base, strict=True)])),
        "zero_filled_ssim": float(np.mean([ssim(r, e) for r, e in zip(ref, base, strict=True)])),
    }


def fit_pixel(
    train: np.ndarray, val: np.ndarray, settings: PixelFitSettings, out: Path, source: str
) -> dict[str, float]:
    """Train on ``train`` slices, validate on ``val``, write a bundle to ``out``; returns validation metrics."""
    torch.manual_seed(settings.seed)
    model = RecurrentProximalNet(settings.model)
    train_data = SimulatedSlices(
        train, mask_family=settings.mask_family, acceleration=settings.acceleration, seed=settings.seed
    )
    val_data = SimulatedSlices(
        val,
        mask_family=settings.mask_family,
        acceleration=settings.acceleration,
        per_sample_masks=False,
        augment=False,
        seed=settings.seed + 1,
    )
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    start = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="train", unit="step")
    for _ in bar:
        batch = train_data.sample(settings.batch_size)
        x_hat, outputs = model(batch.y, batch.op)
        loss = settings.fidelity_weight * data_fidelity(outputs, batch.y, batch.op) + settings.eta * pixel_loss(
            x_hat, batch.x, settings.gamma
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start
    metrics = validate(model, val_data, list(range(len(val))))
    log.info("validation: %s", metrics)
    save_bundle(
        model.eval(),
        out,
        mask={"family": settings.mask_family, "acceleration": settings.acceleration, "per_sample": True},
        training_data={
            "source": source,
            "train_slices": len(train),
            "validation_slices": len(val),
            "matrix": list(train.shape[1:]),
            "simulation": "single coil, smooth random phase, flips/rotations",
        },
        extra={
            "training": {
                "loss": "pixel (gamma-mixed l1/l2) + data fidelity, no GAN",
                "steps": settings.steps,
                "batch_size": settings.batch_size,
                "lr": settings.lr,
                "eta": settings.eta,
                "gamma": settings.gamma,
                "seconds": round(seconds, 1),
                "device": "cpu",
            },
            "validation": metrics,
        },
    )
    return metrics
