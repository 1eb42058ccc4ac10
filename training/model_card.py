"""A bundle's MODEL_CARD.md, rendered from its sidecar so the two never disagree."""

from __future__ import annotations

import json
from pathlib import Path


def write_model_card(bundle: str | Path, data_terms: str, notes: str = "") -> Path:
    """Write MODEL_CARD.md next to the bundle's sidecar; returns its path."""
    folder = Path(bundle)
    side = json.loads((folder / "bundle.json").read_text())
    model, train, val = side["model"], side.get("training", {}), side.get("validation", {})
    dc = model["data_consistency"]
    if dc == "cg":
        dc = f"cg ({model.get('cg_iterations')} CG steps per copy) data consistency, initial image {model.get('init')}"
        dc += f" ({model.get('init_iterations')} steps)" if model.get("init") == "cg_sense" else ""
    else:
        dc += " data consistency"
    arch = (
        f"{model['copies']}x{model['blocks']}x{model['features']} "
        f"({'shared' if model['shared'] else 'independent'} weights, {dc}, "
        f"{model['output_activation']} output{', global skip' if model.get('global_skip') else ''}"
        f"{', output gain fitted to the measured data' if model.get('output_gain') else ''}), "
        f"{side.get('parameters', '?')} parameters"
    )
    lines = [
        f"# Model card: {side['name']}",
        "",
        f"- Architecture: RecurrentProximalNet {arch}.",
        _mask_line(side["mask"]),
        f"- Normalisation: {side['normalisation']}.",
        f"- Weights sha256: `{side['weights_sha256']}`; package version {side['package_version']}.",
        "",
        "## Training data",
        "",
        *(f"- {k}: {v}" for k, v in side["training_data"].items()),
        f"- Terms: {data_terms}",
        "",
        "## Training settings",
        "",
        *(f"- {k}: {v}" for k, v in train.items()),
        "",
    ]
    if val:
        lines += [
            "## Validation (held-out slices, mean)",
            "",
            "| method | SNR dB | SSIM |",
            "|---|---|---|",
            f"| zero-filled | {val['zero_filled_snr_db']:.2f} | {val['zero_filled_ssim']:.3f} |",
            f"| this model | {val['snr_db']:.2f} | {val['ssim']:.3f} |",
            "",
        ]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    path = folder / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def _mask_line(mask: dict) -> str:
    """What the model was trained for: one family at one acceleration, or a mixture."""
    if mask.get("family") == "mixture":
        return f"- Masks trained for: a new mask per example from the mixture {', '.join(mask.get('mixture', []))}."
    per = " (a new mask per example)" if mask.get("per_sample") else ""
    return f"- Mask trained for: {mask.get('family')} at {mask.get('acceleration')}x{per}."
