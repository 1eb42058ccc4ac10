"""Real-data validation of a bundle at several CG steps per copy, with and without the output gain (inference-time
settings without weights).

Usage::

    python scripts/real_val_cg_sweep.py sample_data/weights/rgancs_cg_10x1x32i_mc --cg 2,3,4,5,6,8 [--gain off,on]
        [--data ../shared/data/multicoil_kspace]

The cases are those of training's real-data validation (``training.real_validation``: the real brains at radial
5x and uniform R=3 + 24 ACS, with their own mask seeds), so picking the setting here does not use the evaluation's
masks.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from recon_plugin.model import load_bundle
from training.config import DataConfig
from training.real_validation import real_validation_cases, validate_real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--cg", default="2,3,4,5,6,8", help="comma-separated CG steps per copy")
    parser.add_argument("--gain", default="", help="off, on or off,on: the output gain (default: the bundle's)")
    parser.add_argument("--data", default="../shared/data/multicoil_kspace")
    args = parser.parse_args()
    cases = real_validation_cases(DataConfig(real_val_path=args.data))
    bundle = load_bundle(args.bundle)
    percentile = float(bundle.normalisation.get("percentile", 99.0))  # as the RGANCS reconstructor scales inputs
    if not set(filter(None, args.gain.split(","))) <= {"off", "on"}:
        parser.error(f"--gain {args.gain!r}: off, on or off,on")
    gains = [v == "on" for v in args.gain.split(",") if v] or [bundle.model.config.output_gain]
    print("cg_steps output_gain real_snr_db real_ssim")
    for steps in (int(v) for v in args.cg.split(",")):
        for gain in gains:
            bundle.model.config = dataclasses.replace(bundle.model.config, cg_iterations=steps, output_gain=gain)
            result = validate_real(bundle.model, cases, percentile, torch.device("cpu"))
            snr, ssim = result["real_snr_db"], result["real_ssim"]
            print(f"{steps} {'on' if gain else 'off'} {snr:.2f} {ssim:.4f}", flush=True)


if __name__ == "__main__":
    main()
