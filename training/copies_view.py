"""Per-copy view of a bundle (like the paper's Fig. 10): every copy's output and its k-space spectrum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon_plugin.model.bundle import Bundle
from recon_plugin.physics import fftc
from recon_plugin.preview import image_grid
from recon_plugin.problem import Problem
from recon_plugin.reconstructors.base import batch_operator
from recon_plugin.reconstructors.rgancs import robust_scale


def copy_outputs(bundle: Bundle, problem: Problem) -> list[np.ndarray]:
    """Zero-filled input and the output of every copy, in the problem's scale."""
    op, y = batch_operator([problem], torch.device("cpu"))
    model = bundle.model.to("cpu").eval()
    with torch.inference_mode():
        zero_filled = op.adjoint(y)
        scale = robust_scale(zero_filled, float(bundle.normalisation.get("percentile", 99.0)))
        _, outputs = model(y / scale[:, None, None, None], op)
    return [zero_filled[0].numpy()] + [(o * scale[:, None, None])[0].numpy() for o in outputs]


def write_copies_view(bundle: Bundle, problem: Problem, path: str | Path) -> Path:
    """PNG: top row the zero-filled input, each copy's output and the reference (if any);
    bottom row their log-magnitude spectra."""
    images = copy_outputs(bundle, problem)
    labels = ["zero-filled"] + [f"copy {k + 1}" for k in range(len(images) - 1)]
    if problem.reference is not None:
        images.append(np.asarray(problem.reference))
        labels.append("reference")
    spectra = [np.log1p(np.abs(fftc(im)) / (np.abs(fftc(images[-1])).max() or 1.0) * 1e3) for im in images]
    top = float(np.percentile(np.abs(images[-1]), 99.5)) or 1.0
    return image_grid([images, spectra], labels, path, vmax=[top, float(np.max(spectra[-1])) or 1.0])
