"""A bank of simulated training batches, filled by producer processes ahead of the training loop.

Simulating a scanner-like example (coil maps, noise, masks, ESPIRiT on its own calibration region,
the CG-SENSE initial image) costs as much as a training step on a CPU. The bank takes it off the
step: producer processes simulate numbered batches while the loop trains, and every batch is used
about ``reuse`` times (with a new global phase and, for square matrices, a random transpose each
time: both commute with the SENSE model, so the example stays exact).

The schedule is a function of the step alone, so a run is seeded and resumes exactly:

* batch ``b`` is simulated from the seed ``(data seed, b)``, on whichever process;
* at step ``t`` the bank holds batches ``w .. w + batches - 1`` with ``w = t // reuse``, and the step
  uses batch ``w + r`` with ``r`` drawn from the seed ``(data seed, t)``;
* a batch that has left the bank never comes back, and a resumed run rebuilds the bank of its step,
  so no example is duplicated across a resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recon_plugin.physics import SenseOperator

from .data import Batch

log = logging.getLogger(__name__)

#: Salt of the seeds that pick a batch and its augmentation for a step (batches use the bare id).
_PICK = 0x5EED


@dataclass
class BankedBatch:
    """One simulated batch in plain arrays (cheap to send between processes)."""

    batch_id: int
    y: np.ndarray
    mask: np.ndarray
    maps: np.ndarray | None
    x: np.ndarray
    x0: np.ndarray | None

    def to_batch(self) -> Batch:
        """The training Batch (tensors share the arrays' memory)."""
        maps = None if self.maps is None else torch.from_numpy(self.maps)
        op = SenseOperator(torch.from_numpy(self.mask), maps)
        x0 = None if self.x0 is None else torch.from_numpy(self.x0)
        return Batch(y=torch.from_numpy(self.y), op=op, x=torch.from_numpy(self.x), x0=x0)


def simulate_batch(
    sample: Callable[[int, list[int]], Batch], batch_id: int, batch_size: int, seed: int, init_iterations: int
) -> BankedBatch:
    """Batch ``batch_id``: ``sample(batch_size, [seed, batch_id])`` plus, when ``init_iterations`` > 0, its
    CG-SENSE initial image (what the network's ``init = "cg_sense"`` computes)."""
    batch = sample(batch_size, [seed, batch_id])
    x0 = None
    if init_iterations > 0:
        with torch.no_grad():
            x0 = batch.op.cg_sense(batch.y, init_iterations).numpy()
    maps = batch.op.maps
    return BankedBatch(
        batch_id=batch_id,
        y=batch.y.numpy(),
        mask=batch.op.mask.numpy(),
        maps=None if maps is None else maps.expand(batch.y.shape[0], -1, -1, -1).contiguous().numpy(),
        x=batch.x.numpy(),
        x0=x0,
    )


# ----------------------------------------------------------------------------- producer processes
_WORKER: dict[str, Any] = {}


def _worker_init(config: dict[str, Any], seed_offset: int, threads: int, nice: int = 0) -> None:
    """Build the training source once per producer process (its own copy of the slices)."""
    if nice:
        os.nice(nice)  # the BART subprocesses it starts inherit it
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    from .config import config_from_dict
    from .sources import image_train_source

    _WORKER["source"] = image_train_source(config_from_dict(config), seed_offset)


def _worker_batch(batch_id: int, batch_size: int, seed: int, init_iterations: int) -> BankedBatch:
    return simulate_batch(_WORKER["source"].sample_seeded, batch_id, batch_size, seed, init_iterations)


class SimulationBank:
    """Batches for training steps (module docstring). ``workers`` = 0 simulates in this process on demand.

    ``config`` is the run's configuration as a dict (producer processes rebuild the training source
    from it); ``source`` is this process's own training source, used when ``workers`` is 0.
    """

    def __init__(
        self,
        *,
        config: dict[str, Any],
        source: Any,
        batch_size: int,
        seed: int,
        batches: int,
        reuse: int,
        workers: int = 1,
        nice: int = 0,
        init_iterations: int = 0,
        seed_offset: int = 0,
        augment: bool = True,
    ) -> None:
        if batches < 1 or reuse < 1 or workers < 0:
            raise ValueError(f"bank needs batches >= 1, reuse >= 1, workers >= 0; got {batches}, {reuse}, {workers}")
        self.batch_size, self.seed, self.batches, self.reuse = batch_size, seed, batches, reuse
        self.init_iterations, self.augment = init_iterations, augment
        self.source = source
        self._held: dict[int, BankedBatch | Future] = {}
        self._pool: ProcessPoolExecutor | None = None
        if workers:
            threads = max(1, (os.cpu_count() or 2) // (workers + 1))
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(config, seed_offset, threads, nice),
            )
        #: Batch ids used by the latest steps (for logs and tests).
        self.last_id = -1
        self.simulated = 0

    def window(self, step: int) -> range:
        """The batch ids the bank holds at ``step``."""
        start = step // self.reuse
        return range(start, start + self.batches)

    def pick(self, step: int) -> int:
        """The batch id used by ``step``."""
        rng = np.random.default_rng([self.seed, step, _PICK])
        return self.window(step).start + int(rng.integers(self.batches))

    def _submit(self, batch_id: int) -> None:
        if batch_id in self._held:
            return
        args = (batch_id, self.batch_size, self.seed, self.init_iterations)
        if self._pool is None:
            self._held[batch_id] = simulate_batch(self.source.sample_seeded, *args)
        else:
            self._held[batch_id] = self._pool.submit(_worker_batch, *args)
        self.simulated += 1

    def batch(self, step: int) -> Batch:
        """The (augmented) batch of training step ``step``; blocks until it is simulated."""
        window = self.window(step)
        for old in [b for b in self._held if b < window.start]:
            item = self._held.pop(old)
            if isinstance(item, Future):
                item.cancel()
        wanted = self.pick(step)
        if self._pool is None:
            self._submit(wanted)
        else:  # keep the producers one window ahead: this bank and the next one are queued in order
            for b in range(window.start, window.stop + self.batches):
                self._submit(b)
        item = self._held[wanted]
        if isinstance(item, Future):
            item = item.result()
            self._held[wanted] = item
        self.last_id = wanted
        batch = item.to_batch()
        return self._augmented(batch, step) if self.augment else batch

    def _augmented(self, batch: Batch, step: int) -> Batch:
        """A new global phase, and a transpose of square matrices: exact for the SENSE model (both commute with
        the centred FFT and the coil maps' product)."""
        rng = np.random.default_rng([self.seed, step, _PICK, 1])
        phase = torch.tensor(complex(math.cos(t := float(rng.uniform(0, 2 * math.pi))), math.sin(t)))
        phase = phase.to(torch.complex64)
        y, x, x0 = batch.y * phase, batch.x * phase, None if batch.x0 is None else batch.x0 * phase
        mask, maps = batch.op.mask, batch.op.maps
        if y.shape[-1] == y.shape[-2] and rng.random() < 0.5:
            y, x, mask = y.transpose(-2, -1), x.transpose(-2, -1), mask.transpose(-2, -1)
            x0 = None if x0 is None else x0.transpose(-2, -1)
            maps = None if maps is None else maps.transpose(-2, -1)
        contiguous = [None if t is None else t.contiguous() for t in (y, x, x0, mask, maps)]
        y, x, x0, mask, maps = contiguous
        return Batch(y=y, op=SenseOperator(mask, maps), x=x, x0=x0)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the producer processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._held.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()
