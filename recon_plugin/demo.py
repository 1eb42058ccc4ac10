"""The demo: retrospectively undersample the bundled slices, reconstruct, compare, save PNG + JSON."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BartNotFoundError, InvalidInputError
from .masks import make_mask, write_mask_files
from .metrics import all_metrics
from .preview import image_grid
from .reconstructors import RGANCS, Reconstructor, ZeroFilled
from .reconstructors.bart_cs import BartCS
from .sample_data import load_colin_slices, split_held_out
from .simulate import simulate_problem, with_smooth_phase

log = logging.getLogger(__name__)


@dataclass
class DemoRow:
    """Metrics of one method on one slice."""

    method: str
    slice: int
    snr_db: float
    ssim: float
    seconds: float
    dc_residual: float


def run_demo(
    out: Path,
    bundle: Path | None = None,
    family: str = "radial",
    acceleration: float = 5.0,
    seed: int = 0,
    device: str | None = None,
    cs: bool = True,
    model: str = "auto",
) -> list[DemoRow]:
    """Reconstruct the held-out sample slices with zero-filled, RGANCS (``bundle``, default: the gadgets' bundle for
    ``device`` and ``model``, their ``model`` property) and, with ``cs`` and BART installed, BART CS-Wavelet and
    CS-TV at their tuned lambdas; write PNG, mask and JSON to ``out``. Without BART the CS rows are left out with a
    warning. The bundle and the mask are checked before anything is written: a bad one leaves ``out`` as it was."""
    from .pipeline import default_rgancs

    # loads and checks the bundle(s); without one, the gadgets' default routing by coil count
    if bundle is not None and model != "auto":
        raise InvalidInputError(f"a bundle ({bundle}) and model={model} both name a bundle; give one of them")
    rgancs = default_rgancs(device or "auto", model=model) if bundle is None else RGANCS(bundle, device=device)
    _, slices = split_held_out(load_colin_slices())
    mask_result = make_mask(family, slices.shape[1:], acceleration, seed=seed)
    methods: list[Reconstructor] = [ZeroFilled(), rgancs]
    if cs:
        try:
            methods += [BartCS("wavelet", workers=1), BartCS("tv", workers=1)]
        except BartNotFoundError as exc:
            log.warning("demo: CS-Wavelet and CS-TV left out: %s", exc)
    out.mkdir(parents=True, exist_ok=True)
    write_mask_files(mask_result, out / "mask")
    rng = np.random.default_rng(seed)
    problems = [
        simulate_problem(with_smooth_phase(s, rng), mask_result.mask, meta={"slice": i}) for i, s in enumerate(slices)
    ]
    results = {m.name: m.reconstruct_batch(problems) for m in methods}
    rows: list[DemoRow] = []
    grid = []
    for i, p in enumerate(problems):
        ref = p.reference
        tiles = [ref]
        for name, res in results.items():
            m = all_metrics(ref, res[i].image)
            rows.append(DemoRow(name, i, m["snr_db"], m["ssim"], res[i].meta["seconds"], res[i].meta["dc_residual"]))
            tiles.append(res[i].image)
        tiles += [5 * (np.abs(results[n][i].image) - np.abs(ref)) for n in results]
        grid.append(tiles)
    labels = ["reference", *results, *(f"|err| x5 {n}" for n in results)]
    image_grid(grid, labels, out / "demo.png")
    summary = {
        "mask": {"family": family, "acceleration_requested": acceleration, "acceleration": mask_result.acceleration},
        "bundle": str(bundle) if bundle is not None else sorted({str(r.meta.get("model")) for r in results["rgancs"]}),
        "rows": [r.__dict__ for r in rows],
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rows
