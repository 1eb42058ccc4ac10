"""Training throughput of RGANCS (slices per second), fp32 and bf16 autocast, on this machine's CPU or GPU.

Usage: python benchmarks/training_throughput.py [--features 128 --size 256 --batch 2 --steps 3 --device auto]
Times full generator steps (forward through every copy, pixel + data-fidelity loss, backward, clipping, Adam)
on simulated single-coil slices with 5x radial masks, after one warm-up step; bf16 keeps A, A^H and the
data-consistency steps in complex64 as the trainer does.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from recon_plugin.masks import make_mask
from recon_plugin.model import ModelConfig, RecurrentProximalNet
from recon_plugin.model.precision import FullPrecisionOperator
from recon_plugin.physics import SenseOperator
from recon_plugin.reconstructors.base import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("copies", 10), ("blocks", 1), ("features", 128), ("size", 256), ("batch", 2), ("steps", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    n = args.size
    masks = torch.from_numpy(make_mask("radial", (n, n), 5.0, seed=0).mask.copy()).expand(args.batch, n, n)
    op = SenseOperator(masks.to(device))
    x = torch.randn(args.batch, n, n, dtype=torch.complex64, device=device)
    y = op.forward(x)
    config = ModelConfig(copies=args.copies, blocks=args.blocks, features=args.features)
    for bf16 in (False, True):
        median = _time_steps(config, op, x, y, device, bf16, args.steps)
        print(
            f"{'bf16' if bf16 else 'fp32'}: {args.copies}x{args.blocks}x{args.features}, {n}x{n}, "
            f"batch {args.batch} on {device} ({torch.get_num_threads()} threads): {median:.3f} s/step, "
            f"{args.batch / median:.3f} slices/s (median of {args.steps})"
        )


def _time_steps(
    config: ModelConfig,
    op: SenseOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    bf16: bool,
    steps: int,
) -> float:
    """Median seconds of one generator training step."""
    torch.manual_seed(0)
    net = RecurrentProximalNet(config).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    forward_op = FullPrecisionOperator(op, device.type) if bf16 else op

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            x_hat, outputs = net(y, forward_op)
        loss = (x_hat - x).abs().mean() + sum(((forward_op.forward(o) - y).abs() ** 2).mean() for o in outputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
