"""Function-preserving deepening of a trained RecurrentProximalNet: more residual blocks per copy, the same function.

A pre-activation residual block computes x + conv2(act(conv1(act(norm(x))))); with its second convolution at zero it
is the identity. So a network with more blocks per copy starts from a shallower one's weights in its first blocks
and new blocks whose ``conv2`` is zero: it computes exactly what the shallower network did. Training then grows
``conv2`` from its gradient (the new block's ``conv1`` activations are not zero), and the new blocks join gradually.
Each new block adds a 3x3 receptive field of two pixels on either side to every copy's G.
"""

from __future__ import annotations

import re

import torch

_BLOCK_KEY = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _block_index(key: str) -> int | None:
    match = _BLOCK_KEY.search(key)
    return int(match.group(1)) if match else None


def deepen_state(
    old: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], old_blocks: int, new_blocks: int
) -> dict[str, torch.Tensor]:
    """The state of a network with ``new_blocks`` residual blocks per G (``fresh``: its freshly initialised state)
    that computes what the ``old_blocks``-block state ``old`` computes.

    Every key of ``old`` must be in ``fresh`` with the same shape; the keys only ``fresh`` has must belong to blocks
    ``old_blocks`` to ``new_blocks - 1``. Those keep their fresh initialisation, except each new block's
    ``conv2`` weight and bias, which start at zero.
    """
    if new_blocks < old_blocks:
        raise ValueError(f"deepening needs new_blocks >= old_blocks, got {old_blocks} -> {new_blocks}")
    missing = sorted(set(old) - set(fresh))
    if missing:
        raise ValueError(f"the deeper network has no {missing[:3]}")
    out: dict[str, torch.Tensor] = {}
    for key, big in fresh.items():
        if key in old:
            if old[key].shape != big.shape:
                raise ValueError(f"{key}: shape {tuple(old[key].shape)} differs from {tuple(big.shape)}")
            out[key] = old[key].clone()
            continue
        index = _block_index(key)
        if index is None or not old_blocks <= index < new_blocks:
            raise ValueError(f"{key} is new but not part of a new residual block ({old_blocks}..{new_blocks - 1})")
        new = big.detach().clone()
        if ".conv2." in key:
            new.zero_()
        out[key] = new
    return out
