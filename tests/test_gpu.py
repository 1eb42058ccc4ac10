"""CUDA checks; they skip (with the reason in pytest's summary) on machines without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_plugin.model import ModelConfig, RecurrentProximalNet, save_bundle
from recon_plugin.physics import SenseOperator
from recon_plugin.reconstructors import RGANCS
from recon_plugin.simulate import simulate_problem, simulated_coil_maps, with_smooth_phase

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


def test_sense_adjoint_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    mask = torch.rand(2, 64, 48, device="cuda", generator=g) < 0.3
    maps = torch.randn(2, 4, 64, 48, dtype=torch.complex64, device="cuda", generator=g)
    op = SenseOperator(mask, maps)
    x = torch.randn(2, 64, 48, dtype=torch.complex64, device="cuda", generator=g)
    y = torch.randn(2, 4, 64, 48, dtype=torch.complex64, device="cuda", generator=g)
    lhs = torch.vdot(op.forward(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


def test_rgancs_cuda_matches_cpu(tmp_path):
    save_bundle(RecurrentProximalNet(ModelConfig(copies=3, features=16)), tmp_path / "b", mask={}, training_data={})
    rng = np.random.default_rng(0)
    img = np.zeros((64, 48), np.float32)
    img[10:-10, 8:-8] = 1
    mask = rng.random((64, 48)) < 0.3
    problem = simulate_problem(with_smooth_phase(img, rng), mask, simulated_coil_maps((64, 48), 4))
    # the same arithmetic on both devices: fp32 agrees to 1e-3 of the image's peak
    cpu = RGANCS(tmp_path / "b", device="cpu", fast_path="fp32").reconstruct(problem)
    gpu = RGANCS(tmp_path / "b", device="cuda", fast_path="fp32").reconstruct(problem)
    assert gpu.meta["device"].startswith("cuda")
    peak = np.abs(cpu.image).max()
    assert np.abs(gpu.image - cpu.image).max() <= 1e-3 * peak
    # each device's default path (bf16 on a CPU with native bf16) stays within bf16's rounding of that: with both in
    # bf16 (an H200 and its 16-core host), the largest difference measured was 1.5e-3 of the peak
    fast_cpu = RGANCS(tmp_path / "b", device="cpu").reconstruct(problem)
    fast_gpu = RGANCS(tmp_path / "b", device="cuda").reconstruct(problem)
    assert np.abs(fast_gpu.image - fast_cpu.image).max() <= 1e-2 * peak
    assert np.abs(fast_gpu.image - cpu.image).max() <= 1e-2 * peak


def test_adaptation_runs_on_cuda_and_follows_the_cpu(tmp_path):
    """Scan-specific adaptation on the GPU: the copy adapts there (the same seeded loss sets as on the CPU), the
    image says so, and it lands within TF32/fp32 rounding of the CPU's adapted image."""
    from recon_plugin.adaptation import AdaptSettings
    from recon_plugin.masks import make_mask
    from recon_plugin.sample_data import DEFAULT_BUNDLE

    rng = np.random.default_rng(1)
    img = np.zeros((64, 48), np.float32)
    img[10:-10, 8:-8] = 1
    img[20:30, 15:25] = 0.3
    mask = make_mask("poisson", (64, 48), 3.0, seed=3, calib=10).mask
    problem = simulate_problem(with_smooth_phase(img, rng), mask, simulated_coil_maps((64, 48), 8))
    settings = AdaptSettings(steps=6)
    plain = RGANCS(DEFAULT_BUNDLE, device="cuda", fast_path="fp32").reconstruct(problem)
    cpu = RGANCS(DEFAULT_BUNDLE, device="cpu", fast_path="fp32", adapt=settings).reconstruct(problem)
    gpu = RGANCS(DEFAULT_BUNDLE, device="cuda", fast_path="fp32", adapt=settings).reconstruct(problem)
    assert gpu.meta["device"].startswith("cuda") and gpu.meta["adapt_steps"] == 6
    peak = np.abs(cpu.image).max()
    change = np.abs(cpu.image - plain.image).max()
    assert change > 1e-3 * peak  # adapting moved the image ...
    assert np.abs(gpu.image - cpu.image).max() <= 0.2 * change  # ... and both devices moved it the same way
