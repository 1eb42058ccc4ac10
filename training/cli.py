"""``recon-train``: train RGANCS bundles."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from recon_plugin.model import ModelConfig

from .fit_cli import fit
from .sweep import sweep

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train RGANCS model bundles.")
console = Console()

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


@app.callback()
def _root() -> None:
    """Train RGANCS model bundles."""


app.command("fit")(fit)
app.command("sweep")(sweep)


@app.command("demo-bundle")
def demo_bundle(
    out: Annotated[Path, typer.Option(help="bundle folder to write")] = Path("sample_data/weights/rgancs_demo_cpu"),
    steps: Annotated[int, typer.Option(help="optimiser steps")] = 600,
    features: Annotated[int, typer.Option(help="feature maps per conv")] = 32,
    copies: Annotated[int, typer.Option(help="unrolled copies")] = 10,
    blocks: Annotated[int, typer.Option(help="residual blocks per copy")] = 1,
    batch_size: Annotated[int, typer.Option(help="minibatch size")] = 4,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Train the small CPU demo bundle on the bundled Colin27 slices (pixel loss, radial mask at 5x)."""
    from recon_plugin.sample_data import COLIN_FILE, load_colin_slices, split_held_out

    from .model_card import write_model_card
    from .pixel_fit import PixelFitSettings, fit_pixel

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
    bundle: Annotated[Path, typer.Option(help="model bundle folder")],
    data: Annotated[Path, typer.Option(help=".npy of complex images [n, ny, nx], or a folder with multicoil_kspace/")],
    slices: Annotated[
        str, typer.Option(help="slice range START:STOP of the .npy (e.g. the validation blocks)")
    ] = "140:160",
    acceleration: Annotated[float, typer.Option(help="acceleration of the radial view-ordered masks")] = 5.0,
    iterations: Annotated[int, typer.Option(help="BART iterations")] = 300,
    out: Annotated[Path | None, typer.Option(help="write the table (Markdown) and the rows (JSON)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """SNR, SSIM and seconds per slice for zero-filled, CS-WV, CS-TV and the bundle on the same slices and masks."""
    import json

    import numpy as np

    from recon_plugin.evaluation import compare, image_cases, markdown_table, multicoil_cases
    from recon_plugin.reconstructors import RGANCS, BartCS, ZeroFilled

    if data.is_dir():
        cases = multicoil_cases(data, acceleration=acceleration)
    else:
        start, stop = (int(v) for v in slices.split(":"))
        cases = image_cases(np.load(data, mmap_mode="r"), range(start, stop), acceleration)
    methods = [
        ZeroFilled(),
        BartCS("wavelet", iterations=iterations),
        BartCS("tv", iterations=iterations),
        RGANCS(bundle, device=device),
    ]
    rows = compare(cases, methods)
    table = markdown_table(rows)
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


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

    (case,) = image_cases(np.load(data, mmap_mode="r"), [index], acceleration)
    case.problem.reference = case.reference
    console.print(f"wrote {write_copies_view(load_bundle(bundle), case.problem, out)}")


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()
