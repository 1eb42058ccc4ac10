"""Ship a campaign's bundle: copy it into sample_data/weights under a name, set its inference-time solver settings,
and write its MODEL_CARD.md with the evaluation tables rendered from docs/eval.

Usage::

    python scripts/ship_bundle.py campaigns/NAME/bundle NEW_NAME [--cg-iterations 4] [--output-gain] [--phase-average 4]
        [--flip-average 4]
        [--group GROUP]
        [--notes FILE.md] [--terms TEXT]

``--group`` names the eval-suite method group whose JSON files (``docs/eval/SET.GROUP.json``) hold this bundle's
figures; the card's tables put it beside zero-filled, CS-WV and CS-TV.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from render_eval import TABLES, render

from recon_plugin.model import load_bundle
from training.model_card import write_model_card

TERMS = (
    "SIAT_MRIdata200 and SIAT500data-singlecoil (Shenzhen Institutes of Advanced Technology; Liu et al., MRM 2020): "
    "no licence stated, treated as non-commercial research use; these weights inherit that restriction. Coil maps: "
    "ESPIRiT maps of every measured array of the shared data folder (non-commercial research use; the LORAKS "
    "example: research and non-profit use), augmented; the evaluation's real brains are among those arrays, so "
    "their coil geometries (never their images) were seen in training."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("name")
    parser.add_argument("--cg-iterations", type=int)
    parser.add_argument("--output-gain", action="store_true", help="fit the final image's gain to the measured data")
    parser.add_argument("--phase-average", type=int, help="average this many global-phase rotations at inference")
    parser.add_argument("--flip-average", type=int, help="average each copy's G over this many mirrorings (2 or 4)")
    parser.add_argument("--group", default="")
    parser.add_argument("--label", default="this model")
    parser.add_argument("--notes", type=Path)
    parser.add_argument("--terms", default=TERMS)
    parser.add_argument("--eval", type=Path, default=Path("docs/eval"))
    parser.add_argument("--weights-dir", type=Path, default=Path("sample_data/weights"))
    parser.add_argument("--card-only", action="store_true", help="rewrite the shipped bundle's MODEL_CARD.md only")
    args = parser.parse_args()
    out = args.weights_dir / args.name
    if not args.card_only:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(args.bundle, out, ignore=shutil.ignore_patterns("MODEL_CARD.md"))
        side_path = out / "bundle.json"
        side = json.loads(side_path.read_text())
        side["name"] = args.name
        if args.cg_iterations:
            side["model"]["cg_iterations"] = args.cg_iterations  # a solver setting: no weights of its own
        if args.output_gain:
            side["model"]["output_gain"] = True  # no weights of its own either
        if args.phase_average:
            side["model"]["phase_average"] = args.phase_average  # inference only, no weights
        if args.flip_average:
            side["model"]["flip_average"] = args.flip_average  # inference only, no weights
        side_path.write_text(json.dumps(side, indent=2) + "\n")
    load_bundle(out)  # verifies hash, architecture and parameter count
    notes = args.notes.read_text() if args.notes else ""
    curve = args.bundle.parent / "curve.png"
    if curve.is_file():
        if not args.card_only:
            shutil.copy(curve, out / "training_curve.png")
        notes += (
            f"\n\nTraining curves (loss, simulated and real-data validation): `training_curve.png`, from the "
            f"campaign `{args.bundle.parent.name}` (its `log.csv` has every row)."
        )
    if args.group:  # GROUP, or GROUP=LABEL,GROUP=LABEL for several columns
        columns = [tuple(g.split("=", 1)) if "=" in g else (g, args.label) for g in args.group.split(",")]
        tables = "\n\n".join(f"### {t}\n\n{render(t, args.eval, columns)}" for t in TABLES)
        notes += (
            "\n\n## Evaluation (recon-train eval through scripts/eval_suite.py; SNR dB / SSIM means; same masks and "
            "ESPIRiT maps for every method; BART at its tuned lambdas, 300 iterations)\n\n" + tables
        )
    print(write_model_card(out, args.terms, notes))


if __name__ == "__main__":
    main()
