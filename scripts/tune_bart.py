#!/usr/bin/env python
"""Tune the lambdas of the BART CS baselines (CS-Wavelet, CS-TV) on real data at 5x.

    python scripts/tune_bart.py ../shared/data --out out/bart_tuning

Problems: 5x radial view-ordered masks (one seed per slice) on
(a) "multi": the fully sampled multi-coil brain slices in multicoil_kspace/
    (marcsous_head_8ch, ugmpi_GE_brain_4ch, ugmpi_MPRAGE_brain_4ch), maps by
    ``Problem.coil_maps`` (ESPIRiT) exactly as every method gets them;
(b) "single": single-coil complex slices of siat_brain_complex (validation
    blocks 15-16, slices 140-159; k = fft2c(x)).
The reference is the fully sampled k-space combined with the same maps.

Two stages per regulariser and group: a coarse log grid at ``--coarse-iterations``,
then a fine grid around the coarse best at ``--iterations`` (300, the default
of BartCS). Prints the tables and writes ``results.json`` and ``table.md`` to
``--out``. The data are read from their folder, never copied.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon_plugin.coils import sense_combine
from recon_plugin.errors import ReconError
from recon_plugin.masks import make_mask
from recon_plugin.metrics import snr_db, ssim
from recon_plugin.physics import fft2c
from recon_plugin.problem import Problem
from recon_plugin.reconstructors import ZeroFilled
from recon_plugin.reconstructors.bart_cs import BartCS

MULTI_DEFAULT = ("marcsous_head_8ch", "ugmpi_GE_brain_4ch", "ugmpi_MPRAGE_brain_4ch")
SINGLE_DEFAULT = (140, 143, 146, 149, 150, 153, 156, 159)
COARSE_DEFAULT = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FINE_STEPS_DEFAULT = (-0.5, -0.25, 0.0, 0.25, 0.5)


@dataclass
class Case:
    """One tuning slice: the undersampled Problem (with the maps BartCS would use) and its reference."""

    name: str
    problem: Problem
    reference: np.ndarray


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def build_cases(args: argparse.Namespace) -> dict[str, list[Case]]:
    """The single- and multi-coil tuning problems."""
    data = Path(args.data)
    cases: dict[str, list[Case]] = {"single": [], "multi": []}
    if "multi" in args.groups:
        helper = BartCS("wavelet", time_limit=args.time_limit)
        for i, name in enumerate(args.multi):
            full = np.load(data / "multicoil_kspace" / f"{name}_kspace.npy").astype(np.complex64)
            mask = make_mask("radial", full.shape[1:], args.acceleration, seed=args.seed + i, calib=args.calib).mask
            problem = Problem(kspace=full, mask=mask, meta={"slice": name})
            maps, _ = helper.coil_maps(problem)  # ESPIRiT on the undersampled data, as every method gets them
            problem.maps = maps
            cases["multi"].append(Case(name, problem, sense_combine(full, maps)))
    if "single" in args.groups:
        volume = np.load(data / "siat_brain_complex" / "images_lsq001-160.npy", mmap_mode="r")
        for i, index in enumerate(args.single):
            image = np.asarray(volume[index], dtype=np.complex64)
            mask = make_mask("radial", image.shape, args.acceleration, seed=args.single_seed + i, calib=args.calib).mask
            problem = Problem(kspace=fft2c(image)[None], mask=mask, meta={"slice": f"siat_{index}"})
            cases["single"].append(Case(f"siat_{index}", problem, image))
    return cases


def evaluate(
    cases: list[Case], regulariser: str, lambdas: list[float | None], iterations: int, args: argparse.Namespace
) -> list[dict]:
    """Reconstruct every case at every lambda (parallel single-threaded BART processes); one row per lambda.

    A lambda of None is BartCS's default for the cases' coil count.
    """
    recon = {
        lam: BartCS(regulariser, lam=lam, iterations=iterations, workers=1, time_limit=args.time_limit)
        for lam in lambdas
    }
    tasks = [(lam, case) for lam in lambdas for case in cases]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(lambda t: recon[t[0]].reconstruct(t[1].problem), tasks))
    rows = []
    for lam in lambdas:
        per = [(case, res) for (lam_t, case), res in zip(tasks, results, strict=True) if lam_t == lam]
        snrs = [snr_db(c.reference, r.image) for c, r in per]
        ssims = [ssim(c.reference, r.image) for c, r in per]
        secs = [r.meta["seconds"] for _, r in per]
        per_slice = {
            c.name: {"snr_db": s, "ssim": m, "seconds": t}
            for (c, _), s, m, t in zip(per, snrs, ssims, secs, strict=True)
        }
        rows.append(
            {
                "lambda": recon[lam].lambda_for(cases[0].problem),
                "iterations": iterations,
                "snr_db": float(np.mean(snrs)),
                "ssim": float(np.mean(ssims)),
                "seconds": float(np.mean(secs)),
                "per_slice": per_slice,
            }
        )
    return rows


def format_rows(title: str, rows: list[dict], best: float | None = None) -> str:
    """Markdown table lambda -> mean SNR / SSIM / seconds per slice."""
    lines = [f"**{title}**", "", "| lambda | iters | SNR dB | SSIM | s/slice |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " **(best)**" if best is not None and r["lambda"] == best else ""
        lines.append(
            f"| {r['lambda']:.3g}{mark} | {r['iterations']} | {r['snr_db']:.2f} | {r['ssim']:.4f} "
            f"| {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the shared data folder (with multicoil_kspace/ and siat_brain_complex/)")
    parser.add_argument("--out", default="out/bart_tuning", help="folder for results.json and table.md")
    parser.add_argument("--groups", default="single,multi", help="comma list of: single, multi")
    parser.add_argument("--regularisers", default="wavelet,tv", help="comma list of: wavelet, tv")
    parser.add_argument("--multi", default=",".join(MULTI_DEFAULT), help="multicoil_kspace slice names")
    parser.add_argument("--single", default=",".join(map(str, SINGLE_DEFAULT)), help="siat slice indices")
    parser.add_argument("--acceleration", type=float, default=5.0)
    parser.add_argument("--calib", type=int, default=24, help="fully sampled centre of the radial mask")
    parser.add_argument("--seed", type=int, default=100, help="mask seed of the first multi-coil slice (+1 per slice)")
    parser.add_argument("--single-seed", type=int, default=103, help="mask seed of the first single-coil slice")
    parser.add_argument("--coarse", default=",".join(f"{v:g}" for v in COARSE_DEFAULT), help="coarse lambdas")
    parser.add_argument("--coarse-iterations", type=int, default=100)
    parser.add_argument(
        "--fine-steps",
        default=",".join(f"{v:g}" for v in FINE_STEPS_DEFAULT),
        help="fine grid: coarse best x 10**step",
    )
    parser.add_argument(
        "--fine",
        default="",
        help="explicit fine lambdas at --iterations (skips the coarse stage), e.g. to extend a grid",
    )
    parser.add_argument(
        "--defaults", action="store_true", help="only evaluate BartCS's default lambdas at --iterations (confirmation)"
    )
    parser.add_argument("--iterations", type=int, default=300, help="iterations of the fine (final) stage")
    parser.add_argument("--workers", type=int, default=2, help="BART processes in parallel")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per slice")
    args = parser.parse_args(argv)
    args.groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    args.regularisers = [r.strip() for r in args.regularisers.split(",") if r.strip()]
    args.multi = [m.strip() for m in args.multi.split(",") if m.strip()]
    args.single = [int(s) for s in args.single.split(",") if s.strip()]

    start = time.perf_counter()
    try:
        cases = build_cases(args)
        report: dict = {"settings": {k: v for k, v in vars(args).items()}, "groups": {}}
        sections = []
        for group in args.groups:
            group_cases = cases[group]
            zero_filled = [ZeroFilled().reconstruct(c.problem).image for c in group_cases]
            zf = [snr_db(c.reference, x) for c, x in zip(group_cases, zero_filled, strict=True)]
            zf_ssim = [ssim(c.reference, x) for c, x in zip(group_cases, zero_filled, strict=True)]
            names = ", ".join(c.name for c in group_cases)
            head = (
                f"### {group}-coil ({len(group_cases)} slices: {names})\n\n"
                f"zero-filled: SNR {np.mean(zf):.2f} dB, SSIM {np.mean(zf_ssim):.4f}"
            )
            print(head, flush=True)
            sections.append(head)
            report["groups"][group] = {
                "slices": names,
                "zero_filled": {"snr_db": float(np.mean(zf)), "ssim": float(np.mean(zf_ssim))},
            }
            for reg in args.regularisers:
                if args.defaults:
                    coarse, best_coarse, fine_lams = [], None, [None]
                elif args.fine:
                    coarse, best_coarse = [], None
                    fine_lams = sorted(_floats(args.fine))
                else:
                    coarse = evaluate(group_cases, reg, list(_floats(args.coarse)), args.coarse_iterations, args)
                    best_coarse = max(coarse, key=lambda r: r["snr_db"])["lambda"]
                    fine_lams = sorted({float(f"{best_coarse * 10**s:.3g}") for s in _floats(args.fine_steps)})
                fine = evaluate(group_cases, reg, fine_lams, args.iterations, args)
                best = max(fine, key=lambda r: r["snr_db"])
                edge = len(fine_lams) > 1 and best["lambda"] in (fine_lams[0], fine_lams[-1])
                label = "default" if args.defaults else "chosen"
                chosen = (
                    f"{label} {reg} {group}-coil lambda: {best['lambda']:.3g} (SNR {best['snr_db']:.2f} dB, "
                    f"SSIM {best['ssim']:.4f}, {best['seconds']:.2f} s/slice at {args.iterations} iterations)"
                    + (" -- at the edge of the fine grid" if edge else "")
                )
                text = "\n\n".join(
                    [
                        *([format_rows(f"{reg}, {group}-coil, coarse", coarse, best_coarse)] if coarse else []),
                        format_rows(f"{reg}, {group}-coil, fine", fine, best["lambda"]),
                        chosen,
                    ]
                )
                print(text + "\n", flush=True)
                sections.append(text)
                report["groups"][group][reg] = {"coarse": coarse, "fine": fine, "chosen": best["lambda"]}
        minutes = (time.perf_counter() - start) / 60
        report["minutes"] = minutes
        print(f"total {minutes:.1f} min")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=1))
        (out / "table.md").write_text("\n\n".join(sections) + f"\n\ntotal {minutes:.1f} min\n")
    except (ReconError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
