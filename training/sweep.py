"""Architecture sweep: copies x blocks, shared vs independent weights (the paper's Table 1, Figs 5 and 6).

Every grid point trains one model from the same base configuration (same data,
masks, seeds and optimiser), overriding only ``model.copies``, ``model.blocks``,
``model.shared``, ``run.out`` and optionally ``optim.steps``. The sweep folder
gets one run folder per point plus ``table.md``, ``results.json``,
``snr_vs_copies.png`` and ``ssim_vs_copies.png``.

Register the CLI with ``app.command("sweep")(sweep)`` in ``training/cli.py``.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from recon_plugin.errors import ReconError

from .config import read_toml
from .errors import TrainingConfigError

log = logging.getLogger(__name__)

GridPoint = tuple[int, int, bool]
TABLE_NAME = "table.md"
RESULTS_NAME = "results.json"
PLOTS = {"snr_db": "snr_vs_copies.png", "ssim": "ssim_vs_copies.png"}


def run_name(copies: int, blocks: int, shared: bool) -> str:
    """Run folder name of one grid point, e.g. ``10x1_shared``."""
    return f"{copies}x{blocks}_{'shared' if shared else 'independent'}"


def make_grid(
    copies: Iterable[int] = (1, 2, 5, 10), blocks: Iterable[int] = (1,), shared: Iterable[bool] = (True, False)
) -> list[GridPoint]:
    """Every (copies, blocks, shared) combination, in that nesting order."""
    return [(int(c), int(b), bool(s)) for c, b, s in itertools.product(copies, blocks, shared)]


def point_config(base: dict[str, Any], point: GridPoint, out_dir: Path, steps: int | None = None) -> dict[str, Any]:
    """The base config dict with one grid point's overrides (the base is not modified)."""
    c, b, s = point
    raw = copy.deepcopy(base)
    raw.setdefault("model", {}).update(copies=c, blocks=b, shared=s)
    raw.setdefault("run", {})["out"] = str(Path(out_dir) / run_name(c, b, s))
    if steps is not None:
        raw.setdefault("optim", {})["steps"] = int(steps)
    return raw


def run_sweep(
    base: dict[str, Any],
    grid: Sequence[GridPoint] | None = None,
    *,
    copies: Iterable[int] = (1, 2, 5, 10),
    blocks: Iterable[int] = (1,),
    shared: Iterable[bool] = (True, False),
    out_dir: str | Path,
    steps: int | None = None,
) -> list[dict[str, Any]]:
    """Train one model per grid point and write the table, results and plots into ``out_dir``.

    ``grid`` lists (copies, blocks, shared) points; without it the product of
    ``copies``, ``blocks`` and ``shared`` is used. Every point's configuration
    is validated before the first one trains. Returns one result dict per point.
    """
    from .config import config_from_dict
    from .loop import Trainer

    out_dir = Path(out_dir)
    points = list(grid) if grid is not None else make_grid(copies, blocks, shared)
    if not points:
        raise TrainingConfigError("sweep: the grid is empty; give at least one (copies, blocks, shared) point")
    if len(set(points)) != len(points):
        raise TrainingConfigError(f"sweep: the grid repeats a point: {points}")
    configs = [config_from_dict(point_config(base, p, out_dir, steps)) for p in points]
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    for i, (point, cfg) in enumerate(zip(points, configs, strict=True), start=1):
        name = run_name(*point)
        log.info("sweep %d/%d: %s (%d steps) -> %s", i, len(points), name, cfg.optim.steps, cfg.run.out)
        trainer = Trainer(cfg)
        metrics = trainer.fit()
        results.append(
            {
                "name": name,
                "copies": point[0],
                "blocks": point[1],
                "shared": point[2],
                "snr_db": metrics["snr_db"],
                "ssim": metrics["ssim"],
                "zero_filled_snr_db": metrics["zero_filled_snr_db"],
                "zero_filled_ssim": metrics["zero_filled_ssim"],
                "parameters": sum(p.numel() for p in trainer.model.parameters()),
                "train_seconds": round(trainer.seconds, 3),
                "steps": trainer.step,
                "run": cfg.run.out,
            }
        )
        log.info("sweep %s: SNR %.2f dB, SSIM %.3f", name, metrics["snr_db"], metrics["ssim"])
        # Rewrite after every point so a long sweep that stops early keeps what it finished.
        write_outputs(results, out_dir)
    return results


def write_outputs(results: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.md``, ``results.json`` and the two plots; returns their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / TABLE_NAME, "results": out_dir / RESULTS_NAME}
    paths["table"].write_text(markdown_table(results) + "\n")
    paths["results"].write_text(json.dumps(list(results), indent=2) + "\n")
    for metric, file in PLOTS.items():
        paths[metric] = plot_vs_copies(results, metric, out_dir / file)
    return paths


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """Table 1 layout: one row per copies x blocks; shared and independent SNR/SSIM and parameter counts."""
    by_key = {(r["copies"], r["blocks"], r["shared"]): r for r in results}
    rows = sorted({(r["copies"], r["blocks"]) for r in results})
    lines = [
        "| copies x blocks | shared SNR (dB) | shared SSIM | independent SNR (dB) | independent SSIM "
        "| shared parameters | independent parameters |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, b in rows:
        s, i = by_key.get((c, b, True)), by_key.get((c, b, False))
        cells = [
            _fmt(s and s["snr_db"], 2),
            _fmt(s and s["ssim"], 3),
            _fmt(i and i["snr_db"], 2),
            _fmt(i and i["ssim"], 3),
            f"{s['parameters']:,}" if s else "-",
            f"{i['parameters']:,}" if i else "-",
        ]
        lines.append(f"| {c}x{b} | " + " | ".join(cells) + " |")
    if results:
        zf_snr = sum(r["zero_filled_snr_db"] for r in results) / len(results)
        zf_ssim = sum(r["zero_filled_ssim"] for r in results) / len(results)
        lines.append(f"| zero-filled | {zf_snr:.2f} | {zf_ssim:.3f} | | | | |")
    return "\n".join(lines)


def plot_vs_copies(results: Sequence[dict[str, Any]], metric: str, path: str | Path) -> Path:
    """Line plot of ``metric`` against copies: shared and independent (per block count), zero-filled dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = {"snr_db": "SNR (dB)", "ssim": "SSIM"}[metric]
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    try:
        blocks = sorted({r["blocks"] for r in results})
        for b, shared in itertools.product(blocks, (True, False)):
            pts = sorted((r["copies"], r[metric]) for r in results if r["blocks"] == b and r["shared"] == shared)
            if not pts:
                continue
            name = "shared" if shared else "independent"
            if len(blocks) > 1:
                name += f", {b} RB"
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if shared else "s", label=name)
        if results:
            zf = sum(r[f"zero_filled_{metric}"] for r in results) / len(results)
            ax.axhline(zf, color="grey", linestyle="--", label="zero-filled")
            ax.set_xticks(sorted({r["copies"] for r in results}))
        ax.set_xlabel("copies")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs number of copies")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise TrainingConfigError(f"--{option}: expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise TrainingConfigError(f"--{option}: give at least one value")
    return values


def _bools(text: str) -> list[bool]:
    words = {"true": True, "shared": True, "false": False, "independent": False}
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in words]
    if bad or not values:
        raise TrainingConfigError(f"--shared: expected a comma-separated list of true/false, got {text!r}")
    return [words[v] for v in values]


def sweep(
    config: Annotated[Path, typer.Option("--config", help="base training configuration (TOML)")],
    out: Annotated[Path, typer.Option(help="sweep folder: one run per grid point, table.md, results.json, plots")],
    copies: Annotated[str, typer.Option(help="comma-separated numbers of copies")] = "1,2,5,10",
    blocks: Annotated[str, typer.Option(help="comma-separated residual blocks per copy")] = "1",
    shared: Annotated[str, typer.Option(help="comma-separated weight sharing: true (recurrent), false")] = "true,false",
    steps: Annotated[int | None, typer.Option(help="optimiser steps per run (default: the config's)")] = None,
) -> None:
    """Train copies x blocks x shared variants of one config and tabulate/plot validation SNR and SSIM."""
    from recon_plugin.console import error_line, make_console

    try:
        raw = read_toml(config)
        data = raw.get("data")
        if isinstance(data, dict) and data.get("path") and not Path(data["path"]).is_absolute():
            data["path"] = str(config.parent / data["path"])
        results = run_sweep(
            raw,
            copies=_ints(copies, "copies"),
            blocks=_ints(blocks, "blocks"),
            shared=_bools(shared),
            out_dir=out,
            steps=steps,
        )
    except ReconError as exc:
        typer.echo(error_line(exc), err=True)
        raise typer.Exit(2) from exc
    console = make_console()
    console.print(markdown_table(results))
    console.print(f"wrote {out / TABLE_NAME}, {out / RESULTS_NAME}, {', '.join(str(out / p) for p in PLOTS.values())}")


__all__ = ["make_grid", "markdown_table", "plot_vs_copies", "point_config", "run_name", "run_sweep", "sweep"]
