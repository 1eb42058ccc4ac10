"""``recon-train``: train RGANCS bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recon_plugin.cli_options import root_callback
from recon_plugin.console import configure_logging, error_line, make_console
from recon_plugin.errors import BundleError, InvalidInputError, ReconError
from recon_plugin.model import ModelConfig

from .fit_cli import fit
from .study import study
from .sweep import sweep

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train RGANCS model bundles.")
console = make_console()

COLIN_TERMS = (
    "Colin27 T1 template from Debian's mricron-data, BSD-3-Clause (Copyright 2006-2010 Chris Rorden); "
    "cite Holmes et al., J Comput Assist Tomogr 22(2):324-333, 1998."
)
DEMO_NOTES = (
    "A small model for the CPU demo, trained with the pixel loss only (no GAN) on 26 slices of one "
    "subject with simulated single-coil k-space and a synthetic smooth phase, validated on 4 held-out "
    "slices of the same subject. It shows the method working end to end; it is not a clinical model and "
    "says nothing about other anatomy, contrasts or coil arrays."
)


app.callback()(root_callback("recon-train", "Train RGANCS model bundles."))


app.command("fit")(fit)
app.command("sweep")(sweep)
app.command("study")(study)


@app.command("demo-bundle")
def demo_bundle(
    out: Annotated[Path, typer.Option(help="bundle folder to write")] = Path("runs/rgancs_demo_cpu"),
    overwrite: Annotated[bool, typer.Option(help="replace a bundle already in OUT")] = False,
    steps: Annotated[int, typer.Option(help="optimiser steps")] = 600,
    features: Annotated[int, typer.Option(help="feature maps per conv")] = 32,
    copies: Annotated[int, typer.Option(help="unrolled copies")] = 10,
    blocks: Annotated[int, typer.Option(help="residual blocks per copy")] = 1,
    batch_size: Annotated[int, typer.Option(help="minibatch size")] = 4,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Train the small CPU demo bundle on the bundled Colin27 slices (pixel loss, radial mask at 5x).

    It goes to a run folder; to replace the shipped one, give ``--out sample_data/weights/rgancs_demo_cpu
    --overwrite``."""
    from recon_plugin.model.bundle import SIDECAR, WEIGHTS
    from recon_plugin.sample_data import COLIN_FILE, load_colin_slices, split_held_out

    from .model_card import write_model_card
    from .pixel_fit import PixelFitSettings, fit_pixel

    if not overwrite and ((out / SIDECAR).exists() or (out / WEIGHTS).exists()):
        raise BundleError(f"{out} already holds a bundle: give another --out, or --overwrite to replace it")
    train, val = split_held_out(load_colin_slices())
    settings = PixelFitSettings(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        model=ModelConfig(copies=copies, blocks=blocks, features=features),
    )
    metrics = fit_pixel(train, val, settings, out, source=f"{COLIN_FILE.name} (Colin27 T1, BSD-3-Clause)")
    write_model_card(out, data_terms=COLIN_TERMS, notes=DEMO_NOTES)
    console.print(metrics)
    console.print(f"wrote {out}")


@app.command("eval")
def evaluate(
    data: Annotated[
        Path,
        typer.Option(
            help="images [n, ny, nx] .npy (rank 3), multi-coil k-space [n, coils, ny, nx] .npy (rank 4), a folder of "
            "*_kspace.npy [coils, ny, nx] (or one holding multicoil_kspace/), or a folder of fully sampled ISMRMRD .h5"
        ),
    ],
    bundle: Annotated[Path | None, typer.Option(help="model bundle (default: the one the gadgets load here)")] = None,
    model: Annotated[
        str, typer.Option(help="without --bundle: the gadgets' model property (auto: by device; accurate; fast)")
    ] = "auto",
    mask_family: Annotated[str, typer.Option(help="radial | poisson | lines | uniform")] = "radial",
    acceleration: Annotated[float, typer.Option(help="requested acceleration R")] = 5.0,
    calib: Annotated[
        int | None, typer.Option(help="fully sampled centre (default: the family's; 24 lines for uniform)")
    ] = None,
    coils: Annotated[int | None, typer.Option(help="coils simulated for image data (birdcage maps; default 1)")] = None,
    slices: Annotated[str | None, typer.Option(help="START:STOP[:STEP] of the slices (default all)")] = None,
    names: Annotated[str | None, typer.Option(help="comma-separated *_kspace.npy stems of a k-space folder")] = None,
    seed: Annotated[int, typer.Option(help="mask seed of the first selected slice (then +1 per slice)")] = 200,
    iterations: Annotated[int, typer.Option(help="BART iterations")] = 300,
    workers: Annotated[int, typer.Option(help="parallel BART processes (1 gives clean timings)")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    methods: Annotated[
        str | None, typer.Option(help="comma-separated subset of zero_filled,cs_wavelet,cs_tv,rgancs (default all)")
    ] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="write rows, means and settings (JSON)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the table (Markdown)")] = None,
    mask_file: Annotated[
        str | None, typer.Option(help="one mask for every slice: F.npy, or F.npz:KEY (replaces --mask-family)")
    ] = None,
    adapt_steps: Annotated[
        int, typer.Option(min=0, help="RGANCS: self-supervised steps on each slice's own k-space first (0: off)")
    ] = 0,
    adapt_lr: Annotated[float, typer.Option(help="RGANCS: Adam's lr while adapting")] = 8e-4,
    adapt_split: Annotated[
        str | None,
        typer.Option(
            help="RGANCS: loss sets by points, lines (line masks), mixed (both in turn) or auto"
            " (points above 4 coils, else mixed) [default: auto]"
        ),
    ] = None,
    adapt_splits: Annotated[
        int | None, typer.Option(min=1, help="RGANCS: random splits per adaptation step [default: 1]")
    ] = None,
    adapt_scope: Annotated[
        str,
        typer.Option(help="RGANCS: slice (a copy adapted to each slice) or exam (one to each exam's slices)"),
    ] = "slice",
    exam_size: Annotated[
        int | None, typer.Option(min=1, help="slices per exam, consecutive (default: all the slices are one exam)")
    ] = None,
) -> None:
    """SNR, SSIM and seconds per slice of zero-filled, CS-WV, CS-TV and a bundle on the same masks and coil maps."""
    import json

    from rich.table import Table

    from recon_plugin.adaptation import AdaptSettings
    from recon_plugin.evaluation import markdown_table

    from .evaluate import run_eval

    report = run_eval(
        data,
        bundle=bundle,
        family=mask_family,
        acceleration=acceleration,
        calib=calib,
        coils=coils,
        slices=slices,
        names=None if names is None else [n.strip() for n in names.split(",") if n.strip()],
        seed=seed,
        iterations=iterations,
        device=device,
        methods=methods,
        workers=workers,
        mask_file=mask_file,
        adapt=AdaptSettings(
            steps=adapt_steps,
            lr=adapt_lr,
            scope=adapt_scope,
            **{k: v for k, v in {"split": adapt_split, "splits": adapt_splits}.items() if v is not None},
        ),
        exam_size=exam_size,
        model=model,
    )
    s = report.settings
    title = (
        f"{s['kind']} {Path(s['data']).name}: {len(s['slices'])} slices, {s['family']} {s['acceleration']:g}x "
        f"(achieved {s['acceleration_achieved']:.2f}x), calib {s['calib'] if s['calib'] is not None else 'default'}, "
        f"coils {','.join(map(str, s['coils']))}{' simulated' if s['coils_simulated'] else ''}, seed {s['seed']}"
    )
    if s["bundle"]:
        title += f", bundle {Path(s['bundle']).name} ({s['bundle_sha256'][:12]})"
    if "adapt" in s:
        title += f", adapted {s['adapt']['steps']} steps at lr {s['adapt']['lr']:g}"
        title += f", {s['adapt'].get('split', 'points')} split, {s['adapt'].get('splits', 2)} a step"
        if "scope" in s["adapt"]:
            title += f", one copy per {s['adapt']['exam_size']}-slice exam"
    console.print(title)
    table = Table()
    for col in ("method", "slice", "SNR dB", "SSIM", "s/slice"):
        table.add_column(col, justify="left" if col in ("method", "slice") else "right")
    for r in report.rows:
        table.add_row(r["method"], r["slice"], f"{r['snr_db']:.2f}", f"{r['ssim']:.3f}", f"{r['seconds']:.2f}")
    for m in report.means:
        table.add_row(
            m["method"], f"mean of {m['slices']}", f"{m['snr_db']:.2f}", f"{m['ssim']:.3f}", f"{m['seconds']:.2f}",
            style="bold",
        )  # fmt: skip
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"{title}\n\n{markdown_table(report.rows)}\n")
        console.print(f"wrote {out}")
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        console.print(f"wrote {json_file}")


@app.command("copies")
def copies(
    bundle: Annotated[Path, typer.Option(help="model bundle folder")],
    data: Annotated[Path, typer.Option(help=".npy of complex images [n, ny, nx]")],
    index: Annotated[int, typer.Option(help="slice index in the .npy")] = 150,
    acceleration: Annotated[float, typer.Option(help="acceleration of the radial view-ordered mask")] = 5.0,
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("copies.png"),
) -> None:
    """Each copy's output and its spectrum for one slice (like the paper's Fig. 10)."""
    import numpy as np

    from recon_plugin.evaluation import image_cases
    from recon_plugin.model import load_bundle

    from .copies_view import write_copies_view

    try:
        images = np.load(data, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{data} is not a readable .npy array ({exc})") from exc
    if images.ndim != 3:
        raise InvalidInputError(f"{data} holds an array of shape {images.shape}; expected images [n, ny, nx]")
    if not 0 <= index < len(images):
        raise InvalidInputError(f"--index {index} is out of range: {data} holds {len(images)} slices")
    (case,) = image_cases(images, [index], acceleration)
    case.problem.reference = case.reference
    console.print(f"wrote {write_copies_view(load_bundle(bundle), case.problem, out)}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a named error (``ReconError``) ends with one line on stderr and exit code 2;
    warnings and errors are logged, ``-v`` adds INFO and ``-vv`` DEBUG. glibc keeps freed memory for the next step
    (:mod:`recon_plugin.allocator`)."""
    from recon_plugin.allocator import keep_freed_memory
    from recon_plugin.interrupt import run_interruptible

    configure_logging(0)
    keep_freed_memory()
    try:
        run_interruptible(lambda: app(args=argv, prog_name="recon-train"))
    except ReconError as exc:
        typer.echo(error_line(exc), err=True)
        raise SystemExit(2) from None
