"""Write the bundle of one checkpoint of a campaign: the campaign's bundle with that checkpoint's generator weights,
step, seconds and validation metrics, so the step with the best real-data validation can be shipped, not only the
last one.

Usage::

    python scripts/checkpoint_bundle.py campaigns/NAME/checkpoints/checkpoint-00000300.safetensors OUT_DIR \\
        [--like campaigns/NAME/bundle]

``--like`` (default: the ``bundle/`` beside the checkpoint's folder) gives the architecture and the sidecar's data,
mask and normalisation fields; a checkpoint of another architecture is refused (strict weight loading).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recon_plugin.model import load_bundle, save_bundle
from training.checkpoint import load_checkpoint


def checkpoint_bundle(checkpoint: Path, out: Path, like: Path | None = None) -> Path:
    """Write ``checkpoint``'s generator as a bundle in ``out`` with ``like``'s sidecar fields; returns the sidecar."""
    like = like if like is not None else checkpoint.parent.parent / "bundle"
    bundle = load_bundle(like)
    state = load_checkpoint(checkpoint)
    bundle.model.load_state_dict(state["model"], strict=True)
    side = bundle.sidecar
    training = {**side.get("training", {}), "steps": state["step"], "seconds": round(float(state["seconds"]), 1)}
    return save_bundle(
        bundle.model,
        out,
        mask=side["mask"],
        training_data=side["training_data"],
        normalisation=side.get("normalisation"),
        name=out.name,
        extra={"training": training, "validation": state.get("metrics", {})},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--like", type=Path, help="bundle of the same campaign (default: CHECKPOINT/../../bundle)")
    args = parser.parse_args()
    print(checkpoint_bundle(args.checkpoint, args.out, args.like))


if __name__ == "__main__":
    main()
