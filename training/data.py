"""Training examples from images: simulated, undersampled, normalised like the scanner path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon_plugin.masks import make_mask
from recon_plugin.physics import SenseOperator, fft2c
from recon_plugin.reconstructors.rgancs import robust_scale
from recon_plugin.simulate import with_smooth_phase


@dataclass
class Batch:
    """Normalised measurements y, their operator and the normalised reference x."""

    y: torch.Tensor
    op: SenseOperator
    x: torch.Tensor
    #: The network's initial image when it was computed with the batch (a bank producer's CG-SENSE), else None.
    x0: torch.Tensor | None = None


class SimulatedSlices:
    """Single-coil examples from image slices [n, ny, nx] (magnitude or complex).

    Magnitude slices get a smooth random phase per draw; flips and 90-degree
    rotations augment when the matrix is square (flips only otherwise). A new
    mask is drawn per example (``per_sample_masks``) or one fixed mask is used.
    Examples are scaled exactly as the RGANCS reconstructor scales them: by the
    given percentile of |zero-filled|.
    """

    def __init__(
        self,
        slices: np.ndarray,
        *,
        mask_family: str = "radial",
        acceleration: float = 5.0,
        per_sample_masks: bool = True,
        augment: bool = True,
        percentile: float = 99.0,
        seed: int = 0,
    ) -> None:
        self.slices = slices
        self.mask_family = mask_family
        self.acceleration = acceleration
        self.per_sample_masks = per_sample_masks
        self.augment = augment
        self.percentile = percentile
        self.rng = np.random.default_rng(seed)
        self.shape = tuple(slices.shape[1:])
        self.fixed_mask = make_mask(mask_family, self.shape, acceleration, seed=seed).mask

    def _image(self, index: int) -> np.ndarray:
        img = self.slices[index]
        img = img.astype(np.complex64) if np.iscomplexobj(img) else with_smooth_phase(img.astype(np.float32), self.rng)
        if self.augment:
            if self.rng.random() < 0.5:
                img = img[::-1]
            if self.rng.random() < 0.5:
                img = img[:, ::-1]
            if img.shape[0] == img.shape[1]:
                img = np.rot90(img, int(self.rng.integers(4)))
        return np.ascontiguousarray(img)

    def _mask(self) -> np.ndarray:
        if not self.per_sample_masks:
            return self.fixed_mask
        seed = int(self.rng.integers(2**31))
        return make_mask(self.mask_family, self.shape, self.acceleration, seed=seed).mask

    def batch(self, indices: list[int] | np.ndarray) -> Batch:
        """Build a normalised batch for the given slice indices."""
        images = np.stack([self._image(int(i)) for i in indices])
        masks = torch.from_numpy(np.stack([self._mask() for _ in indices]))
        x = torch.from_numpy(images)
        op = SenseOperator(masks)
        y = fft2c(x).unsqueeze(1) * masks.unsqueeze(1)
        scale = robust_scale(op.adjoint(y), self.percentile)
        return Batch(y=y / scale[:, None, None, None], op=op, x=x / scale[:, None, None])

    def sample(self, batch_size: int) -> Batch:
        """A random batch."""
        return self.batch(self.rng.integers(0, len(self.slices), batch_size))
