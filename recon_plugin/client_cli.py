"""The ``recon-plugin client`` command (registered by recon_plugin.cli): stream a raw file to an MRD server.

Speaks to ``recon-plugin serve``, python-ismrmrd-server or Gadgetron alike, as their own clients do
(python-ismrmrd-server's ``client.py``, ``gadgetron_ismrmrd_client``): configuration by name or as
text, images into a new group of the output file. Every failure is one line and exit status 2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from .cli_options import CLIENT_PORT, positive_seconds
from .console import make_console, one_line
from .errors import ReconError

if TYPE_CHECKING:
    from .mrd_client import ClientResult

#: Seconds the server may stay silent (mrd_client.DEFAULT_TIMEOUT; h5py and ismrmrd load when the command runs).
DEFAULT_TIMEOUT = 300.0

console = make_console()
errors = make_console(stderr=True, soft_wrap=True)
#: Loggers of the client side, quiet unless --verbose: the summary and the error line say it all.
_CLIENT_LOGGERS = ("recon_plugin.mrd_client", "recon_plugin.replay")
#: Characters of one server text or error line at most.
MAX_LINE = 2000
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ETIMEDOUT}


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    loggers = [] if verbose else [logging.getLogger(name) for name in _CLIENT_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def client_report(result: ClientResult) -> dict[str, Any]:
    """The figures of one run, as ``--json`` writes them (beside the command's settings)."""
    return {
        "ok": result.closed and not result.errors and result.problem is None,
        "sent": result.sent,
        "images": len(result.images),
        "series": result.series_summary(),
        "seconds": round(result.seconds, 3),
        "output": None if result.output is None else str(result.output),
        "errors": result.errors,
        "texts": result.texts,
        "problem": result.problem,
        "timed_out": result.timed_out,
    }


def _matrix(row: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in row["matrix"])
    return size + (f", {row['channels']} channels" if row["channels"] > 1 else "")


def client(
    input_h5: Annotated[Path, typer.Argument(help="ISMRMRD raw data file")],
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="configuration name, looked up by the server")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config-file", "-C", help="local configuration file, sent as text")
    ] = None,
    host: Annotated[str, typer.Option("--host", "-a", help="MRD server address")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="MRD server port", **CLIENT_PORT)] = 9002,
    out: Annotated[Path, typer.Option("--out", "-o", help="ISMRMRD image file; other groups in it are kept")] = Path(
        "out.h5"
    ),
    out_group: Annotated[
        str | None, typer.Option("--out-group", "-G", help="group for the images (default: date and time)")
    ] = None,
    in_group: Annotated[
        str, typer.Option("--in-group", "-g", help="group of the raw data in the input file")
    ] = "dataset",
    timeout: Annotated[
        float, typer.Option(help="seconds the server may stay silent", callback=positive_seconds)
    ] = DEFAULT_TIMEOUT,
    waveforms: Annotated[bool, typer.Option(help="also send the file's waveforms")] = True,
    keep_partial: Annotated[
        bool,
        typer.Option(
            help="when the stream fails, write the images that did arrive to group GROUP.partial (default: write "
            "nothing, as a failed replay writes no file)"
        ),
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary as JSON here")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log the client's progress")] = False,
) -> None:
    """Stream an ISMRMRD raw file to an MRD server (recon-plugin serve, python-ismrmrd-server, Gadgetron) and
    write the images that come back to a new group of OUT, as gadgetron_ismrmrd_client and client.py do."""
    if (config is None) == (config_file is None):
        raise typer.BadParameter("give exactly one of --config NAME and --config-file PATH")
    from .mrd_client import check_output_group, default_output_group, stream_file

    group = out_group if out_group is not None else default_output_group()
    report: dict[str, Any] = {
        "input": str(input_h5),
        "server": f"{host}:{port}",
        "config": config,
        "config_file": None if config_file is None else str(config_file),
        "out": str(out),
        "out_group": group,
    }

    def fail(name: str, message: str, result: ClientResult | None = None) -> NoReturn:
        errors.print(f"[bold red]{name}[/]: {escape(one_line(message, MAX_LINE))}")
        if json_out is not None:
            _write_json(json_out, {**report, **(client_report(result) if result else {"ok": False}), "error": name})
        raise typer.Exit(2)

    try:
        config_xml = None if config_file is None else config_file.read_bytes()
    except OSError as exc:
        fail(type(exc).__name__, f"cannot read the configuration file {config_file}: {exc.strerror or exc}")
    try:
        check_output_group(out, group)
    except (OSError, ValueError) as exc:
        fail(type(exc).__name__, str(exc))
    try:
        with _quiet(verbose):
            result = stream_file(
                input_h5,
                host,
                port,
                config_name=config,
                config_xml=config_xml,
                timeout=timeout,
                output_h5=out,
                output_group=group,
                input_group=in_group,
                waveforms=waveforms,
                keep_partial=keep_partial,
            )
    except (ReconError, ValueError) as exc:
        fail(type(exc).__name__, str(exc))
    except ConnectionRefusedError:
        fail("ConnectionRefusedError", f"no MRD server is listening on {host}:{port} (start one: recon-plugin serve)")
    except socket.gaierror as exc:
        fail("ConnectionError", f"cannot resolve the MRD server's address {host!r}: {exc.strerror or exc}")
    except OSError as exc:  # unreachable server, or the output file could not be written
        unreachable = isinstance(exc, ConnectionError) or exc.errno in _UNREACHABLE
        fail(type(exc).__name__, f"cannot reach {host}:{port}: {exc}" if unreachable else str(exc))

    _print_summary(result, report)
    failed = bool(result.errors) or result.problem is not None
    if failed and result.images and result.output is None:
        console.print(
            f"{len(result.images)} images arrived before the failure; none written (--keep-partial keeps them)"
        )
    if result.errors:
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        fail("ServerError", f"the MRD server reported: {result.errors[0]}{more}", result)
    if result.problem is not None:
        name = "StreamTimeoutError" if result.timed_out else "StreamError"
        fail(name, f"{host}:{port}: {result.problem}" + (f" ({timeout:g} s)" if result.timed_out else ""), result)
    if json_out is not None:
        _write_json(json_out, {**report, **client_report(result), "error": None})


def _print_summary(result: ClientResult, report: dict[str, Any]) -> None:
    how = f"configuration {report['config']}" if report["config"] else f"configuration text {report['config_file']}"
    console.print(
        f"{escape(report['input'])} -> {report['server']} ({escape(how)}): {result.sent} messages sent, "
        f"{len(result.images)} images back in {result.seconds:.2f} s",
        soft_wrap=True,
    )
    for text in result.texts:
        console.print(f"  server: {escape(one_line(text, MAX_LINE))}", soft_wrap=True)
    for row in result.series_summary():
        method = f" ({escape(str(row['method']))})" if row["method"] else ""
        console.print(
            f"  series {row['series']}{method}: {row['images']} images, matrix {_matrix(row)}, {row['dtype']}"
        )
    if result.output is not None:
        console.print(f"wrote {escape(str(result.output))}, group '{escape(str(result.output_group))}'", soft_wrap=True)
    elif not result.images and not result.errors and result.problem is None:
        console.print("the server sent no images; no file written")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        errors.print(f"[bold red]{type(exc).__name__}[/]: cannot write {escape(str(path))}: {escape(str(exc))}")
        raise typer.Exit(2) from exc
