"""Shared pieces of the training data sets: named errors and inference-identical normalisation."""

from __future__ import annotations

import numpy as np
import torch

from recon_plugin.errors import InvalidInputError, ShapeMismatchError
from recon_plugin.physics import SenseOperator
from recon_plugin.reconstructors.rgancs import robust_scale
from training.data import Batch


class DatasetError(InvalidInputError):
    """A training data set cannot be built from the given source."""


class UnreadableImageError(DatasetError):
    """An image file is missing, of an unknown kind, or cannot be decoded."""


class ImageTooSmallError(DatasetError, ShapeMismatchError):
    """An image is smaller than the crop (matrix) asked for."""


class NotFullySampledError(DatasetError):
    """A raw file used as training reference is undersampled; training needs fully sampled k-space."""


class EmptyDatasetError(DatasetError):
    """A data set holds no example (no file, no slice)."""


def normalised_batch(y: torch.Tensor, op: SenseOperator, x: torch.Tensor, percentile: float = 99.0) -> Batch:
    """Divide y and x per slice by ``robust_scale(op.adjoint(y))``, exactly as ``RGANCS`` does at inference."""
    scale = robust_scale(op.adjoint(y), percentile)
    return Batch(y=y / scale[:, None, None, None], op=op, x=x / scale[:, None, None])


def check_one_shape(shapes: list[tuple[int, ...]], what: str = "slices") -> tuple[int, ...]:
    """The common shape of a batch; ShapeMismatchError when the batch mixes shapes."""
    if len(set(shapes)) > 1:
        raise ShapeMismatchError(
            f"a batch cannot mix {what} of shapes {sorted(set(shapes))}; crop to one matrix or batch by shape"
        )
    return shapes[0]


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips along both axes, and a random multiple of 90 degrees when the image is square."""
    if rng.random() < 0.5:
        img = img[::-1]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if img.shape[0] == img.shape[1]:
        img = np.rot90(img, int(rng.integers(4)))
    return np.ascontiguousarray(img)
