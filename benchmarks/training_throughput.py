"""Training throughput of RGANCS (slices per second), fp32 and bf16 autocast, through the real Trainer.

Usage: python benchmarks/training_throughput.py [--features 128 --size 256 --batch 2 --steps 3 --device auto]
Times ``Trainer.train_step`` (a batch drawn and simulated with a new 5x radial mask per slice, forward through
every copy, data-fidelity + pixel loss, backward, clipping, Adam) after one warm-up step, on the bundled Colin27
slices zero-padded to ``size`` (or ``--data`` slices of that size); bf16 keeps A, A^H and the data-consistency
steps in complex64 as training does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recon_plugin.sample_data import load_colin_slices
from training.config import config_from_dict
from training.loop import Trainer


def padded_colin(size: int) -> np.ndarray:
    """The bundled slices zero-padded (or centre-cropped) to size x size."""
    slices = load_colin_slices()
    out = np.zeros((len(slices), size, size), np.float32)
    ny, nx = (min(n, size) for n in slices.shape[1:])
    iy, ix = (slices.shape[1] - ny) // 2, (slices.shape[2] - nx) // 2
    oy, ox = (size - ny) // 2, (size - nx) // 2
    out[:, oy : oy + ny, ox : ox + nx] = slices[:, iy : iy + ny, ix : ix + nx]
    return out


def time_steps(args: argparse.Namespace, data: Path, out: Path, bf16: bool) -> tuple[float, str]:
    """Median seconds of one training step, and the device it ran on."""
    n = len(np.load(data, mmap_mode="r"))
    config = config_from_dict(
        {
            "model": {"copies": args.copies, "blocks": args.blocks, "features": args.features},
            "data": {"path": str(data), "train_range": [0, n - 1], "val_range": [n - 1, n]},
            "optim": {"batch_size": args.batch, "steps": args.steps + 1},
            "run": {"out": str(out), "device": args.device, "bf16": bf16, "progress": False, "seed": 0},
        }
    )
    trainer = Trainer(config)
    trainer.train_step()  # warm-up
    times = []
    for _ in range(args.steps):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        start = time.perf_counter()
        trainer.train_step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), str(trainer.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("copies", 10), ("blocks", 1), ("features", 128), ("size", 256), ("batch", 2), ("steps", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, help=".npy of slices [n, size, size] (default: bundled slices, padded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        data = args.data or Path(tmp) / "slices.npy"
        if args.data is None:
            np.save(data, padded_colin(args.size))
        for bf16 in (False, True):
            median, device = time_steps(args, data, Path(tmp) / ("bf16" if bf16 else "fp32"), bf16)
            print(
                f"{'bf16' if bf16 else 'fp32'}: {args.copies}x{args.blocks}x{args.features}, {args.size}x{args.size}, "
                f"batch {args.batch} on {device} ({torch.get_num_threads()} threads): {median:.3f} s/step, "
                f"{args.batch / median:.3f} slices/s (median of {args.steps})"
            )


if __name__ == "__main__":
    main()
