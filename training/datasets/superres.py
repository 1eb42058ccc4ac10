"""Image folders -> super-resolution examples (4x4 block average, the paper's face experiment)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from recon_plugin.errors import ShapeMismatchError
from recon_plugin.physics import SuperResolutionOperator

from .base import EmptyDatasetError, ImageTooSmallError, UnreadableImageError, augment

#: File suffixes read as images.
SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class SRBatch:
    """Low-resolution y [B, n/k, n/k], the operator, the reference x [B, n, n] in [0, 1], network input x0."""

    y: torch.Tensor
    op: SuperResolutionOperator
    x: torch.Tensor
    x0: torch.Tensor


def read_gray(path: Path) -> np.ndarray:
    """Grayscale float32 image in [0, 1]; UnreadableImageError when Pillow cannot decode it."""
    try:
        with Image.open(path) as img:
            gray = img.convert("L")
            return np.asarray(gray, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UnreadableImageError(f"{path} cannot be read as an image ({exc})") from exc


class ImageFolderSR:
    """Random ``crop`` x ``crop`` grayscale crops of the PNG/JPG images in ``folder`` (recursively).

    y = ``SuperResolutionOperator(kernel).forward(x)``; x0 = its ``approximate_inverse(y, steps,
    step)`` (the paper's 5 steps of 0.1). Images stay in [0, 1], no rescaling: they match a
    1-channel model with a sigmoid output (``RecurrentProximalNet(channels=1,
    output_activation="sigmoid")``, called as ``model(batch.y, batch.op, batch.x0)``).
    Every file's size is checked when the data set is built (headers only).
    """

    def __init__(
        self,
        folder: str | Path,
        crop: int = 128,
        kernel: int = 4,
        steps: int = 5,
        step: float = 0.1,
        seed: int = 0,
        *,
        augment: bool = True,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UnreadableImageError(f"image folder {self.folder} does not exist")
        if crop < kernel or crop % kernel:
            raise ShapeMismatchError(f"crop {crop} must be a positive multiple of the {kernel}x{kernel} kernel")
        self.paths = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not self.paths:
            raise EmptyDatasetError(f"{self.folder} holds no {'/'.join(SUFFIXES)} image")
        for path in self.paths:
            try:
                with Image.open(path) as img:
                    width, height = img.size
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise UnreadableImageError(f"{path} cannot be read as an image ({exc})") from exc
            if width < crop or height < crop:
                raise ImageTooSmallError(f"{path} is {width}x{height}, smaller than the {crop}x{crop} crop")
        self.crop, self.steps, self.step, self.augment = crop, steps, step, augment
        self.op = SuperResolutionOperator(kernel)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def _crop(self, index: int) -> np.ndarray:
        img = read_gray(self.paths[index])
        n = self.crop
        top = int(self.rng.integers(img.shape[0] - n + 1))
        left = int(self.rng.integers(img.shape[1] - n + 1))
        img = img[top : top + n, left : left + n]
        return augment(img, self.rng) if self.augment else np.ascontiguousarray(img)

    def batch(self, indices: Sequence[int] | np.ndarray) -> SRBatch:
        """Crops of the images at ``indices`` with their low-resolution measurements."""
        x = torch.from_numpy(np.stack([self._crop(int(i)) for i in indices]))
        y = self.op.forward(x)
        return SRBatch(y=y, op=self.op, x=x, x0=self.op.approximate_inverse(y, self.steps, self.step))

    def sample(self, batch_size: int) -> SRBatch:
        """A random batch."""
        return self.batch(self.rng.integers(0, len(self.paths), batch_size))
