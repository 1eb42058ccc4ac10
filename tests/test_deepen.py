"""Function-preserving deepening: the deeper network computes what the shallower one did, and can learn."""

from __future__ import annotations

import pytest
import torch

from recon_plugin.model import RecurrentProximalNet
from recon_plugin.model.deepen import deepen_state
from recon_plugin.model.proximal import ResNetProximal


def _trained_looking(module: torch.nn.Module) -> None:
    for p in module.parameters():  # the zero-initialised last conv too
        p.data.normal_(0, 0.3)


@pytest.mark.parametrize("norm", ["none", "batch", "instance"])
def test_deepened_proximal_computes_the_same_function(norm: str) -> None:
    torch.manual_seed(0)
    shallow = ResNetProximal(2, 6, blocks=1, global_skip=True, norm=norm)
    _trained_looking(shallow)
    deep = ResNetProximal(2, 6, blocks=3, global_skip=True, norm=norm)
    deep.load_state_dict(deepen_state(shallow.state_dict(), deep.state_dict(), 1, 3))
    shallow.eval()
    deep.eval()
    x = torch.randn(2, 2, 24, 20)
    with torch.no_grad():
        want, got = shallow(x), deep(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for block in deep.blocks[1:]:
        assert torch.count_nonzero(block.conv2.weight) == 0 and torch.count_nonzero(block.conv2.bias) == 0
        assert block.conv1.weight.abs().sum() > 0  # the new block's first conv keeps its own initialisation


def test_deepened_network_learns_through_the_new_blocks() -> None:
    torch.manual_seed(1)
    shallow = RecurrentProximalNet(copies=2, features=4, blocks=1, shared=False, norm="none", global_skip=True)
    _trained_looking(shallow.proximals)
    deep = RecurrentProximalNet(copies=2, features=4, blocks=2, shared=False, norm="none", global_skip=True)
    deep.load_state_dict(deepen_state(shallow.state_dict(), deep.state_dict(), 1, 2))
    g = deep.proximals[1]
    g(torch.randn(1, 2, 12, 12)).square().sum().backward()
    assert g.blocks[1].conv2.weight.grad.abs().sum() > 0  # the zero conv moves first, then the block joins in
    assert torch.equal(deep.alpha, shallow.alpha)


def test_deepening_refuses_shallowing_and_other_networks() -> None:
    one = ResNetProximal(2, 6, blocks=1).state_dict()
    two = ResNetProximal(2, 6, blocks=2).state_dict()
    with pytest.raises(ValueError, match="new_blocks >= old_blocks"):
        deepen_state(two, one, 2, 1)
    with pytest.raises(ValueError, match="shape"):
        deepen_state(one, ResNetProximal(2, 8, blocks=2).state_dict(), 1, 2)
    with pytest.raises(ValueError, match="not part of a new residual block"):
        deepen_state(one, ResNetProximal(2, 6, blocks=3).state_dict(), 1, 2)
    with pytest.raises(ValueError, match="has no"):
        deepen_state(two, ResNetProximal(2, 6, blocks=1).state_dict(), 1, 1)
