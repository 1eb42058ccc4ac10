"""Model study: train variants of one configuration at an equal budget, evaluate them beside CS, time them.

One TOML file describes the whole study (``recon-train study --config FILE``)::

    base = "../multicoil/cg_10x1x32_cpu.toml"   # training configuration every variant starts from
    out = "../../runs/study_cpu"                # one run folder per variant, plus the outputs below
    steps = 150                                  # the equal budget: optimiser steps of every variant
    primary = "real, radial 5x"                  # the evaluation that ranks variants
    time_budget_ms = 1000                        # optional: the pick must reconstruct a slice this fast

    [overrides]                                  # applied to every variant (same crops, data, masks)
    data = { crop = 64 }

    [timing]                                     # milliseconds per slice with the device's default path
    case = "256x256x8"
    repeats = 3

    [[variant]]
    name = "cg_10x1x32"
    model = { data_consistency = "cg", features = 32 }

    [[eval]]
    name = "real, radial 5x"
    data = "../../../shared/data/multicoil_kspace"
    names = ["marcsous_head_8ch"]
    family = "radial"
    acceleration = 5

Each variant's ``model``, ``data``, ``loss`` and ``optim`` tables are merged over the base configuration (and the
study's ``[overrides]``); the budget (``steps``) is the same for all. Zero-filled, CS-WV and CS-TV are evaluated once
per evaluation (same masks and coil maps as the variants: ``recon-train eval``'s seeds) and cached in
``OUT/baselines``. A variant that cannot run an evaluation (``exact`` data consistency on multi-coil data) gets
"n/a" with the reason. Outputs in ``OUT``: ``study.md`` (table), ``study.json`` (everything), ``study_front.png``
(quality against milliseconds per slice, one panel per evaluation). A study that stops keeps finished variants:
rerunning skips variants whose results are recorded, and resumes a variant's training from its newest checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from recon_plugin.errors import ReconError

from .errors import TrainingConfigError

log = logging.getLogger(__name__)

RESULTS_NAME = "study.json"
TABLE_NAME = "study.md"
PLOT_NAME = "study_front.png"
BASELINES = ("zero_filled", "cs_wavelet", "cs_tv")
_TRAIN_SECTIONS = ("model", "data", "loss", "optim", "run")
_EVAL_KEYS = {"name", "data", "slices", "names", "coils", "family", "acceleration", "calib", "seed"}
_TOP_KEYS = {"base", "out", "steps", "primary", "time_budget_ms", "overrides", "timing", "variant", "eval"}


@dataclass
class EvalSpec:
    """One evaluation set: ``recon-train eval`` arguments."""

    name: str
    data: str
    slices: str | None = None
    names: list[str] | None = None
    coils: int | None = None
    family: str = "radial"
    acceleration: float = 5.0
    calib: int | None = None
    seed: int = 200

    def key(self) -> str:
        """A short digest of the settings (baseline cache file name)."""
        text = json.dumps(self.__dict__, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Variant:
    """One model to train: a name and the tables merged over the base configuration."""

    name: str
    overrides: dict[str, dict[str, Any]]


@dataclass
class Study:
    """A parsed study file."""

    base: Path
    out: Path
    steps: int
    variants: list[Variant]
    evals: list[EvalSpec]
    primary: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing_case: str = "256x256x8"
    timing_repeats: int = 3
    time_budget_ms: float | None = None


def _fail(msg: str) -> TrainingConfigError:
    return TrainingConfigError(f"study: {msg}")


def _tables(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(f"{where} must be a table")
    bad = sorted(set(raw) - set(_TRAIN_SECTIONS))
    if bad:
        raise _fail(f"{where}: unknown section {', '.join(bad)}; use {', '.join(_TRAIN_SECTIONS)}")
    for k, v in raw.items():
        if not isinstance(v, dict):
            raise _fail(f"{where}.{k} must be a table of settings")
    return {k: dict(v) for k, v in raw.items()}


def parse_study(raw: dict[str, Any], base_dir: Path) -> Study:
    """Validate a study dict; relative paths are resolved against ``base_dir``. TrainingConfigError names the key."""
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(f"unknown key {', '.join(unknown)}; known keys are {', '.join(sorted(_TOP_KEYS))}")
    for key in ("base", "out", "steps", "variant", "eval"):
        if key not in raw:
            raise _fail(f"missing {key!r}")
    steps = raw["steps"]
    if not isinstance(steps, int) or steps < 1:
        raise _fail(f"steps must be a positive integer, got {steps!r}")
    variants = []
    for i, v in enumerate(raw["variant"]):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"].strip():
            raise _fail(f"variant {i + 1} needs a name")
        name = v["name"].strip()
        if any(c in name for c in "/\\ ") or name.startswith("."):
            raise _fail(f"variant name {name!r} must be usable as a folder name (no spaces or slashes)")
        variants.append(Variant(name, _tables({k: x for k, x in v.items() if k != "name"}, f"variant {name}")))
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or not names:
        raise _fail(f"variant names must be unique and at least one is needed: {names}")
    evals = []
    for i, e in enumerate(raw["eval"]):
        if not isinstance(e, dict):
            raise _fail(f"eval {i + 1} must be a table")
        bad = sorted(set(e) - _EVAL_KEYS)
        if bad:
            known = ", ".join(sorted(_EVAL_KEYS))
            raise _fail(f"eval {e.get('name', i + 1)}: unknown key {', '.join(bad)}; known: {known}")
        if "name" not in e or "data" not in e:
            raise _fail(f"eval {i + 1} needs a name and data")
        spec = EvalSpec(**e)
        if not Path(spec.data).is_absolute():
            spec.data = str(base_dir / spec.data)
        evals.append(spec)
    eval_names = [e.name for e in evals]
    if len(set(eval_names)) != len(eval_names) or not evals:
        raise _fail(f"eval names must be unique and at least one is needed: {eval_names}")
    primary = raw.get("primary", evals[0].name)
    if primary not in eval_names:
        raise _fail(f"primary {primary!r} is not one of the evals: {', '.join(eval_names)}")
    timing = raw.get("timing", {})
    if not isinstance(timing, dict) or set(timing) - {"case", "repeats"}:
        raise _fail("[timing] takes case (NYxNXxCOILS) and repeats")
    base = Path(raw["base"])
    out = Path(raw["out"])
    budget = raw.get("time_budget_ms")
    return Study(
        base=base if base.is_absolute() else base_dir / base,
        out=out if out.is_absolute() else base_dir / out,
        steps=steps,
        variants=variants,
        evals=evals,
        primary=primary,
        overrides=_tables(raw.get("overrides"), "overrides"),
        timing_case=str(timing.get("case", "256x256x8")),
        timing_repeats=int(timing.get("repeats", 3)),
        time_budget_ms=None if budget is None else float(budget),
    )


def load_study(path: str | Path) -> Study:
    """Read and validate a study TOML file."""
    from .config import read_toml

    path = Path(path)
    return parse_study(read_toml(path, "study file"), path.parent)


def variant_config(study: Study, variant: Variant) -> Any:
    """The TrainConfig of one variant: base + study overrides + variant tables, the study's steps and run folder."""
    from .config import config_from_dict

    try:
        raw = tomllib.loads(study.base.read_text())
    except FileNotFoundError as exc:
        raise _fail(f"base configuration {study.base} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _fail(f"base configuration {study.base} is not valid TOML: {exc}") from exc
    raw = copy.deepcopy(raw)
    for tables in (study.overrides, variant.overrides):
        for section, values in tables.items():
            raw.setdefault(section, {}).update(values)
    raw.setdefault("optim", {})["steps"] = study.steps
    run = raw.setdefault("run", {})
    run["out"] = str((study.out / variant.name).resolve())
    run.pop("init_weights", None)  # an equal budget starts every variant from scratch
    return config_from_dict(raw, base_dir=study.base.parent)


def _parse_case(text: str) -> Any:
    from recon_plugin.bench import Case

    try:
        ny, nx, coils = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise _fail(f"[timing] case {text!r} is not NYxNXxCOILS (e.g. 256x256x8)") from None
    return Case(ny, nx, coils)


def time_bundle(bundle: Path, case_text: str, repeats: int) -> float:
    """Median milliseconds per slice of the bundle on simulated slices of the case, with the default fast path."""
    from recon_plugin.bench import bench_problems
    from recon_plugin.reconstructors import RGANCS

    case = _parse_case(case_text)
    problems = bench_problems(case, 2)
    rec = RGANCS(bundle, device="auto", batch_size=1)
    rec.reconstruct_batch(problems[:1])  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        for p in problems:
            start = time.perf_counter()
            rec.reconstruct_batch([p])
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _eval(spec: EvalSpec, methods: str, bundle: Path | None) -> dict[str, Any]:
    from .evaluate import run_eval

    report = run_eval(
        spec.data,
        bundle=bundle,
        family=spec.family,
        acceleration=spec.acceleration,
        calib=spec.calib,
        coils=spec.coils,
        slices=spec.slices,
        names=spec.names,
        seed=spec.seed,
        methods=methods,
    )
    return report.as_json()


def baselines(study: Study, spec: EvalSpec) -> dict[str, Any]:
    """Zero-filled, CS-WV and CS-TV on one evaluation, cached in ``OUT/baselines/<digest>.json``."""
    cache = study.out / "baselines" / f"{spec.key()}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    log.info("study: baselines on %s", spec.name)
    result = _eval(spec, ",".join(BASELINES), None)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _means(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {m["method"]: m for m in result["means"]}


def run_variant(study: Study, variant: Variant) -> dict[str, Any]:
    """Train (or resume) one variant, evaluate it on every set and time it."""
    from .loop import Trainer

    cfg = variant_config(study, variant)
    run_dir = Path(cfg.run.out)
    bundle = run_dir / "bundle"
    trainer = Trainer(cfg)
    if not (bundle / "bundle.json").is_file():
        resume = run_dir if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()) else None
        trainer.fit(resume=resume)
    else:
        trainer.resume(run_dir)
    m = cfg.model
    row: dict[str, Any] = {
        "name": variant.name,
        "model": f"{m.copies}x{m.blocks}x{m.features} {'shared' if m.shared else 'independent'} {m.data_consistency}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "steps": trainer.step,
        "train_seconds": round(trainer.seconds, 1),
        "slices_per_s_trained": round(trainer.step * cfg.optim.batch_size / max(trainer.seconds, 1e-9), 3),
        "validation_snr_db": trainer.metrics.get("snr_db"),
        "bundle": str(bundle),
        "evals": {},
    }
    for spec in study.evals:
        try:
            result = _eval(spec, "rgancs", bundle)
            mean = _means(result)["rgancs"]
            row["evals"][spec.name] = {"snr_db": mean["snr_db"], "ssim": mean["ssim"], "seconds": mean["seconds"]}
        except ReconError as exc:
            row["evals"][spec.name] = {"error": f"{type(exc).__name__}: {exc}"}
            log.warning("study: %s cannot run %s: %s", variant.name, spec.name, exc)
    try:
        row["ms_per_slice"] = time_bundle(bundle, study.timing_case, study.timing_repeats)
    except ReconError as exc:
        row["ms_per_slice"] = None
        row["timing_error"] = f"{type(exc).__name__}: {exc}"
    return row


def pareto_front(rows: list[dict[str, Any]], primary: str) -> list[str]:
    """Names of the variants no other variant beats on both primary SNR (higher) and time (lower)."""
    pts = [
        (r["name"], r["ms_per_slice"], r["evals"].get(primary, {}).get("snr_db"))
        for r in rows
        if r.get("ms_per_slice") is not None and r["evals"].get(primary, {}).get("snr_db") is not None
    ]
    front = []
    for name, ms, snr in pts:
        dominated = any((m2 <= ms and s2 >= snr) and (m2 < ms or s2 > snr) for n2, m2, s2 in pts if n2 != name)
        if not dominated:
            front.append(name)
    return front


def pick(rows: list[dict[str, Any]], primary: str, budget_ms: float | None) -> str | None:
    """The variant with the best primary SNR among those within the time budget (all when none is given)."""
    ok = [
        r
        for r in rows
        if r["evals"].get(primary, {}).get("snr_db") is not None
        and (budget_ms is None or (r.get("ms_per_slice") is not None and r["ms_per_slice"] <= budget_ms))
    ]
    return max(ok, key=lambda r: r["evals"][primary]["snr_db"])["name"] if ok else None


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    if "error" in entry:
        return "n/a"
    return f"{entry['snr_db']:.2f} / {entry['ssim']:.3f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Variants and baselines: SNR / SSIM per evaluation, ms per slice, training figures; front and pick marked."""
    evals = [e["name"] for e in result["evals"]]
    lines = [
        "| model | " + " | ".join(f"{e} SNR dB / SSIM" for e in evals) + " | ms/slice | parameters | steps | "
        "train s | slices/s trained |",
        "|---|" + "---:|" * (len(evals) + 5),
    ]
    for name in BASELINES:
        cells = []
        secs = []
        for e in result["evals"]:
            mean = e["baselines"].get(name)
            cells.append(_cell(mean))
            if mean:
                secs.append(mean["seconds"])
        ms = f"{1e3 * statistics.fmean(secs):.0f}*" if secs else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ms} | - | - | - | - |")
    for r in result["variants"]:
        tags = []
        if r["name"] in result["front"]:
            tags.append("front")
        if r["name"] == result["pick"]:
            tags.append("pick")
        label = f"{r['name']} ({r['model']})" + (f" **{', '.join(tags)}**" if tags else "")
        cells = [_cell(r["evals"].get(e)) for e in evals]
        ms = "-" if r.get("ms_per_slice") is None else f"{r['ms_per_slice']:.0f}"
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {ms} | {r['parameters']:,} | {r['steps']} | "
            f"{r['train_seconds']:.0f} | {r['slices_per_s_trained']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"ms/slice: RGANCS on a simulated {result['timing_case']} slice with the default fast path of this device; "
        "* baselines: mean seconds per slice of the evaluations themselves (BART, tuned lambda, 300 iterations). "
        f'Ranked on "{result["primary"]}"; front = no other variant is both faster and better there.'
    )
    return "\n".join(lines)


def plot_front(result: dict[str, Any], path: str | Path) -> Path:
    """Quality against milliseconds per slice: one panel per evaluation, variants labelled, CS as reference marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    evals = result["evals"]
    cols = min(2, len(evals))
    rows_n = math.ceil(len(evals) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 4.2 * rows_n), dpi=100, squeeze=False)
    try:
        for ax, e in zip(axes.flat, evals, strict=False):
            for r in result["variants"]:
                entry = r["evals"].get(e["name"], {})
                if r.get("ms_per_slice") is None or "snr_db" not in entry:
                    continue
                marker = "*" if r["name"] == result["pick"] else "o"
                ax.scatter(r["ms_per_slice"], entry["snr_db"], marker=marker, s=80 if marker == "*" else 30)
                ax.annotate(
                    r["name"],
                    (r["ms_per_slice"], entry["snr_db"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            for name, style in (("cs_wavelet", "tab:red"), ("cs_tv", "tab:purple"), ("zero_filled", "grey")):
                mean = e["baselines"].get(name)
                if mean:
                    ax.axhline(mean["snr_db"], color=style, linestyle="--", linewidth=1, label=name)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xlabel(f"ms per {result['timing_case']} slice (default path)")
            ax.set_ylabel("SNR (dB)")
            ax.set_title(e["name"], fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(evals) :]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """``study.json``, ``study.md`` and ``study_front.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_NAME).write_text(json.dumps(result, indent=2) + "\n")
    (out / TABLE_NAME).write_text(markdown_table(result) + "\n")
    plot_front(result, out / PLOT_NAME)


def run_study(study: Study, *, retime: bool = False) -> dict[str, Any]:
    """Baselines, then every variant (recorded ones are kept); outputs rewritten after each variant.

    ``retime`` measures every recorded variant's milliseconds per slice again, one after the other in this process:
    timings taken while other jobs shared the CPU (a long study on a small machine) are not comparable.
    """
    for v in study.variants:  # every configuration is valid before anything trains
        variant_config(study, v)
    study.out.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if (study.out / RESULTS_NAME).is_file():
        previous = {r["name"]: r for r in json.loads((study.out / RESULTS_NAME).read_text()).get("variants", [])}
    result: dict[str, Any] = {
        "primary": study.primary,
        "steps": study.steps,
        "timing_case": study.timing_case,
        "time_budget_ms": study.time_budget_ms,
        "evals": [],
        "variants": [],
        "front": [],
        "pick": None,
    }
    for spec in study.evals:
        b = baselines(study, spec)
        result["evals"].append({"name": spec.name, "settings": b["settings"], "baselines": _means(b)})
    for v in study.variants:
        known = previous.get(v.name)
        row = known if known and set(known.get("evals", {})) >= {e.name for e in study.evals} else run_variant(study, v)
        if retime and row is known:
            row["ms_per_slice"] = time_bundle(Path(row["bundle"]), study.timing_case, study.timing_repeats)
        result["variants"].append(row)
        result["front"] = pareto_front(result["variants"], study.primary)
        result["pick"] = pick(result["variants"], study.primary, study.time_budget_ms)
        write_outputs(result, study.out)
        log.info("study: %s done", v.name)
    return result


def study(
    config: Annotated[Path, typer.Option("--config", help="study file (TOML): base config, variants, evaluations")],
    retime: Annotated[
        bool, typer.Option(help="time every recorded variant again in this run (comparable ms per slice)")
    ] = False,
) -> None:
    """Train variants at an equal budget, evaluate them beside zero-filled/CS-WV/CS-TV, time them; table + plot."""
    from recon_plugin.console import make_console

    spec = load_study(config)  # a named error ends as one line and exit 2 in recon-train's main
    result = run_study(spec, retime=retime)
    console = make_console()
    console.print(markdown_table(result))
    console.print(f"wrote {spec.out / TABLE_NAME}, {spec.out / RESULTS_NAME}, {spec.out / PLOT_NAME}")


__all__ = [
    "EvalSpec",
    "Study",
    "Variant",
    "load_study",
    "markdown_table",
    "pareto_front",
    "parse_study",
    "pick",
    "plot_front",
    "run_study",
    "study",
    "time_bundle",
    "variant_config",
]
