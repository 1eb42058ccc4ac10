"""The RGANCS networks: shapes, weight sharing, parameter count, exact data consistency."""

from __future__ import annotations

import pytest
import torch
from conftest import crandn

from recon_plugin.model import Discriminator, ModelConfig, RecurrentProximalNet, ResNetProximal
from recon_plugin.physics import SenseOperator, SuperResolutionOperator


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def expected_parameters(copies: int, blocks: int, features: int, shared: bool, channels: int = 2) -> int:
    """Parameter count derived by hand from the architecture.

    One proximal G with F features and C image channels:
      1x1 projection C -> F:            C*F weights + F biases
      each residual block: two BN layers (gamma, beta: 2F each) and two 3x3 convs F -> F
                                        2 * (2F) + 2 * (9*F*F + F)
      head: 1x1 F -> F twice, then F -> C
                                        2 * (F*F + F) + (F*C + C)
    The recurrent net holds one G (shared) or one per copy (independent), plus one
    learned step alpha per copy for gradient data consistency.
    For F=128, C=2, one block: 384 + 295680 + 33282 = 329346 per G; shared: 329346 + 10 = 329356;
    independent: 10 * 329346 + 10 = 3293470.
    """
    f, c = features, channels
    per_g = (c * f + f) + blocks * (2 * 2 * f + 2 * (9 * f * f + f)) + 2 * (f * f + f) + (f * c + c)
    return (1 if shared else copies) * per_g + copies


def test_parameter_count_matches_hand_derivation():
    shared = RecurrentProximalNet(ModelConfig(copies=10, blocks=1, features=128, shared=True))
    independent = RecurrentProximalNet(ModelConfig(copies=10, blocks=1, features=128, shared=False))
    assert count(shared) == expected_parameters(10, 1, 128, True) == 329_356
    assert count(independent) == expected_parameters(10, 1, 128, False) == 3_293_470
    deep = RecurrentProximalNet(ModelConfig(copies=1, blocks=10, features=128))
    assert count(deep) == expected_parameters(1, 10, 128, True)


def test_shared_copies_share_one_parameter_set():
    net = RecurrentProximalNet(copies=4, blocks=1, features=8, shared=True)
    assert len(net.proximals) == 1
    assert all(net.proximal(k) is net.proximal(0) for k in range(4))
    indep = RecurrentProximalNet(copies=4, blocks=1, features=8, shared=False)
    assert len(indep.proximals) == 4
    ids = {id(p) for k in range(4) for p in indep.proximal(k).parameters()}
    assert len(ids) == 4 * len(list(indep.proximal(0).parameters()))


def test_outputs_and_shapes(rng):
    net = RecurrentProximalNet(copies=3, blocks=2, features=8).eval()
    op = SenseOperator(torch.from_numpy(rng.random((20, 12)) < 0.4))
    y = op.forward(torch.from_numpy(crandn(rng, 2, 20, 12)))
    x, outputs = net(y, op)
    assert x.shape == (2, 20, 12) and x.dtype == torch.complex64
    assert len(outputs) == 3 and all(o.shape == x.shape for o in outputs)
    assert torch.equal(outputs[-1], x)


@pytest.mark.parametrize("shared", [True, False])
def test_exact_data_consistency_keeps_measurements(rng, shared):
    net = RecurrentProximalNet(copies=3, blocks=1, features=8, shared=shared, data_consistency="exact").eval()
    assert net.alpha is None
    mask = torch.from_numpy(rng.random((24, 16)) < 0.3)
    op = SenseOperator(mask)
    y = op.forward(torch.from_numpy(crandn(rng, 2, 24, 16)))
    with torch.no_grad():
        x, _ = net(y, op)
    assert (op.forward(x) - y).abs().max().item() < 1e-5
    # ...and the network did change the unsampled k-space (it is not a no-op).
    full = SenseOperator(torch.ones_like(mask))
    assert (full.forward(x) - full.forward(op.adjoint(y))).abs().max() > 1e-3


def test_super_resolution_magnitude_model(rng):
    net = RecurrentProximalNet(copies=2, blocks=1, features=8, channels=1, output_activation="sigmoid")
    op = SuperResolutionOperator(4)
    y = torch.rand(2, 8, 8)
    x, _ = net(y, op)
    assert x.shape == (2, 32, 32) and not x.is_complex()


def test_output_activation_setting():
    g = ResNetProximal(channels=1, features=4, blocks=1, output_activation="sigmoid")
    out = g(torch.randn(1, 1, 8, 8) * 100)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError):
        ResNetProximal(output_activation="softmax")  # type: ignore[arg-type]


def test_discriminator_structure():
    d = Discriminator(channels=2)
    assert d.conv_layers == 8
    convs = [m for m in d.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs[:4]] == [8, 16, 32, 64]
    assert all(c.stride == (2, 2) for c in convs[:4]) and all(c.stride == (1, 1) for c in convs[4:])
    assert all(c.kernel_size == (3, 3) for c in convs[:5])
    assert all(c.kernel_size == (1, 1) for c in convs[-2:])
    bns = [m for m in d.net if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 7  # every layer but the last
    assert not isinstance(d.net[-1], torch.nn.Sigmoid)
    scores = d(torch.randn(3, 2, 64, 48))
    assert scores.shape == (3,)


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(data_consistency="soft")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ModelConfig(copies=0)
