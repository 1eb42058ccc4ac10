"""Shared fixtures: seeded random data and the optional real-data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


def crandn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Complex64 standard normal array."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def real_data(name: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason printed."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (fresh clone without ../shared/data)")
    return path
