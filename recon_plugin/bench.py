"""``recon-plugin bench``: zero-filled, RGANCS fast paths and BART CS timed on the same slices and masks.

For every case (matrix and coil count) the same simulated slices (bundled Colin27 brain, smooth phase,
simulated coil maps given to every method, 5x radial view-ordered masks) go through every method.
RGANCS is timed through the product's reconstructor (host -> device -> host included) for each fast
path: latency per slice at batch 1 (p50/p95), throughput at each batch size, peak memory, and the
image SNR against the fully sampled reference, compared with fp32 (:data:`SNR_TOLERANCE_DB`).
BART runs one slice at a time (latency) and with one process per core (throughput). Cold start is a
fresh Python process from its start to the first reconstructed image.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cpu_features
from .errors import BartFailedError, BartNotFoundError, InvalidInputError, ReconError
from .masks import make_mask
from .metrics import snr_db
from .model import ModelConfig, load_bundle
from .problem import Problem
from .reconstructors import RGANCS, ZeroFilled
from .reconstructors.base import resolve_device
from .reconstructors.fast_paths import SNR_TOLERANCE_DB, FastPath, default_fast_path
from .sample_data import load_colin_slices
from .simulate import simulate_problem, simulated_coil_maps, with_smooth_phase

#: Seconds one BART slice may take in the benchmark (``bench --bart-time-limit``).
DEFAULT_BART_TIME_LIMIT = 60.0

#: Dense bf16 tensor-core peak (FLOP/s) by GPU name fragment, for the roofline estimate.
GPU_BF16_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}

MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"


@dataclass(frozen=True)
class Case:
    """One benchmark matrix: ny x nx with ``coils`` receive coils."""

    ny: int
    nx: int
    coils: int

    @property
    def name(self) -> str:
        return f"{self.ny}x{self.nx}, {self.coils} coil{'s' if self.coils > 1 else ''}"


FULL_CASES = (Case(200, 100, 1), Case(200, 100, 8), Case(256, 256, 8))
#: The quick (CI) case is the one the CPU speed target is stated on: a 256x256 8-coil slice.
QUICK_CASES = (Case(256, 256, 8),)
FULL_BATCHES = (1, 4, 16, 64)
QUICK_BATCHES = (1, 4)


@dataclass
class Row:
    """One method (or RGANCS fast path) on one case."""

    case: str
    method: str
    path: str = ""
    p50_ms: float | None = None
    p95_ms: float | None = None
    throughput: dict[int, float] = field(default_factory=dict)  # batch size -> slices/s
    peak_mb: float | None = None
    snr_db: float | None = None
    dsnr_db: float | None = None  # max |SNR - SNR(fp32)| over slices
    note: str = ""

    @property
    def best_throughput(self) -> float | None:
        return max(self.throughput.values()) if self.throughput else None


@dataclass
class BenchReport:
    """Everything one ``bench`` run measured, with the machine it ran on."""

    hardware: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    cold_start: dict[str, float] = field(default_factory=dict)
    roofline: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    #: Named errors that cut a measurement short (e.g. a BART slice over ``bart_time_limit``); the rest stands.
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``json.dump``."""
        return {
            "hardware": self.hardware,
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "cold_start_s": self.cold_start,
            "roofline": self.roofline,
            "ratios": self.ratios,
            "failures": self.failures,
        }


# ------------------------------------------------------------------------------------------ data
def _fit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop or zero-pad to ``shape``."""
    out = np.zeros(shape, image.dtype)
    sy, sx = (min(a, b) for a, b in zip(image.shape, shape, strict=True))
    iy, ix = (image.shape[0] - sy) // 2, (image.shape[1] - sx) // 2
    oy, ox = (shape[0] - sy) // 2, (shape[1] - sx) // 2
    out[oy : oy + sy, ox : ox + sx] = image[iy : iy + sy, ix : ix + sx]
    return out


def bench_problems(case: Case, count: int, seed: int = 0) -> list[Problem]:
    """``count`` simulated slices of the case: Colin27 magnitudes with smooth phase, given coil maps, 5x masks."""
    slices = load_colin_slices()
    picks = np.linspace(2, len(slices) - 3, count).round().astype(int)
    rng = np.random.default_rng(seed)
    maps = simulated_coil_maps((case.ny, case.nx), case.coils) if case.coils > 1 else None
    problems = []
    for i, k in enumerate(picks):
        image = with_smooth_phase(_fit(slices[k], (case.ny, case.nx)), rng)
        mask = make_mask("radial", (case.ny, case.nx), 5.0, seed=seed + i).mask
        problems.append(simulate_problem(image, mask, maps=maps, meta={"slice": int(k)}))
    return problems


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentiles(times: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1e3, p95 * 1e3


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def _peak_memory(device: torch.device, row: Row) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        row.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # Linux reports kilobytes: the process's peak resident set so far
        row.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _snr(problems: Sequence[Problem], images: Sequence[np.ndarray]) -> list[float]:
    return [snr_db(p.reference, im) for p, im in zip(problems, images, strict=True)]


def bench_rgancs(
    bundle: str | Path,
    case: Case,
    problems: list[Problem],
    path: str,
    device: torch.device,
    batches: Sequence[int],
    repeats: int,
    reference_snr: list[float] | None,
) -> tuple[Row, list[float]]:
    """Time one fast path of RGANCS on the case; returns the row and the per-slice SNRs."""
    row = Row(case=case.name, method="rgancs", path=FastPath.parse(path, device).name)
    rec = RGANCS(bundle, device=device, batch_size=1, fast_path=path)
    with _peak_memory(device, row):
        rec.reconstruct_batch(problems[:1])  # warm-up (compiles, autotunes, allocates)
        images = [r.image for r in rec.reconstruct_batch(problems)]
        times = [_timed(lambda p=p: rec.reconstruct_batch([p]), device) for _ in range(repeats) for p in problems]
        row.p50_ms, row.p95_ms = _percentiles(times)
        row.throughput[1] = 1e3 / row.p50_ms
        for batch in batches:
            if batch == 1:
                continue
            rec.batch_size = batch
            chunk = [problems[i % len(problems)] for i in range(batch)]
            rec.reconstruct_batch(chunk)  # warm-up for this shape
            best = statistics.median(_timed(lambda c=chunk: rec.reconstruct_batch(c), device) for _ in range(repeats))
            row.throughput[batch] = batch / best
    snrs = _snr(problems, images)
    row.snr_db = statistics.fmean(snrs)
    if reference_snr is not None:
        row.dsnr_db = max(abs(a - b) for a, b in zip(snrs, reference_snr, strict=True))
        if row.dsnr_db > SNR_TOLERANCE_DB:
            row.note = f"SNR moved by more than {SNR_TOLERANCE_DB} dB: not usable"
    return row, snrs


def bench_zero_filled(case: Case, problems: list[Problem], repeats: int) -> Row:
    """Zero-filled (A^H y) on the CPU, one slice at a time and as one batch."""
    row = Row(case=case.name, method="zero_filled", path="cpu")
    rec, cpu = ZeroFilled(), torch.device("cpu")
    times = [_timed(lambda p=p: rec.reconstruct_batch([p]), cpu) for _ in range(repeats) for p in problems]
    row.p50_ms, row.p95_ms = _percentiles(times)
    whole = statistics.median(_timed(lambda: rec.reconstruct_batch(problems), cpu) for _ in range(repeats))
    row.throughput = {1: 1e3 / row.p50_ms, len(problems): len(problems) / whole}
    row.snr_db = statistics.fmean(_snr(problems, [r.image for r in rec.reconstruct_batch(problems)]))
    return row


def bench_bart(
    case: Case, problems: list[Problem], regulariser: str, throughput: bool, time_limit: float = DEFAULT_BART_TIME_LIMIT
) -> Row:
    """BART ``pics`` (tuned lambda, 300 iterations): latency one slice at a time with as many OpenMP threads as
    torch has (the same cores as RGANCS's latency); throughput one single-threaded process per core. Each slice
    may take ``time_limit`` seconds (BartTimeoutError beyond)."""
    from .reconstructors.bart_cs import BartCS

    method = "cs_wavelet" if regulariser == "wavelet" else "cs_tv"
    threads = torch.get_num_threads()
    row = Row(case=case.name, method=method, path=f"bart ({threads} thread{'s' if threads > 1 else ''})")
    single = BartCS(regulariser, workers=1, threads=threads, time_limit=time_limit)  # type: ignore[arg-type]
    times, images = [], []
    for p in problems:
        start = time.perf_counter()
        images.append(single.reconstruct_batch([p])[0].image)
        times.append(time.perf_counter() - start)
    row.p50_ms, row.p95_ms = _percentiles(times)
    row.throughput[1] = 1e3 / row.p50_ms
    if throughput and len(problems) > 1:
        workers = os.cpu_count() or 1
        start = time.perf_counter()
        BartCS(regulariser, workers=workers, time_limit=time_limit).reconstruct_batch(problems)  # type: ignore[arg-type]
        row.throughput[len(problems)] = len(problems) / (time.perf_counter() - start)
        row.note = f"{workers} BART processes"
    row.snr_db = statistics.fmean(_snr(problems, images))
    return row


def cold_start(bundle: str | Path, device: torch.device, case: Case, path: str) -> float:
    """Seconds from a fresh Python process's start to its first RGANCS image (imports, weights, first slice)."""
    code = (
        "import sys, torch\n"
        "from recon_plugin.bench import Case, bench_problems\n"
        "from recon_plugin.reconstructors import RGANCS\n"
        f"p = bench_problems(Case({case.ny}, {case.nx}, {case.coils}), 1)\n"
        f"RGANCS({str(bundle)!r}, device={str(device)!r}, fast_path={path!r}).reconstruct_batch(p)\n"
        "print('first image', flush=True)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or "first image" not in done.stdout:
        raise ReconError(f"cold-start process failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds


# ------------------------------------------------------------------------------------------ roofline
def flops_per_slice(config: ModelConfig, case: Case) -> dict[str, float]:
    """FLOPs of one forward pass on one slice (a multiply-add = 2 FLOPs): convolutions and FFTs.

    Per copy the proximal has a 1x1 projection (channels -> F), ``blocks`` x two 3x3 F -> F convolutions
    and a 1x1 head (F -> F -> F -> channels); each gradient data-consistency step does one forward and
    one adjoint 2D FFT per coil (5 N log2 N FLOPs each); the input A^H y adds one more per coil.
    """
    f, c, pixels = config.features, config.channels, case.ny * case.nx
    macs_per_pixel = c * f + config.blocks * 2 * 9 * f * f + f * f + f * f + f * c
    conv = 2.0 * macs_per_pixel * pixels * config.copies
    fft_one = 5.0 * pixels * np.log2(pixels)
    ffts = fft_one * case.coils * (2 * config.copies + 1)
    return {"conv_gflop": conv / 1e9, "fft_gflop": ffts / 1e9, "total_gflop": (conv + ffts) / 1e9}


def gpu_peak(device: torch.device) -> tuple[str, float | None]:
    """(GPU name, dense bf16 peak FLOP/s or None when unknown)."""
    name = torch.cuda.get_device_name(device)
    for fragment, peak in GPU_BF16_PEAK.items():
        if fragment in name:
            return name, peak
    return name, None


# ------------------------------------------------------------------------------------------ machine
def hardware(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_native_bf16": cpu_features.native_bf16(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from .bart import bart_version

        info["bart"] = bart_version()
    except ReconError:
        info["bart"] = "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
    info["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return info


def default_paths(device: torch.device, quick: bool) -> list[str]:
    """The fast paths worth timing on ``device`` (fp32 first: every other path is compared with it).

    bf16 paths are timed on a CPU only when it computes bf16 natively: elsewhere it is emulated and tens of
    times slower, never a default. ``quick`` times fp32 and the device's default path.
    """
    if quick:
        return list(dict.fromkeys(["fp32", default_fast_path(device).name]))
    if device.type == "cuda":
        paths = ["fp32", "bf16", "channels_last", "bf16+channels_last", "bf16+channels_last+compile"]
        paths.append("bf16+channels_last+compile+cuda_graphs")
    else:
        paths = ["fp32", "channels_last", "compile"]
        if torch.backends.mkldnn.is_available():
            paths.insert(2, "mkldnn")
        if cpu_features.native_bf16():
            paths[1:1] = ["bf16", "bf16+channels_last"]
    return paths


# ------------------------------------------------------------------------------------------ run
def run_bench(
    bundle: str | Path,
    *,
    device: str = "auto",
    quick: bool = False,
    cases: Sequence[Case] | None = None,
    batches: Sequence[int] | None = None,
    paths: Sequence[str] | None = None,
    slices: int | None = None,
    repeats: int | None = None,
    bart: bool = True,
    cold: bool = True,
    bart_time_limit: float = DEFAULT_BART_TIME_LIMIT,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchReport:
    """Run the benchmark; ``quick`` is the CI mode (one case, few batches and repeats, one BART slice).

    A BART failure (a slice over ``bart_time_limit`` seconds, a crash) does not lose the run: its row carries
    the error, ``report.failures`` names it, and the other measurements go on."""
    if not (math.isfinite(bart_time_limit) and bart_time_limit > 0):
        raise InvalidInputError(f"bart_time_limit must be a finite number of seconds > 0, got {bart_time_limit!r}")
    dev = resolve_device(device)
    cases = tuple(cases or (QUICK_CASES if quick else FULL_CASES))
    batches = tuple(batches or (QUICK_BATCHES if quick else FULL_BATCHES))
    paths = list(paths or default_paths(dev, quick))
    if "fp32" not in paths:
        paths.insert(0, "fp32")
    paths.sort(key=lambda p: p != "fp32")
    for p in paths:
        FastPath.parse(p, dev)  # a bad path is an error before anything runs
    slices = slices or (2 if quick else 8)
    repeats = repeats or (2 if quick else 5)
    if slices < 1 or repeats < 1 or min(batches) < 1:
        raise InvalidInputError("slices, repeats and batch sizes must be >= 1")
    report = BenchReport(
        hardware=hardware(dev),
        settings={
            "bundle": Path(bundle).name,
            "quick": quick,
            "slices": slices,
            "repeats": repeats,
            "batches": list(batches),
            "paths": paths,
            "default_path": default_fast_path(dev).name,
            "mask": "radial view-ordered 5x",
        },
    )
    model_config = load_bundle(bundle).model.config
    report.settings["model"] = f"{model_config.copies}x{model_config.blocks}x{model_config.features}"
    for case in cases:
        progress(f"{case.name}: simulating {slices} slices")
        problems = bench_problems(case, slices)
        report.rows.append(bench_zero_filled(case, problems, repeats))
        base: list[float] | None = None
        for path in paths:
            progress(f"{case.name}: RGANCS {path}")
            row, snrs = bench_rgancs(bundle, case, problems, path, dev, batches, repeats, base)
            base = base if base is not None else snrs
            report.rows.append(row)
        if bart:
            for regulariser in ("wavelet", "tv"):
                progress(f"{case.name}: BART {regulariser}")
                try:
                    report.rows.append(
                        bench_bart(case, problems[: 1 if quick else 4], regulariser, not quick, bart_time_limit)
                    )
                except BartNotFoundError as exc:
                    report.rows.append(Row(case=case.name, method=f"cs_{regulariser}", note=str(exc)))
                except BartFailedError as exc:
                    text = f"{type(exc).__name__}: {exc}"
                    report.rows.append(Row(case=case.name, method=f"cs_{regulariser}", note=text))
                    report.failures.append(f"{case.name} cs_{regulariser}: {text}")
        flops = flops_per_slice(model_config, case)
        report.roofline[case.name] = _roofline(flops, report.rows, case, dev)
    report.ratios = _ratios(report.rows, default_fast_path(dev).name)
    if cold:
        case = cases[0]
        for path in dict.fromkeys(["fp32", default_fast_path(dev).name]):
            progress(f"cold start ({path})")
            report.cold_start[path] = cold_start(bundle, dev, case, path)
    return report


def _roofline(flops: dict[str, float], rows: list[Row], case: Case, device: torch.device) -> dict[str, Any]:
    mine = [r for r in rows if r.case == case.name and r.method == "rgancs" and not r.note and r.best_throughput]
    out: dict[str, Any] = dict(flops)
    if not mine:
        return out
    best = max(mine, key=lambda r: r.best_throughput or 0.0)
    achieved = flops["total_gflop"] * 1e9 * (best.best_throughput or 0.0)
    out.update(best_path=best.path, best_slices_per_s=best.best_throughput, achieved_tflops=achieved / 1e12)
    if device.type == "cuda":
        name, peak = gpu_peak(device)
        if peak:
            out.update(gpu=name, peak_tflops=peak / 1e12, roofline_slices_per_s=peak / (flops["total_gflop"] * 1e9))
            out["fraction_of_peak"] = achieved / peak
    return out


def _ratios(rows: list[Row], default_path: str) -> dict[str, float]:
    """CS-WV time per slice over RGANCS time per slice, per case: at batch 1 and at the best batch."""
    out: dict[str, float] = {}
    for case in dict.fromkeys(r.case for r in rows):
        ours = [r for r in rows if r.case == case and r.method == "rgancs" and not r.note]
        bart = next((r for r in rows if r.case == case and r.method == "cs_wavelet" and r.p50_ms), None)
        if not ours or bart is None or bart.p50_ms is None:
            continue
        default = next((r for r in ours if r.path == default_path), ours[0])
        if default.p50_ms:
            out[f"{case}: CS-WV / RGANCS latency ({default.path}, batch 1)"] = bart.p50_ms / default.p50_ms
        best = max(ours, key=lambda r: r.best_throughput or 0.0)
        bart_best = bart.best_throughput or 1e3 / bart.p50_ms
        if best.best_throughput:
            out[f"{case}: RGANCS / CS-WV throughput ({best.path}, best batch)"] = best.best_throughput / bart_best
    return out


# ------------------------------------------------------------------------------------------ output
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(report: BenchReport) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the main table."""
    batches = report.settings["batches"]
    head = ["case", "method", "path", "p50 ms", "p95 ms", *[f"slices/s b{b}" for b in batches]]
    head += ["peak MB", "SNR dB", "dSNR dB", "note"]
    rows = []
    for r in report.rows:
        tput = [_fmt(r.throughput.get(b), ".1f") for b in batches]
        note = r.note
        if r.method != "rgancs" and len(r.throughput) > 1:  # zero-filled / BART: the whole set at once
            n = max(r.throughput)
            note = f"all {n} slices at once: {r.throughput[n]:.1f} slices/s" + (f" ({note})" if note else "")
        rows.append(
            [
                r.case,
                r.method,
                r.path,
                _fmt(r.p50_ms, ".2f"),
                _fmt(r.p95_ms, ".2f"),
                *tput,
                _fmt(r.peak_mb, ".0f"),
                _fmt(r.snr_db, ".2f"),
                _fmt(r.dsnr_db, ".3f"),
                note,
            ]
        )
    return head, rows


def markdown(report: BenchReport) -> str:
    """The report as Markdown (tables, hardware, ratios, roofline, cold start)."""
    head, rows = table_rows(report)
    hw = report.hardware
    lines = [
        f"Measured {hw.get('date', '')} at commit `{hw.get('commit', '?')}` with "
        f"`recon-plugin bench{' --quick' if report.settings['quick'] else ''}` on: {hw['cpu']} "
        f"({hw['cpu_cores']} cores, {hw['torch_threads']} torch threads)"
        + (", native bf16" if hw.get("cpu_native_bf16") else ", no native bf16")
        + (f", GPU {hw['gpu']}" if "gpu" in hw else ", no GPU")
        + f"; torch {hw['torch']}, BART {hw['bart']}. Model {report.settings['model']} "
        f"({report.settings['bundle']}), {report.settings['slices']} slices per case, "
        f"{report.settings['repeats']} repeats, {report.settings['mask']} masks.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    if report.ratios:
        lines += ["| speed ratio | value |", "|---|---|"]
        lines += [f"| {k} | {v:.1f}x |" for k, v in report.ratios.items()] + [""]
    if report.cold_start:
        lines += ["| cold start (process start to first image) | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in report.cold_start.items()] + [""]
    if report.roofline:
        lines += ["| case | GFLOP/slice (conv + FFT) | best path | slices/s | achieved TFLOP/s | of peak |"]
        lines += ["|---|---|---|---|---|---|"]
        for case, r in report.roofline.items():
            frac = f"{100 * r['fraction_of_peak']:.1f} % of {r['peak_tflops']:.0f}" if "fraction_of_peak" in r else "-"
            lines.append(
                f"| {case} | {r['total_gflop']:.2f} ({r['conv_gflop']:.2f} + {r['fft_gflop']:.3f}) | "
                f"{r.get('best_path', '-')} | {_fmt(r.get('best_slices_per_s'), '.1f')} | "
                f"{_fmt(r.get('achieved_tflops'), '.3f')} | {frac} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_markdown(report: BenchReport, path: str | Path) -> Path:
    """Put the report between the bench markers of ``path`` (the rest of the file is kept), or create it."""
    path = Path(path)
    block = f"{MARK_START}\n{markdown(report)}\n{MARK_END}"
    if path.is_file():
        text = path.read_text()
        if MARK_START in text and MARK_END in text:
            before, rest = text.split(MARK_START, 1)
            after = rest.split(MARK_END, 1)[1]
            path.write_text(before + block + after)
            return path
        path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Performance\n\n{block}\n")
    return path


def write_json(report: BenchReport, path: str | Path) -> Path:
    """Save the report as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2))
    return path
