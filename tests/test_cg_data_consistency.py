"""Conjugate gradients and the "cg" data consistency: solves, data fit, gradients, operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import crandn

from recon_plugin.errors import InvalidInputError
from recon_plugin.masks import make_mask
from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle, save_bundle
from recon_plugin.model.precision import FullPrecisionOperator
from recon_plugin.physics import SenseOperator, SuperResolutionOperator, conjugate_gradient
from recon_plugin.simulate import birdcage_coil_maps


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def sense_problem(rng: np.random.Generator, coils: int, batch: int = 2, shape=(32, 24), acceleration=3.0):
    masks = np.stack([make_mask("poisson", shape, acceleration, seed=i, calib=6).mask for i in range(batch)])
    maps = None if coils == 1 else t(np.stack([birdcage_coil_maps(shape, coils)] * batch))
    op = SenseOperator(t(masks), maps)
    x = t(crandn(rng, batch, *shape))
    return op, x, op.forward(x)


def test_cg_solves_a_known_hermitian_system(rng):
    n = 12
    a = crandn(rng, n, n)
    h = t(a.conj().T @ a + 0.5 * np.eye(n, dtype=np.complex64))  # Hermitian positive definite
    b = t(crandn(rng, 3, n))
    x = conjugate_gradient(lambda v: v @ h.T, b, None, iterations=60)
    expected = torch.linalg.solve(h, b.T).T
    assert torch.allclose(x, expected, atol=1e-4, rtol=1e-4)


def test_cg_batch_elements_are_independent(rng):
    op, _, y = sense_problem(rng, coils=4, batch=3)
    joint = op.cg_sense(y, iterations=6)
    for i in range(3):
        single = SenseOperator(op.mask[i : i + 1], op.maps[i : i + 1]).cg_sense(y[i : i + 1], iterations=6)
        assert torch.allclose(joint[i], single[0], atol=1e-5)


def test_cg_rejects_negative_iterations(rng):
    with pytest.raises(InvalidInputError):
        conjugate_gradient(lambda v: v, torch.ones(1, 3), None, iterations=-1)


@pytest.mark.parametrize("coils", [1, 8])
def test_small_lambda_solution_fits_the_measurements(rng, coils):
    """lambda -> 0 with enough iterations: the output's sampled k-space equals y."""
    op, _, y = sense_problem(rng, coils)
    z = t(crandn(rng, 2, 32, 24))  # a proximal output far from the data
    x = op.regularised_solve(z, y, 1e-7, iterations=150)
    assert float((op.forward(x) - y).norm() / y.norm()) < 1e-3
    # with a large lambda the solution stays near z instead
    far = op.regularised_solve(z, y, 1e4, iterations=20)
    assert float((far - z).norm() / z.norm()) < 1e-3


def test_regularised_solve_minimises_the_objective(rng):
    op, _, y = sense_problem(rng, coils=4)
    z = t(crandn(rng, 2, 32, 24))
    lam = 0.3
    x = op.regularised_solve(z, y, lam, iterations=60)

    def objective(v):
        return float((op.forward(v) - y).abs().pow(2).sum() + lam * (v - z).abs().pow(2).sum())

    best = objective(x)
    for _ in range(5):
        assert objective(x + 1e-2 * t(crandn(rng, 2, 32, 24))) > best
    # the optimality condition (A^H A + lam I) x = A^H y + lam z holds
    lhs = op.normal(x) + lam * x
    rhs = op.adjoint(y) + lam * z
    assert float((lhs - rhs).norm() / rhs.norm()) < 1e-4


def test_cg_sense_beats_zero_filled_on_multicoil(rng):
    shape = (48, 48)
    yy, xx = np.mgrid[:48, :48]
    image = ((yy - 24) ** 2 + (xx - 24) ** 2 < 300).astype(np.complex64) * (1 + 0.3 * np.sin(xx / 5))
    maps = t(birdcage_coil_maps(shape, 8))[None]
    mask = t(make_mask("uniform", shape, 3, calib=12, seed=0).mask)[None]
    op = SenseOperator(mask, maps)
    x = t(image)[None]
    y = op.forward(x)
    err_zf = float((op.adjoint(y) - x).norm() / x.norm())
    err_cg = float((op.cg_sense(y, 30) - x).norm() / x.norm())
    assert err_cg < 0.2 * err_zf


def test_gradients_flow_to_lambda_and_weights(rng):
    op, x, y = sense_problem(rng, coils=4)
    net = RecurrentProximalNet(copies=3, blocks=1, features=8, data_consistency="cg", cg_iterations=3, init="cg_sense")
    assert net.alpha is None and net.log_lambda is not None and net.log_lambda.shape == (3,)
    assert torch.allclose(net.lambdas, torch.full((3,), 0.1))
    x_hat, outputs = net(y, op)
    ((x_hat - x).abs() ** 2).mean().backward()
    assert len(outputs) == 3
    assert net.log_lambda.grad is not None and torch.all(net.log_lambda.grad != 0)
    assert all(p.grad is not None for p in net.proximals.parameters())


def test_cg_model_under_bf16_keeps_data_consistency_in_complex64(rng):
    op, _, y = sense_problem(rng, coils=4)
    net = RecurrentProximalNet(copies=2, blocks=1, features=8, data_consistency="cg", init="cg_sense").eval()
    with torch.no_grad():
        ref, _ = net(y, op)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = net(y, FullPrecisionOperator(op, "cpu"))
    assert low.dtype == torch.complex64
    assert float((low - ref).norm() / ref.norm()) < 0.05


def test_cg_on_super_resolution_operator(rng):
    """The block-average operator is real: the proximal solve works on it too and fits its data for small lambda."""
    op = SuperResolutionOperator(4)
    x = torch.rand(2, 16, 16)
    y = op.forward(x)
    z = torch.rand(2, 16, 16)
    sol = op.regularised_solve(z, y, 1e-6, iterations=40)
    assert float((op.forward(sol) - y).norm() / y.norm()) < 1e-3
    net = RecurrentProximalNet(
        copies=2, blocks=1, features=8, channels=1, output_activation="sigmoid", data_consistency="cg"
    )
    out, _ = net(y, op, op.approximate_inverse(y))
    assert out.shape == (2, 16, 16) and not out.is_complex()


def test_cg_sense_initial_image_needs_an_operator_that_has_it(rng):
    class NoSolve:
        def adjoint(self, y):
            return y

    net = RecurrentProximalNet(copies=1, blocks=1, features=4, data_consistency="cg", init="cg_sense")
    with pytest.raises(TypeError, match="cg_sense"):
        net(torch.zeros(1, 1, 8, 8, dtype=torch.complex64), NoSolve())


@pytest.mark.parametrize(
    "bad",
    [
        {"data_consistency": "soft"},
        {"init": "sense"},
        {"cg_iterations": 0},
        {"cg_lambda": 0.0},
        {"cg_lambda": float("nan")},
    ],
)
def test_config_rejects_bad_cg_settings(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_cg_bundle_round_trip(tmp_path, rng):
    net = RecurrentProximalNet(copies=2, blocks=1, features=8, data_consistency="cg", cg_iterations=3, init="cg_sense")
    with torch.no_grad():
        net.log_lambda.copy_(torch.tensor([-1.0, -3.0]))
    save_bundle(net, tmp_path / "b", mask={"family": "mixture"}, training_data={"kind": "test"})
    loaded = load_bundle(tmp_path / "b")
    assert loaded.model.config == net.config
    assert torch.equal(loaded.model.log_lambda, net.log_lambda)
    op, _, y = sense_problem(rng, coils=4)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(y, op)[0], net.eval()(y, op)[0], atol=1e-5)


def test_global_skip_starts_as_identity_and_learns_a_correction(rng):
    from recon_plugin.model import ResNetProximal

    g = ResNetProximal(2, 8, 1, global_skip=True)
    plain = ResNetProximal(2, 8, 1)
    assert sum(p.numel() for p in g.parameters()) == sum(p.numel() for p in plain.parameters())
    x = torch.randn(2, 2, 12, 12)
    assert torch.equal(g(x), x)
    assert not torch.allclose(plain(x), x, atol=1e-2)
    ((g(x) - 2 * x) ** 2).mean().backward()
    assert g.head[-1].weight.grad is not None and g.head[-1].weight.grad.abs().sum() > 0
    # an untrained cg network with a global skip is CG-SENSE followed by proximal CG solves
    op, _, y = sense_problem(rng, coils=4)
    net = RecurrentProximalNet(
        copies=2, blocks=1, features=8, data_consistency="cg", init="cg_sense", init_iterations=4, global_skip=True
    ).eval()
    with torch.no_grad():
        out, _ = net(y, op)
        x0 = op.cg_sense(y, 4)
        lam = net.lambdas
        expected = op.regularised_solve(op.regularised_solve(x0, y, lam[0], 5), y, lam[1], 5)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_norms_without_running_statistics_are_per_slice(norm):
    """Instance norm and no norm give the same output in train and eval mode, and a slice's output does not
    depend on the rest of its batch (BatchNorm's running statistics are one set for all copies)."""
    from recon_plugin.model import ResNetProximal

    g = ResNetProximal(2, 8, 1, norm=norm)
    assert not any("running" in k for k in g.state_dict())
    x = torch.randn(3, 2, 16, 16)
    with torch.no_grad():
        train_out = g.train()(x)
        eval_out = g.eval()(x)
        alone = g(x[:1])
    assert torch.allclose(train_out, eval_out, atol=1e-6)
    assert torch.allclose(alone[0], eval_out[0], atol=1e-5)
    with pytest.raises(ValueError, match="normalisation"):
        ResNetProximal(2, 8, 1, norm="layer")
    with pytest.raises(ValueError, match="norm"):
        ModelConfig(norm="layer")  # type: ignore[arg-type]


def test_no_norm_drops_only_the_batchnorm_parameters():
    batch = RecurrentProximalNet(copies=10, blocks=1, features=32)
    none = RecurrentProximalNet(copies=10, blocks=1, features=32, norm="none")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(batch) - count(none) == 2 * 2 * 32  # two BN layers (weight, bias) per block
