"""Function-preserving widening: the wider network computes what the narrower one did, and can learn."""

from __future__ import annotations

import pytest
import torch

from recon_plugin.model import RecurrentProximalNet
from recon_plugin.model.proximal import ResNetProximal
from recon_plugin.model.widen import widen_state


@pytest.mark.parametrize("norm", ["none", "batch", "instance"])
def test_widened_proximal_computes_the_same_function(norm: str) -> None:
    torch.manual_seed(0)
    small = ResNetProximal(2, 6, blocks=2, global_skip=True, norm=norm)
    for p in small.parameters():  # trained-looking weights: the zero-initialised last conv too
        p.data.normal_(0, 0.3)
    big = ResNetProximal(2, 10, blocks=2, global_skip=True, norm=norm)
    big.load_state_dict(widen_state(small.state_dict(), big.state_dict(), 6, 10))
    small.eval()
    big.eval()
    x = torch.randn(2, 2, 24, 20)
    with torch.no_grad():
        want, got = small(x), big(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert big.project.weight[6:].abs().sum() > 0  # new channels keep their own initialisation


def test_widened_network_learns_through_the_new_channels() -> None:
    torch.manual_seed(1)
    small = RecurrentProximalNet(copies=2, features=4, shared=False, norm="none", global_skip=True)
    for p in small.proximals.parameters():
        p.data.normal_(0, 0.3)
    big = RecurrentProximalNet(copies=2, features=7, shared=False, norm="none", global_skip=True)
    big.load_state_dict(widen_state(small.state_dict(), big.state_dict(), 4, 7))
    g = big.proximals[0]
    assert torch.equal(g.head[4].weight[:, 4:], torch.zeros_like(g.head[4].weight[:, 4:]))
    x = torch.randn(1, 2, 12, 12)
    g(x).square().sum().backward()
    assert g.head[4].weight.grad[:, 4:].abs().sum() > 0  # the zero weights that read new channels move
    assert g.blocks[0].conv1.weight.grad[:4, 4:].abs().sum() > 0
    assert torch.equal(big.alpha, small.alpha)  # weights without a feature dimension are copied


def test_widening_refuses_narrowing_and_other_networks() -> None:
    a = ResNetProximal(2, 6, blocks=1).state_dict()
    b = ResNetProximal(2, 8, blocks=1).state_dict()
    with pytest.raises(ValueError, match="new_features >= old_features"):
        widen_state(b, a, 8, 6)
    with pytest.raises(ValueError, match="differ in keys"):
        widen_state(a, ResNetProximal(2, 8, blocks=2).state_dict(), 6, 8)
    with pytest.raises(ValueError, match="cannot widen"):
        widen_state(a, b, 6, 9)
