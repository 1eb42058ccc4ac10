"""Data-parallel training (DDP, gloo on CPU): two replicas stay identical, train, and draw different data."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from training.checkpoint import list_checkpoints, load_checkpoint
from training.config import config_from_dict
from training.loop import Trainer

WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in trainer.model.named_parameters()}


def worker(rank: int, port: int, folder: str) -> None:
    """One replica: train a tiny GAN config for 3 steps and save initial and final generator weights."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        out = Path(folder)
        raw = {
            "model": {"copies": 2, "blocks": 1, "features": 4},
            "data": {"path": str(out / "slices.npy"), "train_range": [0, 8], "val_range": [8, 10], "seed": 3},
            "loss": {"lambda_gan": 0.1, "gan_ramp_steps": 2},
            "optim": {"lr": 1e-2, "steps": 3},
            "run": {"out": str(out / "run"), "checkpoint_every": 2, "validate_every": 0, "progress": False},
        }
        raw["run"].update(device="cpu", seed=1, log_every=1)
        trainer = Trainer(config_from_dict(raw))
        save_file(params(trainer), str(out / f"init{rank}.safetensors"))
        trainer.fit()
        save_file(params(trainer), str(out / f"final{rank}.safetensors"))
        first = trainer.train_data.sample(2).x  # what this rank would draw next
        save_file({"x": first.abs().contiguous()}, str(out / f"next{rank}.safetensors"))
        (out / f"seed{rank}.json").write_text(json.dumps({"data_seed": trainer.data_seed}))
    finally:
        dist.destroy_process_group()


def test_two_replicas_stay_identical_and_draw_different_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "slices.npy", rng.random((10, 16, 16)).astype(np.float32))
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    init = [load_file(str(tmp_path / f"init{r}.safetensors")) for r in range(WORLD)]
    final = [load_file(str(tmp_path / f"final{r}.safetensors")) for r in range(WORLD)]
    for key in final[0]:
        assert torch.equal(init[0][key], init[1][key]), key
        assert torch.equal(final[0][key], final[1][key]), f"replicas differ in {key}"
    assert any(not torch.equal(init[0][k], final[0][k]) for k in final[0])  # training happened
    seeds = [json.loads((tmp_path / f"seed{r}.json").read_text())["data_seed"] for r in range(WORLD)]
    assert seeds == [3, 4]
    nxt = [load_file(str(tmp_path / f"next{r}.safetensors"))["x"] for r in range(WORLD)]
    assert not torch.equal(nxt[0], nxt[1])  # replicas see different batches
    # rank 0 alone wrote the run; its checkpoints hold every rank's data RNG state
    assert (tmp_path / "run" / "bundle").is_dir() and (tmp_path / "run" / "log.csv").is_file()
    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    ranks = state["data_rng_ranks"]
    assert len(ranks) == WORLD and ranks[0] == state["data_rng"] and ranks[0] != ranks[1]
