"""What makes a training step fast without changing it: the fused A^H A node (gradients equal to autograd's
through the separate products), the CG-SENSE initial image without a graph, zero-weight terms skipped, bf16
only where the CPU has it, and the configuration keys of the bank and of per-batch matrix sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recon_plugin.model import RecurrentProximalNet
from recon_plugin.physics import SenseOperator, _FusedNormal
from recon_plugin.simulate import birdcage_coil_maps
from training.config import config_from_dict
from training.errors import TrainingConfigError
from training.loop import resolve_bf16


def operator(batch: int = 2, coils: int = 4, n: int = 16, seed: int = 0) -> SenseOperator:
    gen = torch.Generator().manual_seed(seed)
    maps = torch.from_numpy(birdcage_coil_maps((n, n), coils)).expand(batch, -1, -1, -1).contiguous()
    return SenseOperator(torch.rand(batch, n, n, generator=gen) < 0.4, maps)


class Unfused(SenseOperator):
    """The same operator with A^H A as separate autograd products."""

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))


def test_fused_normal_gradients_equal_autograd() -> None:
    op = operator()
    ref = Unfused(op.mask, op.maps)
    x = torch.randn(2, 16, 16, dtype=torch.complex64, requires_grad=True)
    w = torch.randn(2, 16, 16, dtype=torch.complex64)
    for o in (op, ref):
        (o.normal(x) * w.conj()).real.sum().backward()
    # both ran: the fused node is in the graph of the first
    assert isinstance(op.normal(x).grad_fn, torch.autograd.function.BackwardCFunction)
    g_fused = x.grad.clone()
    x.grad = None
    (ref.normal(x) * w.conj()).real.sum().backward()
    assert torch.allclose(g_fused / 2, x.grad, atol=1e-5)  # the first backward pass summed both operators
    v = torch.randn(2, 16, 16, dtype=torch.complex128, requires_grad=True)
    maps, maps_conj = op._folded_maps(v)
    assert torch.autograd.gradcheck(lambda t: _FusedNormal.apply(t, maps, maps_conj, op._weight.double()), (v,))


def test_cg_solve_gradients_equal_autograd_through_separate_products() -> None:
    op = operator(seed=1)
    ref = Unfused(op.mask, op.maps)
    y = op.forward(torch.randn(2, 16, 16, dtype=torch.complex64))
    z0 = torch.randn(2, 16, 16, dtype=torch.complex64)
    grads = []
    for o in (op, ref):
        z = z0.clone().requires_grad_(True)
        lam = torch.tensor(0.3, requires_grad=True)
        out = o.regularised_solve(z, y, lam, iterations=3)
        out.abs().pow(2).sum().backward()
        grads.append((z.grad, lam.grad, out.detach()))
    (gz1, gl1, o1), (gz2, gl2, o2) = grads
    assert torch.allclose(o1, o2, atol=1e-5)
    assert torch.allclose(gz1, gz2, atol=1e-4, rtol=1e-4)
    assert torch.allclose(gl1, gl2, atol=1e-3, rtol=1e-4)


def test_network_gradients_unchanged_and_init_has_no_graph() -> None:
    torch.manual_seed(0)
    net = RecurrentProximalNet(
        copies=2,
        features=4,
        data_consistency="cg",
        cg_iterations=2,
        init="cg_sense",
        init_iterations=3,
        global_skip=True,
        norm="none",
    )
    op = operator(seed=2)
    y = op.forward(torch.randn(2, 16, 16, dtype=torch.complex64))
    grads = []
    for o in (op, Unfused(op.mask, op.maps)):
        net.zero_grad()
        x, _ = net(y, o)
        x.abs().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for g1, g2 in zip(*grads, strict=True):
        assert torch.allclose(g1, g2, atol=1e-5, rtol=1e-4)
    x0 = op.cg_sense(y, 3)
    assert x0.grad_fn is None  # no weights in it: nothing to record


def test_bf16_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from recon_plugin import cpu_features

    cpu = torch.device("cpu")
    assert resolve_bf16(True, cpu) is True and resolve_bf16(False, cpu) is False
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: False)
    assert resolve_bf16("auto", cpu) is False
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: True)
    assert resolve_bf16("auto", cpu) is True
    assert resolve_bf16("auto", torch.device("cuda")) is True


def base(tmp_path: Path, **data: object) -> dict:
    return {
        "data": {"path": str(tmp_path / "x.npy"), **data},
        "run": {"out": str(tmp_path / "run")},
    }


@pytest.mark.parametrize(
    ("data", "run", "key"),
    [
        ({"bank_batches": -1}, {}, "[data].bank_batches"),
        ({"bank_reuse": 0}, {}, "[data].bank_reuse"),
        ({"bank_workers": -2}, {}, "[data].bank_workers"),
        ({"bank_nice": 20}, {}, "[data].bank_nice"),
        ({"sizes": [8, 32]}, {}, "[data].sizes"),
        ({"sizes": []}, {}, "[data].sizes"),
        ({"real_val_names": ["a"]}, {}, "[data].real_val_names"),
        ({"real_val_cg_iterations": 4}, {}, "[data].real_val_cg_iterations"),  # without real_val_path
        ({"real_val_cg_iterations": -1}, {}, "[data].real_val_cg_iterations"),
        ({"paths": ["a.npy"]}, {}, "[data].paths"),  # path and paths together
        ({}, {"bf16": "sometimes"}, "[run].bf16"),
    ],
)
def test_new_keys_are_checked(tmp_path: Path, data: dict, run: dict, key: str) -> None:
    raw = base(tmp_path, **data)
    raw["run"].update(run)
    with pytest.raises(TrainingConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw)


def test_images_from_several_files(tmp_path: Path) -> None:
    import numpy as np

    from training.datasets import load_many

    a, b = np.ones((3, 8, 8), np.float32), np.zeros((2, 8, 8), np.complex64)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    both = load_many([tmp_path / "a.npy", tmp_path / "b.npy"])
    assert both.shape == (5, 8, 8) and both.dtype == np.complex64
    np.save(tmp_path / "c.npy", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(Exception, match="matrix size"):
        load_many([tmp_path / "a.npy", tmp_path / "c.npy"])
    cfg = config_from_dict({"data": {"paths": ["a.npy", "b.npy"]}, "run": {"out": "r"}}, base_dir=tmp_path)
    assert cfg.data.paths == [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
