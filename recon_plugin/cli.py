"""Command line: ``recon-plugin mask``, ``demo``, ``replay``, ``reference-exam``, ``export``, ``serve``, ...."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from .cli_options import (
    SERVER_PORT,
    acceleration_factor,
    byte_size,
    model_choice,
    positive_seconds,
    root_callback,
)
from .console import configure_logging, make_console
from .errors import ReconError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RGANCS MRI reconstruction plugin.")
console = make_console()


app.callback()(root_callback("recon-plugin", "RGANCS MRI reconstruction plugin."))


#: The exit-code rule of every command: 0 done, 2 a named error or an unusable path or file (one line that says
#: what), 130 interrupted; anything else is a bug.
USAGE_EXIT = 2


def _fail(exc: ReconError | OSError, what: str = "") -> NoReturn:
    console.print(f"[bold red]{type(exc).__name__}[/]: {what}{exc}")
    raise typer.Exit(USAGE_EXIT) from exc


#: ``--max-buffer`` of ``replay`` and ``serve``: the operator's cap on one exam's k-space buffers.
MAX_BUFFER_HELP = (
    "at most this much memory for one exam's k-space buffers in each gadget (8G, 512M...; default: 16G, and never "
    "more than a quarter of the memory available); sets RECON_MAX_BUFFER for the gadgets"
)


#: ``--model`` of ``demo`` and ``replay``: the rgancs gadget's ``model`` property, set on top of the protocol.
MODEL_HELP = (
    "which multi-coil bundle the rgancs gadgets load: auto (this device's default), accurate (the default model) or "
    "fast (the one-block bundle); sets their model property over the protocol's (default: the protocol's)"
)


def _apply_max_buffer(max_buffer: int | None) -> None:
    """Export ``--max-buffer`` to the gadgets (in-process ones and started ones) and check an inherited setting."""
    import os

    from .memory import MAX_BUFFER_ENV, operator_cap

    if max_buffer is not None:
        os.environ[MAX_BUFFER_ENV] = str(max_buffer)
    try:
        operator_cap()
    except ValueError as exc:
        console.print(f"[bold red]ValueError[/]: {exc}")
        raise typer.Exit(USAGE_EXIT) from None


@app.command()
def mask(
    out: Annotated[Path, typer.Option(help="output stem: writes STEM.npy, STEM_view_order.csv, STEM.png")],
    family: Annotated[str, typer.Option(help="radial | poisson | lines | uniform (every R-th line + ACS)")] = "radial",
    shape: Annotated[tuple[int, int], typer.Option(help="grid size NY NX (e.g. ky kz)")] = (200, 100),
    acceleration: Annotated[
        float, typer.Option(help="total points / sampled points; for uniform the integer line spacing R")
    ] = 5.0,
    calib: Annotated[
        int | None,
        typer.Option(help="side of the fully sampled centre; lines and uniform: ACS lines (default: per family)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed", min=0)] = 0,
) -> None:
    """Make an undersampling mask with its view order and a PNG preview."""
    from .masks import make_mask, write_mask_files

    kwargs = {} if calib is None else {"calib": calib}
    try:
        result = make_mask(family, shape, acceleration, seed=seed, **kwargs)
    except ReconError as exc:
        _fail(exc)
    try:
        paths = write_mask_files(result, out)
    except OSError as exc:
        _fail(exc, f"cannot write the mask files {out}.*: ")
    console.print(
        f"{family} mask {shape[0]}x{shape[1]}: {int(result.mask.sum())} of {result.mask.size} points, "
        f"acceleration {result.acceleration:.3f} (asked {acceleration:g})"
    )
    for kind, path in paths.items():
        console.print(f"  {kind}: {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("demo_output"),
    bundle: Annotated[
        Path | None, typer.Option(help="model bundle (default: the one the gadgets load on this device)")
    ] = None,
    family: Annotated[str, typer.Option(help="mask family")] = "radial",
    acceleration: Annotated[float, typer.Option(help="acceleration (>= 1)", callback=acceleration_factor)] = 5.0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    raw: Annotated[bool, typer.Option(help="also replay the sample 3D raw file through side_by_side.xml")] = True,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP, callback=model_choice)] = None,
) -> None:
    """Undersample the bundled sample slices, reconstruct with zero-filled, RGANCS, BART CS-Wavelet and CS-TV,
    report SNR/SSIM; then replay the sample 3D ISMRMRD file through the side-by-side protocol (zero-filled,
    RGANCS, BART CS-Wavelet, CS-TV and the reference), exactly as Gadgetron runs its external gadgets."""
    from .demo import run_demo

    try:
        rows = run_demo(out, bundle, family, acceleration, device=device, model=model or "auto")
    except ReconError as exc:
        _fail(exc)
    table = Table(title=f"demo: {family} mask at {acceleration:g}x, held-out Colin27 slices")
    for col in ("method", "slice", "SNR dB", "SSIM", "s/slice", "DC residual"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.method, str(r.slice), f"{r.snr_db:.2f}", f"{r.ssim:.3f}", f"{r.seconds:.3f}", f"{r.dc_residual:.3g}"
        )
    console.print(table)
    for method in dict.fromkeys(r.method for r in rows):
        sel = [r for r in rows if r.method == method]
        console.print(
            f"{method}: mean SNR {sum(r.snr_db for r in sel) / len(sel):.2f} dB, "
            f"mean SSIM {sum(r.ssim for r in sel) / len(sel):.3f}"
        )
    console.print(f"wrote {out / 'demo.png'}, {out / 'demo.json'} and the mask files in {out}")
    if raw:
        from .sample_data import SAMPLE_DIR

        root = SAMPLE_DIR.parent
        replay(
            root / "sample_data" / "raw" / "brain3d_fully_sampled.h5",
            protocol=root / "protocols" / "side_by_side.xml",
            out=out / "brain3d_side_by_side.h5",
            png=out / "brain3d_png",
            overwrite=True,  # like the demo's other outputs in OUT
            json_out=out / "brain3d_side_by_side.json",
            model=model,
        )


@app.command()
def replay(
    input_h5: Annotated[Path, typer.Argument(help="ISMRMRD raw data file")],
    protocol: Annotated[
        Path, typer.Option(help="Gadgetron protocol XML, or a packaged protocol's name (recon-plugin protocols list)")
    ],
    out: Annotated[Path, typer.Option(help="output ISMRMRD image file (.h5)")],
    png: Annotated[Path | None, typer.Option(help="folder for PNG previews and comparison.png")] = None,
    dicom: Annotated[Path | None, typer.Option(help="folder for one DICOM series per method")] = None,
    timeout: Annotated[float, typer.Option(help="seconds a gadget may stay silent", callback=positive_seconds)] = 120.0,
    keep_partial: Annotated[
        bool,
        typer.Option(
            help="on failure, let the other gadgets finish and keep what arrived in OUT.partial.h5 (default: an "
            "ERROR from any gadget stops them all, as Gadgetron does)"
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="replace an existing OUT (removed when the gadgets start: a failed replay leaves none)")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    timings: Annotated[
        bool, typer.Option(help="print each gadget's stage seconds and last acquisition -> last image")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the summary (series, methods, counts, seconds, SNR/SSIM)")
    ] = None,
    max_buffer: Annotated[
        int | None, typer.Option(help=MAX_BUFFER_HELP, parser=byte_size, metavar="BYTES", show_default=False)
    ] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP, callback=model_choice)] = None,
) -> None:
    """Replay an ISMRMRD file through a protocol's gadgets, exactly as Gadgetron runs them."""
    _apply_max_buffer(max_buffer)
    from .gadget_targets import PROJECT_MODULE
    from .preview import series_comparison
    from .protocols_cli import resolve_protocol
    from .replay import (
        check_output_folder,
        format_summary,
        format_timings,
        load_protocol,
        partial_path,
        read_images,
        replay_file,
        set_gadget_property,
        summary_json,
    )

    try:
        if dicom is not None:
            check_output_folder(dicom, "--dicom")
        parsed = load_protocol(resolve_protocol(protocol))
        if model is not None:
            parsed = set_gadget_property(parsed, PROJECT_MODULE, "rgancs", "model", model)
        summary = replay_file(
            input_h5,
            parsed,
            out,
            png_dir=png,
            timeout=timeout,
            progress=progress,
            keep_partial=keep_partial,
            overwrite=overwrite,
        )
    except ReconError as exc:
        failed = getattr(exc, "images", None)
        if keep_partial and failed:
            console.print(f"{len(failed)} images from the branches that worked are in {partial_path(out)}")
        _fail(exc)
    except OSError as exc:
        _fail(exc)
    console.print(format_summary(summary))
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(summary_json(summary), indent=2) + "\n")
        except OSError as exc:
            _fail(exc, f"cannot write {json_out}: ")
        console.print(f"wrote {json_out}")
    if timings:
        console.print(format_timings(summary.timings, title=f"timings of {summary.input.name} (seconds)"))
    if png is not None:
        name = summary.protocol.name if summary.protocol is not None else "the protocol"
        title = f"{summary.input.name} through {name}"
        path = series_comparison(read_images(summary.output), png / "comparison.png", title=title)
        console.print(f"wrote {len(summary.pngs)} PNGs and {path}")
    if dicom is not None:
        export(summary.output, dicom)


@app.command("reference-exam")
def reference_exam(
    out: Annotated[Path, typer.Argument(help="output ISMRMRD raw file (.h5)")],
    planes: Annotated[int, typer.Option(help="ky-kz planes: readout length after oversampling removal")] = 128,
    plane: Annotated[tuple[int, int], typer.Option(help="plane size KY KZ")] = (200, 100),
    coils: Annotated[int, typer.Option(help="receive coils")] = 8,
    seed: Annotated[int, typer.Option(help="simulation seed", min=0)] = 20253,
) -> None:
    """Write the speed target's reference 3D exam (default 128 ky-kz planes of 200 x 100, 8 coils, fully
    sampled; about 330 MB), simulated from the bundled Colin27 slices. Replay it with a *_retro5x protocol."""
    from .sample_raw import ReferenceExamRecipe, make_reference_exam, write_ismrmrd

    try:
        scan = make_reference_exam(ReferenceExamRecipe(planes=planes, plane=plane, coils=coils, seed=seed))
    except ReconError as exc:
        _fail(exc)
    path = write_ismrmrd(out, scan.header, scan.acquisitions)
    console.print(
        f"wrote {path}: {planes} planes of {plane[0]} x {plane[1]}, {coils} coils, "
        f"{len(scan.acquisitions)} readouts, {path.stat().st_size / 1e6:.0f} MB"
    )


@app.command()
def export(
    images_h5: Annotated[Path, typer.Argument(help="ISMRMRD image file (e.g. from replay)")],
    dicom: Annotated[Path, typer.Option(help="output folder: one DICOM series per method")],
    overwrite: Annotated[bool, typer.Option(help="replace DICOM files already in the series folders")] = False,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            "-G",
            help="the file's image group (default: its only one, or the newest date-time group `client` wrote)",
        ),
    ] = None,
) -> None:
    """Write an ISMRMRD image file as DICOM series (shared study, one series per method)."""
    from .dicom_export import export_file
    from .replay.dataset import pick_image_group

    try:
        group = pick_image_group(images_h5, group)
        console.print(f"image group '{group}' of {images_h5}")
        written = export_file(images_h5, dicom, dataset_name=group, overwrite=overwrite)
    except ReconError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(exc)
    for series, files in sorted(written.items()):
        console.print(f"series {series}: {len(files)} DICOM files in {files[0].parent}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="TCP port (0: any free port)", **SERVER_PORT)] = 9002,
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    protocols: Annotated[
        Path | None,
        typer.Option(help="folder of protocols that configuration names pick (default: the packaged protocols)"),
    ] = None,
    idle_timeout: Annotated[
        float, typer.Option(help="seconds a client may stay silent", callback=positive_seconds)
    ] = 300.0,
    handshake_timeout: Annotated[
        float,
        typer.Option(
            help="seconds a new client has (waiting in all) to send its configuration and header",
            callback=positive_seconds,
        ),
    ] = 10.0,
    max_concurrent: Annotated[int, typer.Option(help="connections open at once; more wait to be accepted", min=1)] = 32,
    max_per_peer: Annotated[
        int, typer.Option(help="connections from one address at once; more are refused", min=1)
    ] = 8,
    max_exams: Annotated[
        int,
        typer.Option(help="exams past their handshake (reading data, reconstructing) at once; others wait", min=1),
    ] = 4,
    max_exams_per_peer: Annotated[
        int, typer.Option(help="exams in progress from one address at once; its others wait", min=1)
    ] = 2,
    message_timeout: Annotated[
        float,
        typer.Option(
            help="seconds one acquisition or waveform may take from its first byte to its last (slow senders are "
            "dropped)",
            callback=positive_seconds,
        ),
    ] = 30.0,
    max_exam_bytes: Annotated[
        int,
        typer.Option(
            help="bytes of acquisitions and waveforms one exam may send (8G, 512M, 1000000...)",
            parser=byte_size,
            metavar="BYTES",
            show_default="8G",
        ),
    ] = 8 * 2**30,
    max_buffer: Annotated[
        int | None, typer.Option(help=MAX_BUFFER_HELP, parser=byte_size, metavar="BYTES", show_default=False)
    ] = None,
    allow_module: Annotated[
        list[str] | None,
        typer.Option(
            help="a gadget module whose targets configurations may run besides recon_plugin.gadgets (repeatable); "
            "any other module is refused with ProtocolError",
            metavar="MODULE",
        ),
    ] = None,
    keep_partial: Annotated[
        bool,
        typer.Option(
            help="when a gadget reports an error, let the exam's other gadgets finish and send their images (default: "
            "stop them, as Gadgetron and replay fail the whole stream)"
        ),
    ] = False,
) -> None:
    """Serve the ISMRMRD/MRD streaming protocol (as gadgetron_ismrmrd_client and scanner-side clients speak it),
    running the same gadgets as the Gadgetron path. Configurations may run only the project's gadget targets and
    those of modules allowed with --allow-module."""
    from .interrupt import Interrupted
    from .mrd_server import DEFAULT_PROTOCOLS_DIR, ServerReady
    from .mrd_server import serve as run_server

    _apply_max_buffer(max_buffer)
    ready = ServerReady()
    console.print(f"serving MRD on {host}:{port}, protocols from {protocols or DEFAULT_PROTOCOLS_DIR} (Ctrl-C stops)")
    try:
        run_server(
            host,
            port,
            protocols or DEFAULT_PROTOCOLS_DIR,
            idle_timeout=idle_timeout,
            handshake_timeout=handshake_timeout,
            max_concurrent=max_concurrent,
            max_per_peer=max_per_peer,
            max_exams=max_exams,
            max_exams_per_peer=max_exams_per_peer,
            message_timeout=message_timeout,
            max_exam_bytes=max_exam_bytes,
            ready=ready,
            allowed_modules=allow_module or (),
            keep_partial=keep_partial,
        )
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C is how a foreground server is stopped: not an error
        console.print("stopped")
    except OSError as exc:
        _fail(exc, f"cannot serve on {host}:{port}: ")


@app.command("bundle-info")
def bundle_info(bundle: Annotated[Path, typer.Argument(help="bundle folder")]) -> None:
    """Validate a model bundle and print its sidecar."""
    from .model import load_bundle

    try:
        loaded = load_bundle(bundle)
    except ReconError as exc:
        _fail(exc)
    console.print_json(json.dumps(loaded.sidecar))
    console.print(f"OK: {sum(p.numel() for p in loaded.model.parameters())} parameters, sha256 verified")


from .bench_cli import bench  # noqa: E402
from .client_cli import client  # noqa: E402
from .protocols_cli import protocols_app  # noqa: E402
from .review.cli import review_app  # noqa: E402

app.command()(bench)
app.command()(client)
app.add_typer(protocols_app, name="protocols")
app.add_typer(review_app, name="review", help="Blinded reader study of paired outputs, and the side-by-side report.")


def main() -> None:
    """Console entry point: warnings and errors are logged; ``-v`` adds INFO, ``-vv`` DEBUG; Ctrl-C prints
    ``interrupted`` and exits 130. glibc keeps freed memory for the next slice (:mod:`recon_plugin.allocator`)."""
    from .allocator import keep_freed_memory
    from .interrupt import run_interruptible

    configure_logging(0)
    keep_freed_memory()
    run_interruptible(app)
