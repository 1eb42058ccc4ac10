"""``recon-plugin review``: build a blinded reader study, serve it to readers, unblind the results, report."""

from __future__ import annotations

import ipaddress
import logging
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..cli_options import SERVER_PORT
from ..errors import ReconError

review_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Blinded reader study of reconstructions.")
console = Console(soft_wrap=True)  # paths and links stay on one line, so they can be copied


def _fail(exc: ReconError) -> None:
    console.print(f"[bold red]{type(exc).__name__}[/]: {exc}")
    raise typer.Exit(2)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


@review_app.command()
def new(
    study_dir: Annotated[Path, typer.Argument(help="new (or empty) study folder")],
    more: Annotated[list[Path] | None, typer.Argument(help="more ISMRMRD image files or DICOM folders")] = None,
    from_: Annotated[
        list[Path] | None, typer.Option("--from", help="ISMRMRD image file (.h5) or DICOM folder; repeatable")
    ] = None,
    readers: Annotated[
        list[str] | None, typer.Option("--readers", help="reader names, repeatable or comma-separated")
    ] = None,
    pair: Annotated[
        list[str] | None,
        typer.Option("--pair", help="METHOD_A:METHOD_B, repeatable (default RGANCS vs CS-WV, CS-TV, zero-filled)"),
    ] = None,
    single: Annotated[bool, typer.Option(help="also score each image alone")] = False,
    slices: Annotated[int | None, typer.Option(help="at most this many evenly spaced slices per exam", min=1)] = None,
    seed: Annotated[
        int | None, typer.Option(help="seed of the order and sides (default: random, recorded)", min=0)
    ] = None,
) -> None:
    """Group images of the same exam and slice across methods and write a blinded reading list per reader."""
    from .study import DEFAULT_PAIRS, create_study, parse_pairs

    sources = [*(from_ or []), *(more or [])]
    if not sources:
        console.print("[bold red]give the images with --from OUT.h5 (and more files or DICOM folders)[/]")
        raise typer.Exit(2)
    try:
        pairs = parse_pairs(pair) if pair else list(DEFAULT_PAIRS)
        study = create_study(
            study_dir, sources, readers=readers or ["reader1"], pairs=pairs, single=single,
            slices_per_exam=slices, seed=seed,
        )  # fmt: skip
    except ReconError as exc:
        _fail(exc)
    kinds = [item["kind"] for item in study.data["items"]]
    console.print(
        f"study {study_dir}: {kinds.count('pair')} pairs"
        + (f" and {kinds.count('single')} single images" if single else "")
        + f" for {len(study.readers)} reader(s); pairs {', '.join(f'{a} vs {b}' for a, b in study.data['pairs'])}"
    )
    console.print(f"serve it with: recon-plugin review serve {study_dir}")


@review_app.command()
def serve(
    study_dir: Annotated[Path, typer.Argument(help="study folder made by review new")],
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", **SERVER_PORT)] = 8765,
) -> None:
    """Serve the reader page; prints one token link per reader (Ctrl-C stops; answers are already saved)."""
    import uvicorn

    from .app import create_app, reader_links

    try:
        app = create_app(study_dir)
    except ReconError as exc:
        _fail(exc)
    shown = f"[{host}]" if ":" in host else host
    for reader, link in reader_links(app.state.study, f"http://{shown}:{port}").items():
        console.print(f"{reader}: {link}")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        console.print(f"[yellow]bound to {host}: anyone who can reach it and has a token link can read and answer[/]")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@review_app.command()
def results(
    study_dir: Annotated[Path, typer.Argument(help="study folder")],
    csv: Annotated[Path | None, typer.Option(help="CSV to write (default STUDY_DIR/results.csv)")] = None,
) -> None:
    """Unblind: win/tie/loss with 95 % Wilson interval, Wilcoxon signed-rank per criterion, reader agreement."""
    from .results import compute_results, write_csv
    from .study import RUBRIC

    try:
        res = compute_results(study_dir)
    except ReconError as exc:
        _fail(exc)
    console.print(f"{len(res.answers)} complete answers from {len(res.readers)} reader(s): {', '.join(res.readers)}")
    table = Table(title="A vs B: preference (win fraction = wins / (wins + losses), ties left out)")
    for col in ("A", "B", "n", "win", "tie", "loss", "win frac", "95% CI", "agreement"):
        table.add_column(col, justify="right")
    for r in res.pairs:
        agreement = f"{r.kappa_kind} k={_fmt(r.kappa, 2)} ({r.kappa_items} items)" if r.kappa_kind else "-"
        interval = f"{_fmt(r.ci_low)}-{_fmt(r.ci_high)}"
        table.add_row(
            r.method_a, r.method_b, str(r.n), str(r.wins), str(r.ties), str(r.losses), _fmt(r.win_fraction),
            interval, agreement,
        )  # fmt: skip
    console.print(table)
    scores = Table(title="rubric (1 non-diagnostic .. 5 excellent): mean A / mean B, Wilcoxon signed-rank p")
    scores.add_column("A vs B")
    for label in RUBRIC.values():
        scores.add_column(label, justify="right")
    for r in res.pairs:
        cells = [f"{_fmt(k.mean_a, 2)} / {_fmt(k.mean_b, 2)}  p={_fmt(k.p_value, 4)}" for k in r.criteria.values()]
        scores.add_row(f"{r.method_a} vs {r.method_b}", *cells)
    console.print(scores)
    if res.single:
        single = Table(title="single images: mean scores")
        for col in ("method", "n", *RUBRIC.values()):
            single.add_column(col, justify="right")
        for method, values in res.single.items():
            single.add_row(method, str(int(values["n"])), *(_fmt(values[c], 2) for c in RUBRIC))
        console.print(single)
    for path in write_csv(res, csv or Path(study_dir) / "results.csv"):
        console.print(f"wrote {path}")


@review_app.command()
def report(
    inputs: Annotated[list[Path], typer.Argument(help="ISMRMRD image files (.h5)")],
    html: Annotated[Path, typer.Option(help="HTML report to write")] = Path("report.html"),
) -> None:
    """Write a static HTML report of the reconstructions."""
    from .report import write_report

    try:
        path = write_report(list(inputs), html)
    except ReconError as exc:
        _fail(exc)
    console.print(f"wrote {path}")


def main() -> None:
    """Entry point for ``python -m recon_plugin.review.cli``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    review_app()


if __name__ == "__main__":
    main()
