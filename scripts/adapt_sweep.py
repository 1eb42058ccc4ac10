"""Scan-specific adaptation on training's real-data validation cases: SNR gain over the unadapted bundle as the
steps go (``recon_plugin.adaptation``; the reference is used only to score, never to adapt).

Usage::

    python scripts/adapt_sweep.py sample_data/weights/rgancs_cg_10x1x32i_mc_phase9 --steps 40 --every 8 \\
        [--lr 8e-4] [--holdout 0.4] [--splits 1] [--cg N] [--schedule constant|cosine] [--random-phase] \\
        [--split points|lines|mixed|auto] [--phase-average N] [--ema 0.9,0.95] [--swa-from 0.5] \\
        [--family radial|uniform|both] [--names a,b] \\
        [--fast-path auto] [--data ../shared/data/multicoil_kspace] [--device cpu|cuda|auto]

The cases are those of ``training.real_validation`` (the real brains at radial 5x and uniform R=3 + 24 ACS, with
their own mask seeds), so settings picked here do not use the evaluation's masks. Each case is normalised and
scored as the RGANCS reconstructor does; one line per case (SNR / SSIM gain at every scored step), then the mean
gains at every scored step. ``--phase-average N`` (N >= 2) also scores every copy with N passes at the global
phases e^(2 pi i k / N) averaged (the ``phase_average`` setting), printed after a ``|``. ``--ema D,...`` also scores
an exponential moving average of the copy's weights with each decay D, and ``--swa-from F`` their plain average
from the step at fraction F of the steps on (``torch.optim.swa_utils.AveragedModel``), each printed after its name.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from recon_plugin.adaptation import SCHEDULES, SPLITS, AdaptSettings, adapt_model
from recon_plugin.evaluation import Case
from recon_plugin.metrics import snr_db, ssim
from recon_plugin.model import load_bundle
from recon_plugin.reconstructors.base import batch_operator, resolve_device
from recon_plugin.reconstructors.fast_paths import FastModel, FastPath
from recon_plugin.reconstructors.rgancs import robust_scale
from training.config import DataConfig
from training.real_validation import real_validation_cases


def sweep_case(
    case: Case,
    model: torch.nn.Module,
    percentile: float,
    settings: AdaptSettings,
    path: FastPath,
    every: int,
    gains: dict[int, list[float]],
    ssim_gains: dict[int, list[float]],
    phase_average: int = 1,
    averaged_gains: dict[int, list[float]] | None = None,
    device: torch.device | None = None,
    averages: dict[str, tuple[float, int]] | None = None,
    average_gains: dict[str, dict[int, list[float]]] | None = None,
) -> str:
    """Adapt ``model`` to one case, scoring the copy every ``every`` steps; SNR and SSIM gains go into ``gains``
    and ``ssim_gains`` by step, and with ``phase_average`` >= 2 the SNR gain of that many phase passes (over the
    unadapted single pass) into ``averaged_gains``. ``device`` (default the CPU) runs the scoring and adapting.
    ``averages`` (name: (EMA decay or 0 for a plain average, first step)) are weight averages of the copy, scored
    beside it into ``average_gains[name]``."""
    device = device or torch.device("cpu")
    op, y = batch_operator([case.problem], device)
    scale = robust_scale(op.adjoint(y), percentile)
    y_norm = y / scale[:, None, None, None]

    def score(net: torch.nn.Module, passes: int = 1) -> tuple[float, float]:
        config = net.config
        net.config = dataclasses.replace(config, phase_average=passes)
        try:
            x = (FastModel(net, path, device)(y_norm, op) * scale[:, None, None])[0].cpu().numpy()
        finally:
            net.config = config
        return snr_db(case.reference, x), ssim(case.reference, x)

    base, base_ssim = score(model)
    row = [f"{base:.2f} dB / {base_ssim:.3f}"]
    averaged = phase_average >= 2 and averaged_gains is not None

    def score_averaged(step: int, net: torch.nn.Module) -> None:
        if averaged:
            gain = score(net, phase_average)[0] - base
            averaged_gains.setdefault(step, []).append(gain)
            row.append(f"| x{phase_average} {gain:+.2f}")

    score_averaged(0, model)
    kept: dict[str, AveragedModel] = {}

    def update_averages(step: int, net: torch.nn.Module) -> None:
        for name, (decay, first) in (averages or {}).items():
            if step < first:
                continue
            if name not in kept:
                fn = get_ema_multi_avg_fn(decay) if decay > 0 else None
                kept[name] = AveragedModel(net, multi_avg_fn=fn, use_buffers=True)
            kept[name].update_parameters(net)

    def on_step(step: int, net: torch.nn.Module) -> None:
        update_averages(step, net)
        if step % every == 0 or step == settings.steps:
            snr, structure = score(net)
            gains.setdefault(step, []).append(snr - base)
            ssim_gains.setdefault(step, []).append(structure - base_ssim)
            row.append(f"{step}: {snr - base:+.2f}/{structure - base_ssim:+.3f}")
            score_averaged(step, net)
            for name, avg in kept.items():
                gain = score(avg.module)[0] - base  # FastModel scores an eval-mode copy
                if average_gains is not None:
                    average_gains.setdefault(name, {}).setdefault(step, []).append(gain)
                row.append(f"{name} {gain:+.2f}")

    adapt_model(model, y_norm, op, settings, bf16=path.bf16, on_step=on_step)
    return "  ".join(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=8, help="score the adapted copy every N steps")
    parser.add_argument("--lr", type=float, default=AdaptSettings.lr)
    parser.add_argument("--holdout", type=float, default=AdaptSettings.holdout)
    parser.add_argument("--splits", type=int, default=AdaptSettings.splits)
    parser.add_argument("--cg", type=int, default=None, help="CG steps per copy while adapting (default: the model's)")
    parser.add_argument("--schedule", default=AdaptSettings.schedule, choices=SCHEDULES)
    parser.add_argument("--split", default=AdaptSettings.split, choices=SPLITS)
    parser.add_argument("--random-phase", action="store_true", help="turn each split by a random global phase")
    parser.add_argument("--family", default="radial", choices=["radial", "uniform", "both"])
    parser.add_argument("--names", default="", help="comma-separated brains (default: all five)")
    parser.add_argument("--phase-average", type=int, default=1, help="also score N averaged phase passes (N >= 2)")
    parser.add_argument("--ema", default="", help="comma-separated EMA decays of the weights to score beside the copy")
    parser.add_argument(
        "--swa-from",
        type=float,
        default=None,
        help="also score the plain weight average from this share of the steps on",
    )
    parser.add_argument("--fast-path", default="auto")
    parser.add_argument("--data", default="../shared/data/multicoil_kspace")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    args = parser.parse_args()
    device = resolve_device(args.device)
    bundle = load_bundle(args.bundle)
    percentile = float(bundle.normalisation.get("percentile", 99.0))
    path = FastPath.parse(args.fast_path, device)
    settings = AdaptSettings(
        steps=args.steps,
        lr=args.lr,
        holdout=args.holdout,
        splits=args.splits,
        cg_iterations=args.cg,
        schedule=args.schedule,
        random_phase=args.random_phase,
        split=args.split,
    )
    names = [n for n in args.names.split(",") if n]
    cases = [
        c
        for c in real_validation_cases(DataConfig(real_val_path=args.data))
        if (args.family == "both" or c.name.endswith(args.family + ("5" if args.family == "radial" else "3")))
        and (not names or c.name.split("/")[0] in names)
    ]
    gains: dict[int, list[float]] = {}
    ssim_gains: dict[int, list[float]] = {}
    averaged_gains: dict[int, list[float]] = {}
    averages = {f"ema{d}": (float(d), 1) for d in args.ema.split(",") if d}
    if args.swa_from is not None:
        averages[f"swa{args.swa_from}"] = (0.0, max(1, int(args.swa_from * args.steps)))
    average_gains: dict[str, dict[int, list[float]]] = {}
    print(f"{settings}, fast path {path.name}, device {device}")
    for case in cases:
        begin = time.perf_counter()
        row = sweep_case(
            case,
            bundle.model,
            percentile,
            settings,
            path,
            args.every,
            gains,
            ssim_gains,
            args.phase_average,
            averaged_gains,
            device,
            averages,
            average_gains,
        )
        print(f"{case.name:34s} {row}  ({time.perf_counter() - begin:.0f} s)", flush=True)
    print(
        "mean gain (dB/SSIM): "
        + "  ".join(f"{s}: {np.mean(g):+.2f}/{np.mean(ssim_gains[s]):+.3f}" for s, g in sorted(gains.items()))
    )
    for name, by_step in average_gains.items():
        print(f"mean gain {name} (dB): " + "  ".join(f"{s}: {np.mean(g):+.2f}" for s, g in sorted(by_step.items())))
    if averaged_gains:
        print(
            f"mean gain with {args.phase_average} phase passes (dB): "
            + "  ".join(f"{s}: {np.mean(g):+.2f}" for s, g in sorted(averaged_gains.items()))
        )


if __name__ == "__main__":
    main()
