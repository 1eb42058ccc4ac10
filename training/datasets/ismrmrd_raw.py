"""Fully sampled ISMRMRD raw files -> training slices, assembled by the scanner path's own code."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon_plugin.coils import sense_combine
from recon_plugin.errors import InvalidInputError
from recon_plugin.kspace import Assembler
from recon_plugin.masks import make_mask
from recon_plugin.physics import SenseOperator, ifft2c
from recon_plugin.problem import Problem
from recon_plugin.replay.dataset import read_raw
from training.data import Batch

from .base import EmptyDatasetError, NotFullySampledError, check_one_shape, normalised_batch

log = logging.getLogger(__name__)


@dataclass
class RawSlice:
    """One assembled, fully sampled problem: its source, k-space, and whether it is a 3D ky-kz plane."""

    path: Path
    problem: Problem
    is_3d: bool

    def maps(self) -> np.ndarray:
        """Coil maps of the fully sampled problem (ESPIRiT once, like the gadgets; ones for one coil)."""
        maps = self.problem.coil_maps()
        return np.ones_like(self.problem.kspace) if maps is None else maps

    def reference(self) -> np.ndarray:
        """The fully sampled image, SENSE-combined with ``maps()``."""
        if self.problem.coils == 1:
            return ifft2c(self.problem.kspace[0])
        return sense_combine(self.problem.kspace, self.maps())


def assemble_file(path: str | Path, calib_width: int = 24) -> list[RawSlice]:
    """Assemble every problem of a raw file (prewhitening, oversampling removal) as the gadgets do.

    Raises NotFullySampledError when any problem's mask is not full, and the assembler's
    and ``read_raw``'s named errors for malformed files.
    """
    path = Path(path)
    raw = read_raw(path)
    assembler = Assembler(raw.header_xml, retro=None, calib_width=calib_width)
    for acq in raw.acquisitions:
        assembler.add(acq)
    out = []
    for item in assembler.problems():
        problem = item.problem
        if not problem.mask.all():
            raise NotFullySampledError(
                f"{path} is undersampled ({problem.acceleration:.2f}x in slice {problem.meta}); training "
                "needs fully sampled raw data as reference"
            )
        out.append(RawSlice(path, problem, assembler.encoding.is_3d))
    return out


class RawFileSlices:
    """Training slices from fully sampled ISMRMRD raw files, multi-coil, normalised like inference.

    Each assembled problem (a 2D slice, or a ky-kz plane of a 3D scan) is one slice. The
    reference x is the fully sampled image SENSE-combined with ``Problem.coil_maps()``; y is the
    measured (whitened) k-space under a mask drawn per example (``per_sample_masks``) or fixed per
    matrix. ``mask_family`` None picks "radial" for 3D planes and "lines" for 2D slices, as the
    assembler's retrospective masks do; ``calib`` is the fully sampled centre.
    Coil maps are estimated on first use and cached.
    """

    def __init__(
        self,
        paths: Sequence[str | Path] | str | Path,
        *,
        mask_family: str | None = None,
        acceleration: float = 5.0,
        per_sample_masks: bool = True,
        seed: int = 0,
        calib: int = 12,
        calib_width: int = 24,
        percentile: float = 99.0,
    ) -> None:
        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        if not paths:
            raise EmptyDatasetError("no raw file given")
        self.slices: list[RawSlice] = [s for p in paths for s in assemble_file(p, calib_width)]
        self._setup(mask_family, acceleration, per_sample_masks, seed, calib, percentile)
        log.info("%d training slices from %d raw file(s)", len(self.slices), len(paths))

    def _setup(
        self,
        mask_family: str | None,
        acceleration: float,
        per_sample_masks: bool,
        seed: int,
        calib: int,
        percentile: float,
    ) -> None:
        """Mask settings, RNG and empty caches, once ``self.slices`` is set (EmptyDatasetError when empty)."""
        if not self.slices:
            raise EmptyDatasetError("the files hold no slice")
        self.mask_family, self.acceleration, self.calib = mask_family, acceleration, calib
        self.per_sample_masks, self.percentile, self.seed = per_sample_masks, percentile, seed
        self.rng = np.random.default_rng(seed)
        self._maps: dict[int, np.ndarray] = {}
        self._refs: dict[int, np.ndarray] = {}
        self._fixed: dict[tuple[str, tuple[int, int]], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.slices)

    def family(self, index: int) -> str:
        """Mask family of slice ``index``."""
        return self.mask_family or ("radial" if self.slices[index].is_3d else "lines")

    def _make_mask(self, family: str, shape: tuple[int, int], seed: int) -> np.ndarray:
        calib = self.calib if family == "lines" else min(self.calib, *shape)
        return np.asarray(make_mask(family, shape, self.acceleration, seed=seed, calib=calib).mask)

    def shape_key(self, index: int) -> tuple[int, int, int]:
        """(coils, ny, nx) of slice ``index``: a batch holds one key only."""
        problem = self.slices[index].problem
        return (problem.coils, *problem.shape)

    def _mask(self, index: int) -> np.ndarray:
        family, shape = self.family(index), self.shape_key(index)[1:]
        if self.per_sample_masks:
            return self._make_mask(family, shape, int(self.rng.integers(2**31)))
        key = (family, shape)
        if key not in self._fixed:
            self._fixed[key] = self._make_mask(family, shape, self.seed)
        return self._fixed[key]

    def _example(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fully sampled k-space, coil maps and reference of slice ``index`` (maps and reference cached)."""
        if index not in self._maps:
            if not 0 <= index < len(self.slices):
                raise InvalidInputError(f"slice index {index} is outside 0..{len(self.slices) - 1}")
            self._maps[index] = self.slices[index].maps()
            self._refs[index] = self.slices[index].reference()
        return self.slices[index].problem.kspace, self._maps[index], self._refs[index]

    def batch(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """A normalised batch of the given slices (one matrix and coil count per batch)."""
        indices = [int(i) for i in indices]
        check_one_shape([self.shape_key(i) for i in indices])
        full, maps, refs = zip(*(self._example(i) for i in indices), strict=True)
        masks = torch.from_numpy(np.stack([self._mask(i) for i in indices]))
        kspace = torch.from_numpy(np.stack(full))
        op = SenseOperator(masks, torch.from_numpy(np.stack(maps)))
        y = kspace * masks.unsqueeze(1)
        return normalised_batch(y, op, torch.from_numpy(np.stack(refs)), self.percentile)

    def sample(self, batch_size: int) -> Batch:
        """A random batch; with several matrices, all drawn from the matrix of the first pick."""
        first = int(self.rng.integers(len(self.slices)))
        shape = self.shape_key(first)
        same = [i for i in range(len(self.slices)) if self.shape_key(i) == shape]
        rest = self.rng.choice(same, batch_size - 1) if batch_size > 1 else []
        return self.batch([first, *(int(i) for i in rest)])
