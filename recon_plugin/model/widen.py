"""Function-preserving widening of a trained RecurrentProximalNet: more features, the same function at step 0.

A narrower network's weights go into the first channels of a wider one. The new channels keep the wider network's
own (random) initialisation, and every weight by which an existing channel or output would read a new channel
starts at zero, so the wider network computes exactly what the narrower one did. Training then grows those zero
weights from their gradients (the new channels' activations are not zero), and the new channels join gradually.
"""

from __future__ import annotations

import torch


def widen_state(
    old: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], old_features: int, new_features: int
) -> dict[str, torch.Tensor]:
    """The state of a ``new_features``-wide network (``fresh``: its freshly initialised state) that computes what
    the ``old_features``-wide state ``old`` computes; the two must have the same keys and differ only in features.

    A tensor dimension is a feature dimension where the two shapes differ, and then it must grow from
    ``old_features`` to ``new_features``. Only the first two dimensions (output, input) of a weight may grow.
    """
    if new_features < old_features:
        raise ValueError(f"widening needs new_features >= old_features, got {old_features} -> {new_features}")
    if set(old) != set(fresh):
        missing, extra = sorted(set(fresh) - set(old)), sorted(set(old) - set(fresh))
        raise ValueError(f"the states differ in keys: missing {missing[:3]}, unexpected {extra[:3]}")
    out: dict[str, torch.Tensor] = {}
    for key, small in old.items():
        big = fresh[key]
        if small.shape == big.shape:
            out[key] = small.clone()
            continue
        grown = [d for d in range(small.dim()) if small.shape[d] != big.shape[d]]
        if small.dim() != big.dim() or any(
            d > 1 or (small.shape[d], big.shape[d]) != (old_features, new_features) for d in grown
        ):
            raise ValueError(
                f"{key}: shape {tuple(small.shape)} cannot widen to {tuple(big.shape)} "
                f"({old_features} -> {new_features} features)"
            )
        wide = big.detach().clone().to(small.dtype)
        wide[tuple(slice(0, n) for n in small.shape)] = small
        if 1 in grown:  # existing outputs must not read the new input channels
            rows = slice(0, small.shape[0])
            wide[rows, old_features:] = 0
        out[key] = wide
    return out
