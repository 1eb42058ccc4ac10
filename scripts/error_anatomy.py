"""Where a method's error lies on the real brains: its intensity scale, the k-space band of its error, and how much
of it lies inside the object.

Usage::

    python scripts/error_anatomy.py [--bundle sample_data/weights/rgancs_cg_10x3x32i_mc_deep]
        [--methods rgancs,cs_wavelet] [--data ../shared/data/multicoil_kspace] [--family radial --acceleration 5]

The cases are the evaluation's (``recon-train eval``: the five real brains, the three older ones and the two newer
ones each with mask seeds 200 + i, 24-line centre, ESPIRiT maps from the undersampled data); RGANCS runs with and
without its output gain. Per slice and method it prints the SNR, the real scale ``c`` that would minimise
``|| |x| - c |x_hat| ||`` against the reference (1 = right intensity), the SNR at that scale, and the share of the
error energy in four bands of k-space radius (fractions of the matrix: < 0.05, 0.05-0.15, 0.15-0.3, >= 0.3), and the
magnitude error energy inside the object (reference above 10 % of its maximum) and outside it, each in units of
1e-4 of the reference's energy (their sum is 10^(-SNR/10) x 1e4).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import numpy as np

from recon_plugin.metrics import snr_db
from recon_plugin.sample_data import DEFAULT_BUNDLE
from training.evaluate import build_cases, build_methods, make_masks, open_data
from training.real_validation import REAL_BRAINS

BANDS = (0.0, 0.05, 0.15, 0.3, np.inf)


def band_shares(error: np.ndarray) -> list[float]:
    """Share of ``error``'s energy in each k-space radius band of :data:`BANDS`."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(error))) ** 2
    ny, nx = error.shape
    yy, xx = np.mgrid[:ny, :nx]
    radius = np.hypot((yy - ny / 2) / ny, (xx - nx / 2) / nx)
    total = power.sum()
    return [float(power[(radius >= lo) & (radius < hi)].sum() / total) for lo, hi in itertools.pairwise(BANDS)]


def object_background_error(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    """Magnitude error energy inside the object (|reference| above 10 % of its maximum) and outside it, in units
    of 1e-4 of the reference's energy."""
    ref, est = np.abs(reference), np.abs(image)
    inside = ref > 0.1 * ref.max()
    error = (ref - est) ** 2 / (ref**2).sum() * 1e4
    return float(error[inside].sum()), float(error[~inside].sum())


def describe(reference: np.ndarray, image: np.ndarray) -> str:
    """SNR, best scale, SNR at that scale, error band shares, object / background error."""
    ref, est = np.abs(reference), np.abs(image)
    scale = float((ref * est).sum() / (est * est).sum())
    shares = " ".join(f"{s:.2f}" for s in band_shares(ref - est))
    inside, outside = object_background_error(reference, image)
    return (
        f"{snr_db(ref, est):6.2f} {scale:6.3f} {snr_db(ref, scale * est):6.2f}  {shares} | {inside:6.2f} {outside:6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--methods", default="rgancs,cs_wavelet")
    parser.add_argument("--data", default="../shared/data/multicoil_kspace")
    parser.add_argument("--family", default="radial")
    parser.add_argument("--acceleration", type=float, default=5.0)
    args = parser.parse_args()
    source = open_data(args.data, list(REAL_BRAINS))
    slices = source.select(None)
    masks = []
    for group in (slices[:3], slices[3:]):  # the eval suite's two sets, each from seed 200
        masks += make_masks(group, args.family, args.acceleration, 24, 200)
    cases = build_cases(source.kind, slices, masks)
    print(
        "slice method snr_db best_scale snr_at_best_scale | error share by k-space radius <0.05 .05-.15 .15-.3 >=.3"
        " | error x1e4 object background"
    )
    for name in args.methods.split(","):
        (method,) = build_methods([name], args.bundle if name == "rgancs" else None, device="cpu")
        variants = [(name, None)]
        if name == "rgancs":
            model = method.fast.net
            variants = [("rgancs (no gain)", False), ("rgancs (gain)", True)]
        for label, gain in variants:
            if gain is not None:
                model.config = dataclasses.replace(model.config, output_gain=gain)
            for case, result in zip(cases, method.reconstruct_batch([c.problem for c in cases]), strict=True):
                print(f"{case.name} {label} {describe(case.reference, result.image)}", flush=True)


if __name__ == "__main__":
    main()
