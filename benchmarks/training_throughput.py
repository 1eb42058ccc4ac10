"""Training throughput of RGANCS in examples per hour, stage by stage, through the real Trainer.

Usage::

    python benchmarks/training_throughput.py --config configs/multicoil/cg_10x1x32_cpu.toml [--steps 12]
        [--warmup 4] [--reuse 4] [--bank-batches 8] [--nice 10] [--json FILE] [--profile N]
        [--stages inline,fused,bank,nice,channels_last,allocator]

Every stage trains the same model on the same configuration (data, crops, coils, masks); each adds one change:

* ``inline``: as the configuration was shipped before the bank: every batch simulated inside the step, A^H A as
  separate autograd products, the zero-weight data-fidelity term computed and back-propagated (the CG-SENSE
  initial image is now computed without a graph in every stage, so this baseline is slightly faster than the
  old code: the ratios are conservative);
* ``fused``: the fused A^H A node and no work for zero-weight terms;
* ``bank``: batches from the simulation bank (one producer process, each batch used ``--reuse`` times);
* ``nice``: the bank's producer niced by ``--nice`` (``[data] bank_nice``), so that it yields the cores to the
  step's threads and simulates while the step waits;
* ``channels_last``: the network's weights (hence its activations) in channels_last memory (``[run] channels_last``;
  "auto" turns it on with bf16, where oneDNN's bf16 convolutions are faster in that layout);
* ``allocator``: glibc keeps freed memory for the next step (:func:`recon_plugin.allocator.keep_freed_memory`, which
  ``recon-train`` applies to its process) instead of mapping every block above 32 MiB afresh. It cannot be undone
  in a process, so it always runs last (stages run in the order above, whatever the order given).

Precision follows ``run.bf16 = "auto"`` (bf16 only on CUDA or a CPU with native bf16; ``--bf16 on|off`` forces
it). A stage's figure is the wall time of ``--steps`` steps after ``--warmup`` steps (the bank's start-up fill
is in the warm-up), so waiting for the producer counts. Run it on an otherwise idle machine: stages are timed
one after the other, and other jobs on the cores change the figures several-fold. ``--profile N`` runs the timed
steps under the torch profiler (which slows them) and prints the N operators with the most self CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from recon_plugin.allocator import keep_freed_memory
from recon_plugin.physics import SenseOperator
from training.config import load_config
from training.loop import Trainer

STAGES = ("inline", "fused", "bank", "nice", "channels_last", "allocator")


def _unfused_normal(self: SenseOperator, x: torch.Tensor) -> torch.Tensor:
    return self.adjoint(self.forward(x))


def run_stage(stage: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Seconds for ``args.steps`` steps of ``stage`` after the warm-up, and examples per hour."""
    cfg = load_config(args.config)
    cfg.run.out, cfg.run.progress, cfg.run.init_weights = str(out), False, ""
    cfg.run.bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    upto = STAGES[: STAGES.index(stage) + 1]  # each stage keeps every change of the stages before it
    cfg.data.bank_batches = args.bank_batches if "bank" in upto else 0
    cfg.data.bank_reuse, cfg.data.bank_workers = args.reuse, 1
    cfg.data.bank_nice = args.nice if "nice" in upto else 0
    cfg.run.channels_last = "channels_last" in upto
    if stage == "allocator" and not keep_freed_memory():
        print("allocator: glibc's mallopt is unavailable or RECON_KEEP_FREED_MEMORY is off: same as channels_last")
    cfg.data.val_range = [cfg.data.val_range[0], cfg.data.val_range[0] + 1] if cfg.data.val_range else None
    original = SenseOperator.normal
    if stage == "inline":
        cfg.loss.fidelity_weight = cfg.loss.fidelity_weight or 1e-30  # computed and back-propagated, as before
        SenseOperator.normal = _unfused_normal  # type: ignore[method-assign]
    try:
        trainer = Trainer(cfg)
        for _ in range(args.warmup):
            trainer.train_step()
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.profile else None
        start = time.perf_counter()
        with profiler or contextlib.nullcontext():
            for _ in range(args.steps):
                trainer.train_step()
        seconds = time.perf_counter() - start
        if profiler is not None:
            table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile)
            print(f"--- {stage}: the {args.profile} operators with the most self CPU time over {args.steps} steps")
            print(table, flush=True)
    finally:
        SenseOperator.normal = original  # type: ignore[method-assign]
        if "trainer" in locals() and trainer.bank is not None:
            trainer.bank.close()
    examples = args.steps * cfg.optim.batch_size
    return {
        "stage": stage,
        "seconds_per_step": seconds / args.steps,
        "examples_per_hour": examples * 3600 / seconds,
        "bf16": trainer.bf16,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/multicoil/cg_10x1x32_cpu.toml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--reuse", type=int, default=4)
    parser.add_argument("--bank-batches", type=int, default=8)
    parser.add_argument("--nice", type=int, default=10, help="the nice stage's producer niceness (data.bank_nice)")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also print each stage's N costliest operators (profiled)"
    )
    parser.add_argument("--markdown", type=Path, help="put the table into this file's training-throughput block")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        parser.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    stages.sort(key=STAGES.index)  # the allocator stage cannot be undone: it runs last
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        for stage in stages:
            rows.append(run_stage(stage, args, Path(tmp) / stage))
            first = rows[0]["examples_per_hour"]
            r = rows[-1]
            print(
                f"{stage:7s} {r['seconds_per_step']:6.2f} s/step  {r['examples_per_hour']:8.0f} examples/h  "
                f"x{r['examples_per_hour'] / first:.2f}  (bf16 {r['bf16']}, {r['threads']} threads)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"config": str(args.config), "rows": rows}, indent=2) + "\n")
    if args.markdown:
        fill_markdown(args.markdown, markdown_table(rows, args))


def markdown_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The stages as a Markdown table, with what was run and on which CPU."""
    first = rows[0]["examples_per_hour"]
    lines = [
        f"`python benchmarks/training_throughput.py --config {args.config} --steps {args.steps} --warmup "
        f"{args.warmup} --reuse {args.reuse} --bank-batches {args.bank_batches} --nice {args.nice}` on {cpu_name()} "
        f"({rows[0]['threads']} torch threads, bf16 {'on' if rows[0]['bf16'] else 'off'}):",
        "",
        "| stage | s/step | examples/h | vs inline |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']} | {r['seconds_per_step']:.2f} | {r['examples_per_hour']:.0f} | "
        f"{r['examples_per_hour'] / first:.2f}x |"
        for r in rows
    ]
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "this CPU"


def fill_markdown(path: Path, table: str) -> None:
    """Replace the ``<!-- training-throughput -->`` ... ``<!-- /training-throughput -->`` block of ``path``."""
    text = path.read_text()
    block = re.compile(r"(<!-- training-throughput -->\n).*?(<!-- /training-throughput -->)", re.S)
    if not block.search(text):
        raise SystemExit(f"{path} has no <!-- training-throughput --> block")
    path.write_text(block.sub(lambda m: f"{m.group(1)}{table}\n{m.group(2)}", text))


if __name__ == "__main__":
    main()
