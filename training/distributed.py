"""Multi-process data-parallel training (DistributedDataParallel) started by ``torchrun``.

Run on N processes (one per GPU, or N CPU processes with gloo)::

    torchrun --nproc_per_node N -m training.fit_cli --config run.toml [--resume RUN]

:func:`init_from_env` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and starts the process group: NCCL when the run uses CUDA
(``LOCAL_RANK`` picks the GPU), gloo on CPU. The Trainer notices an initialised group on its own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and the bundle."""
        return self.rank == 0


def current() -> DistInfo:
    """The group of an initialised process group, else a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_env(device: str = "auto") -> DistInfo:
    """Start the process group when launched by torchrun with ``WORLD_SIZE`` > 1; otherwise do nothing.

    ``device`` is ``[run].device``: "cpu" forces gloo, otherwise NCCL when CUDA is present.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    info = current()
    if info.is_main:
        log.info("process group: %d ranks (%s)", info.world_size, backend)
    return info


def shutdown() -> None:
    """Wait for every rank, then destroy the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def quiet_other_ranks(info: DistInfo) -> None:
    """Only rank 0 logs progress: other ranks log warnings and errors only."""
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("training", "recon_plugin"):
            logging.getLogger(name).setLevel(logging.WARNING)
