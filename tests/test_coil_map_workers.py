"""Coil maps of an exam's planes are estimated in parallel, with no more workers than the gadget's threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from raw_helpers import tiny_3d

from recon_plugin import pipeline
from recon_plugin import sample_raw as sr
from recon_plugin.kspace import RetroSettings
from recon_plugin.pipeline import GadgetSettings, assemble, coil_map_workers, default_threads


@pytest.fixture(scope="module")
def scan() -> sr.SimulatedScan:
    return sr.build_raw(tiny_3d())  # 8 ky-kz planes, 4 coils


@pytest.fixture
def sixteen_cores(monkeypatch):
    """A 16-core process (default threads 16 // 4 = 4), whatever this machine has."""
    monkeypatch.setattr(pipeline, "available_cores", lambda: 16)
    monkeypatch.setattr(pipeline, "_PROCESS_THREADS", 16)
    assert default_threads() == 4


@pytest.fixture
def pools(monkeypatch) -> list[int]:
    """Record the size of every coil-map pool (a real pool still runs the work)."""
    sizes: list[int] = []

    class RecordingPool(ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):  # type: ignore[no-untyped-def]
            sizes.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(pipeline, "ThreadPoolExecutor", RecordingPool)
    return sizes


@pytest.mark.parametrize(
    ("pending", "threads", "expected"),
    [
        (8, 3, 3),  # the setting caps the workers
        (8, 1, 1),
        (8, 0, 4),  # 0: default_threads() = 16 // 4
        (2, 3, 2),  # never more workers than problems
        (0, 3, 1),
        (64, 32, 16),  # nor more than the cores
    ],
)
def test_worker_count_follows_the_threads_setting(sixteen_cores, pending, threads, expected) -> None:
    assert coil_map_workers(pending, threads) == expected


def test_the_gadgets_threads_cap_the_coil_map_pool(sixteen_cores, pools, scan) -> None:
    retro = RetroSettings(acceleration=4, calib=8)
    results = {}
    for threads in (3, 0, 1):
        settings = GadgetSettings(method="zero_filled", retro=retro, threads=threads)
        results[threads] = assemble(scan.header, scan.acquisitions, settings)
        assert all(item.problem.maps is not None for item in results[threads])
    # 8 planes: 3 workers as set, 4 by default (not one per core: 16), and no pool at all for 1 thread
    assert pools == [3, 4]
    for a, b in zip(results[3], results[1], strict=True):  # parallel or not, the same maps
        np.testing.assert_allclose(a.problem.maps, b.problem.maps, rtol=0, atol=1e-5)
