"""Time one RGANCS forward pass (default 10x1x128 shared) on a 200x100 single-coil slice.

Usage: python benchmarks/forward_pass.py [--copies 10 --blocks 1 --features 128 --ny 200 --nx 100 --repeats 10]
Prints the median and the spread over repeats, after one warm-up pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from recon_plugin.masks import make_mask
from recon_plugin.model import ModelConfig, RecurrentProximalNet
from recon_plugin.physics import SenseOperator, fft2c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("copies", 10), ("blocks", 1), ("features", 128), ("ny", 200), ("nx", 100)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    net = RecurrentProximalNet(ModelConfig(copies=args.copies, blocks=args.blocks, features=args.features)).eval()
    mask = torch.from_numpy(make_mask("radial", (args.ny, args.nx), 5.0).mask.copy())
    op = SenseOperator(mask)
    x = torch.randn(args.batch, args.ny, args.nx, dtype=torch.complex64)
    y = fft2c(x).unsqueeze(1) * mask
    times = []
    with torch.inference_mode():
        net(y, op)
        for _ in range(args.repeats):
            start = time.perf_counter()
            net(y, op)
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in net.parameters())
    print(
        f"{args.copies}x{args.blocks}x{args.features} ({params} parameters), {args.ny}x{args.nx}, batch {args.batch}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads: median {statistics.median(times):.4f} s, "
        f"min {min(times):.4f} s, max {max(times):.4f} s per pass over {args.repeats} repeats"
    )


if __name__ == "__main__":
    main()
