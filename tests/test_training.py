"""Training pieces: normalised batches, losses on known values, a short run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle
from recon_plugin.reconstructors.rgancs import robust_scale
from training.data import SimulatedSlices
from training.losses import data_fidelity, lsgan_discriminator, lsgan_generator, pixel_loss
from training.model_card import write_model_card
from training.pixel_fit import PixelFitSettings, fit_pixel


def blobs(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx, r = [*rng.uniform(8, size - 8, 2).tolist(), rng.uniform(3, 7)]
            out[i] += ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) * rng.uniform(0.3, 1)
    return out


def test_batches_are_normalised_like_inference():
    data = SimulatedSlices(blobs(4), acceleration=3.0, seed=1)
    batch = data.sample(3)
    assert batch.y.shape == (3, 1, 32, 32) and batch.x.shape == (3, 32, 32)
    assert torch.allclose(robust_scale(batch.op.adjoint(batch.y)), torch.ones(3), atol=1e-4)
    assert torch.allclose(batch.op.forward(batch.x), batch.y, atol=1e-5)  # y is A x, noise-free
    assert not torch.equal(batch.op.mask[0], batch.op.mask[1])  # masks drawn per sample


def test_losses_on_known_values():
    x = torch.zeros(1, 2, 2, dtype=torch.complex64)
    x_hat = torch.full((1, 2, 2), 2.0, dtype=torch.complex64)
    assert pixel_loss(x_hat, x, gamma=1.0).item() == pytest.approx(2.0)
    assert pixel_loss(x_hat, x, gamma=0.0).item() == pytest.approx(4.0)
    assert lsgan_generator(torch.ones(3)).item() == 0.0
    assert lsgan_discriminator(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert lsgan_discriminator(torch.zeros(3), torch.ones(3)).item() == pytest.approx(2.0)
    data = SimulatedSlices(blobs(1), acceleration=2.0)
    b = data.sample(1)
    assert data_fidelity([b.x, b.x], b.y, b.op).item() == pytest.approx(0.0, abs=1e-8)


def test_short_fit_learns_and_writes_a_bundle(tmp_path):
    slices = blobs(6)
    settings = PixelFitSettings(
        steps=60, batch_size=2, lr=3e-3, acceleration=3.0, model=ModelConfig(copies=2, features=8)
    )
    metrics = fit_pixel(slices[:4], slices[4:], settings, tmp_path / "b", source="blobs")
    assert metrics["snr_db"] > metrics["zero_filled_snr_db"]
    bundle = load_bundle(tmp_path / "b")
    assert bundle.sidecar["mask"]["family"] == "radial"
    assert bundle.sidecar["validation"]["snr_db"] == pytest.approx(metrics["snr_db"])
    assert isinstance(bundle.model, RecurrentProximalNet)
    card = write_model_card(tmp_path / "b", data_terms="synthetic blobs").read_text()
    assert bundle.sha256 in card and "synthetic blobs" in card
    assert f"{metrics['snr_db']:.2f}" in card and f"{metrics['zero_filled_snr_db']:.2f}" in card


def test_eval_command_compares_four_methods(tmp_path):
    """`recon-train eval` on a few complex slices: zero-filled, CS-WV, CS-TV and the bundle on the same masks."""
    import json

    from typer.testing import CliRunner

    from recon_plugin.coils import bart_available
    from recon_plugin.model import save_bundle
    from recon_plugin.simulate import with_smooth_phase
    from training.cli import app

    if not bart_available():
        pytest.skip("BART not installed")
    rng = np.random.default_rng(0)
    images = np.stack([with_smooth_phase(b, rng) for b in blobs(3, size=48)])
    np.save(tmp_path / "imgs.npy", images)
    save_bundle(RecurrentProximalNet(ModelConfig(copies=2, features=8)), tmp_path / "b", mask={}, training_data={})
    out = tmp_path / "table.md"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--bundle",
            str(tmp_path / "b"),
            "--data",
            str(tmp_path / "imgs.npy"),
            "--slices",
            "0:3",
            "--iterations",
            "20",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "rows.json"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"zero_filled", "cs_wavelet", "cs_tv", "rgancs"}
    assert len(rows) == 12 and "mean of 3" in out.read_text()
    zf = {r["slice"]: r["snr_db"] for r in rows if r["method"] == "zero_filled"}
    cs = {r["slice"]: r["snr_db"] for r in rows if r["method"] == "cs_wavelet"}
    assert all(cs[k] > zf[k] for k in zf)  # the baselines do their job on these slices


def test_copies_view(tmp_path):
    from PIL import Image

    from recon_plugin.evaluation import image_cases
    from recon_plugin.model import save_bundle
    from recon_plugin.simulate import with_smooth_phase
    from training.copies_view import copy_outputs, write_copies_view

    save_bundle(RecurrentProximalNet(ModelConfig(copies=3, features=8)), tmp_path / "b", mask={}, training_data={})
    bundle = load_bundle(tmp_path / "b")
    rng = np.random.default_rng(1)
    (case,) = image_cases(np.stack([with_smooth_phase(blobs(1, 64)[0], rng)]), [0])
    outputs = copy_outputs(bundle, case.problem)
    assert len(outputs) == 4 and all(o.shape == (64, 64) for o in outputs)  # zero-filled + 3 copies
    from recon_plugin.reconstructors import RGANCS

    final = RGANCS(bundle, device="cpu", fast_path="fp32").reconstruct(case.problem).image
    assert np.allclose(outputs[-1], final, atol=1e-5 * np.abs(final).max())  # the last copy is the output
    case.problem.reference = case.reference
    png = Image.open(write_copies_view(bundle, case.problem, tmp_path / "c.png"))
    assert png.size[0] == 5 * 128 and png.getextrema()[1] > 0  # five columns, 64-pixel tiles enlarged x2
