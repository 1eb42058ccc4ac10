"""The ``recon-plugin bench`` command (registered by recon_plugin.cli).

The benchmark module (torch) is imported when the command runs, so ``recon-plugin --help`` does not wait for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .cli_options import positive_seconds
from .console import make_console
from .errors import ReconError

if TYPE_CHECKING:
    from .bench import Case

console = make_console()
#: Seconds one BART slice may take (as recon_plugin.bench.DEFAULT_BART_TIME_LIMIT, without importing torch here).
BART_TIME_LIMIT = 60.0


def _case(text: str) -> Case:
    try:
        ny, nx, coils = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected NYxNXxCOILS, e.g. 200x100x1") from None
    if min(ny, nx, coils) < 1:
        raise typer.BadParameter(f"{text!r}: sizes must be >= 1")
    from .bench import Case

    return Case(ny, nx, coils)


def bench(
    bundle: Annotated[
        Path | None, typer.Option(help="RGANCS bundle (default: the one the gadgets load on this device)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    quick: Annotated[
        bool,
        typer.Option(help="CI mode: the 256x256 8-coil case, fp32 and the default path, batches 1, 4, one BART slice"),
    ] = False,
    case: Annotated[list[str] | None, typer.Option(help="NYxNXxCOILS, repeatable (default: the three cases)")] = None,
    batch: Annotated[list[int] | None, typer.Option(help="batch size, repeatable (default 1 4 16 64)", min=1)] = None,
    path: Annotated[list[str] | None, typer.Option(help="RGANCS fast path, repeatable (bf16+channels_last)")] = None,
    slices: Annotated[int | None, typer.Option(help="distinct slices per case", min=1)] = None,
    repeats: Annotated[int | None, typer.Option(help="timed repeats", min=1)] = None,
    bart: Annotated[bool, typer.Option(help="time BART CS-WV and CS-TV")] = True,
    cold: Annotated[bool, typer.Option(help="time a cold start in a fresh process")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="update this Markdown file")] = None,
    bart_time_limit: Annotated[
        float,
        typer.Option(
            help="seconds one BART slice may take (raise it on a busy machine); over it, BART's row says so, "
            "the other figures are printed, and the exit status is 2",
            callback=positive_seconds,
        ),
    ] = BART_TIME_LIMIT,
) -> None:
    """Time zero-filled, RGANCS (fp32 and fast paths) and BART CS on the same slices and masks; print a table."""
    from rich.table import Table

    from .bench import markdown, run_bench, table_rows, write_json, write_markdown

    try:
        if bundle is None:
            from .pipeline import default_weights

            bundle = default_weights(device)
        report = run_bench(
            bundle,
            device=device,
            quick=quick,
            cases=[_case(c) for c in case] if case else None,
            batches=batch or None,
            paths=path or None,
            slices=slices,
            repeats=repeats,
            bart=bart,
            cold=cold,
            bart_time_limit=bart_time_limit,
            progress=lambda text: console.print(f"[dim]{text}[/]"),
        )
    except ReconError as exc:
        console.print(f"[bold red]{type(exc).__name__}[/]: {exc}")
        raise typer.Exit(2) from exc
    head, rows = table_rows(report)
    hw = report.hardware
    title = f"bench: {report.settings['bundle']} ({report.settings['model']}) on {hw['device']}"
    if hw["device"] == "cpu":  # the CPU class decides the default bundle and fast path
        title += ", native bf16" if hw["cpu_native_bf16"] else ", no native bf16"
    table = Table(title=title)
    for name in head:
        table.add_column(name, justify="left" if name in ("case", "method", "path", "note") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    tail = markdown(report).split("\n\n", 2)[-1]  # ratios, cold start and roofline as Markdown tables
    console.print(tail)
    if json_out:
        console.print(f"wrote {write_json(report, json_out)}")
    if markdown_out:
        console.print(f"wrote {write_markdown(report, markdown_out)}")
    if report.failures:
        for failure in report.failures:
            console.print(f"[bold red]{failure}[/]")
        console.print(f"the figures above were measured; BART's did not finish (--bart-time-limit {bart_time_limit:g})")
        raise typer.Exit(2)
