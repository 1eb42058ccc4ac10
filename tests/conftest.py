"""Shared fixtures: seeded random data, the optional real-data folder, an MRD server, a umask."""

from __future__ import annotations

import os
import threading
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


def ellipse_slices(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Synthetic magnitude slices [n, size, size]: ellipses of different sizes with a small bright spot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    out = []
    for _ in range(n):
        a, b = rng.uniform(0.4, 0.9, 2)
        img = ((xx / a) ** 2 + (yy / b) ** 2 < 1).astype(np.float32)
        img += 0.5 * ((xx - rng.uniform(-0.2, 0.2)) ** 2 + yy**2 < rng.uniform(0.02, 0.08))
        out.append(img)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def server():
    """``serve()`` on an ephemeral loopback port in a background thread; stopped (and checked stopped) at the end."""
    from recon_plugin.mrd_server import ServerReady, serve

    ready, stop = ServerReady(), threading.Event()
    settings = {"port": 0, "ready": ready, "stop": stop, "idle_timeout": 30.0, "allowed_modules": ("server_gadgets",)}
    thread = threading.Thread(target=serve, kwargs=settings, daemon=True)
    thread.start()
    assert ready.wait(10), "server did not start"
    yield ready.address
    stop.set()
    thread.join(20)
    assert not thread.is_alive(), "server did not stop"


@pytest.fixture
def umask_022():
    """Run the test under umask 022 (files written through private temporary files must end up 0644)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
