"""Image arrays (.npy or NIfTI) -> simulated, undersampled, normalised training examples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from recon_plugin.errors import InvalidInputError
from recon_plugin.masks import make_mask
from recon_plugin.physics import SenseOperator, fft2c
from recon_plugin.simulate import simulated_coil_maps, with_smooth_phase
from training.data import Batch

from .base import EmptyDatasetError, ImageTooSmallError, UnreadableImageError, augment, normalised_batch
from .scanner_sim import ScannerSimulation, correlated_noise, draw_mask, kspace_taper

#: Slices per SIAT block (one scan each).
SIAT_BLOCK = 10


class Split(NamedTuple):
    """Slice indices of a train / validation split."""

    train: np.ndarray
    val: np.ndarray


def siat_blocks(
    train: Iterable[int] = range(1, 15),
    val: Iterable[int] = (15, 16),
    *,
    block_size: int = SIAT_BLOCK,
    blocks: int = 16,
) -> Split:
    """Slice indices of SIAT blocks (1-based, ``block_size`` consecutive slices per scan) for a split by block."""
    train_b, val_b = sorted({int(b) for b in train}), sorted({int(b) for b in val})
    bad = [b for b in train_b + val_b if not 1 <= b <= blocks]
    if bad:
        raise InvalidInputError(f"SIAT blocks are numbered 1..{blocks}; got {bad}")
    if set(train_b) & set(val_b):
        raise InvalidInputError(f"blocks {sorted(set(train_b) & set(val_b))} are in both train and val (slices leak)")

    def indices(bs: list[int]) -> np.ndarray:
        return np.array([(b - 1) * block_size + i for b in bs for i in range(block_size)], dtype=np.int64)

    return Split(indices(train_b), indices(val_b))


def load_many(sources: Sequence[str | Path], axis: int = 0) -> np.ndarray:
    """Slices of several files stacked in order (one in-memory array); they must share the in-plane matrix."""
    parts = [load_slices(p, axis) for p in sources]
    shapes = sorted({tuple(p.shape[1:]) for p in parts})
    if len(shapes) > 1:
        raise InvalidInputError(f"image files differ in matrix size {shapes}; give files of one size")
    if len(parts) == 1:
        return parts[0]
    dtype = np.complex64 if any(np.iscomplexobj(p) for p in parts) else np.float32
    return np.concatenate([np.asarray(p, dtype=dtype) for p in parts])


def fit_matrix(slices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Slices [n, ny, nx] centre-cropped or zero-padded to ``shape`` on each axis."""
    out = np.asarray(slices)
    for ax, n in ((1, shape[0]), (2, shape[1])):
        size = out.shape[ax]
        if size > n:
            start = (size - n) // 2
            out = out[:, start : start + n] if ax == 1 else out[:, :, start : start + n]
        elif size < n:
            widths = [(0, 0)] * 3
            widths[ax] = ((n - size) // 2, n - size - (n - size) // 2)
            out = np.pad(out, widths)
    return out


def extra_training_slices(items: Sequence[dict], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Training-only slices from ``[data].train_extra`` tables ({path, slices=[first, stop], exclude=[[a, b], ...]}).

    Returns (complex64 slices [n, *shape], per-slice "magnitude" flags, a summary per file). Slices of a real
    (magnitude) file are stored with zero imaginary part and flagged, so that each draw gives them a smooth phase.
    """
    parts, flags, summary = [], [], []
    for item in items:
        data = load_slices(item["path"])
        first, stop = item.get("slices", [0, len(data)])
        if stop > len(data):
            raise InvalidInputError(f"{item['path']}: slices {[first, stop]} exceed its {len(data)} slices")
        keep = [i for i in range(first, stop) if not any(a <= i < b for a, b in item.get("exclude", []))]
        if not keep:
            raise EmptyDatasetError(f"{item['path']}: no slice left after slices and exclude")
        chosen = fit_matrix(np.asarray(data[keep]), shape)
        magnitude = not np.iscomplexobj(chosen)
        parts.append(chosen.astype(np.complex64))
        flags.append(np.full(len(keep), magnitude))
        summary.append(
            {"file": Path(item["path"]).name, "slices": len(keep), "magnitude": magnitude, "from": list(data.shape[1:])}
        )
    return np.concatenate(parts), np.concatenate(flags), summary


def load_slices(source: str | Path | np.ndarray, axis: int = 0) -> np.ndarray:
    """Slices [n, ny, nx] from an array, a .npy file (memory-mapped) or a NIfTI volume (slices along ``axis``)."""
    if isinstance(source, np.ndarray):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise UnreadableImageError(f"image file {path} does not exist")
        name = path.name.lower()
        try:
            if name.endswith(".npy"):
                data = np.load(path, mmap_mode="r", allow_pickle=False)
            elif name.endswith((".nii", ".nii.gz")):
                import nibabel as nib

                data = np.asarray(nib.load(str(path)).dataobj)
            else:
                raise UnreadableImageError(f"{path}: unknown image file kind; use .npy, .nii or .nii.gz")
        except UnreadableImageError:
            raise
        except Exception as exc:  # numpy and nibabel raise many unrelated types for corrupt files
            raise UnreadableImageError(
                f"{path} cannot be read as an image array ({type(exc).__name__}: {exc})"
            ) from exc
    if data.ndim == 2:
        data = data[None]
    elif data.ndim == 3 and axis != 0:
        data = np.moveaxis(data, axis, 0)
    elif data.ndim != 3:
        raise UnreadableImageError(f"image arrays must be 2D or 3D, got shape {data.shape}")
    if data.dtype.kind not in "biufc":
        raise UnreadableImageError(f"image arrays must be numeric, got dtype {data.dtype}")
    return data


class ImageArraySlices:
    """Examples simulated from image slices: phase, coil maps, noise, mask, normalised like inference.

    ``source``: array, .npy (memory-mapped) or NIfTI volume; ``axis`` picks the slice axis of a
    volume; ``slices`` selects slice indices (e.g. ``siat_blocks().train``). Magnitude slices get a
    smooth random phase per draw. ``crop`` (int or (ny, nx)) centre-crops every slice to one
    matrix (a random position with ``random_crop``); slices smaller than the crop are an
    ImageTooSmallError unless ``pad`` (zero padding). ``coils`` > 1 uses simulated coil maps;
    ``noise`` adds complex Gaussian k-space noise of std ``noise`` x RMS(|image|). ``augment``
    flips and (square) rotates. Masks are drawn per example or fixed. x is the noise-free image.
    ``magnitude`` (one flag per slice of the source) marks magnitude slices stored in a complex array.

    ``scanner`` (a :class:`ScannerSimulation`) replaces ``coils``/``noise``/``mask_family`` by the
    scanner-like draws: per batch a coil count and map family, per example maps, correlated noise
    and a mask from the mixture; the model's maps are then estimated from each example's own
    ACS and x is the noise-free coil data combined with those maps. ``last_draws`` records the
    draws of the latest batch.
    """

    def __init__(
        self,
        source: str | Path | np.ndarray,
        *,
        slices: Sequence[int] | np.ndarray | None = None,
        axis: int = 0,
        crop: int | tuple[int, int] | None = None,
        pad: bool = False,
        random_crop: bool = False,
        coils: int = 1,
        noise: float = 0.0,
        mask_family: str = "radial",
        acceleration: float = 5.0,
        per_sample_masks: bool = True,
        calib: int | tuple[int, int] | None = None,
        augment: bool = True,
        percentile: float = 99.0,
        seed: int = 0,
        scanner: ScannerSimulation | None = None,
        sizes: Sequence[int] | None = None,
        magnitude: np.ndarray | None = None,
    ) -> None:
        self.data = load_slices(source, axis)
        #: Per-slice flags of ``data``: a flagged slice is a magnitude image stored as complex (smooth phase added).
        self.magnitude = None if magnitude is None else np.asarray(magnitude, dtype=bool)
        if self.magnitude is not None and self.magnitude.shape != (len(self.data),):
            raise InvalidInputError(
                f"magnitude flags: {self.magnitude.shape}, expected one per slice ({len(self.data)})"
            )
        self.indices = np.arange(len(self.data)) if slices is None else np.asarray(slices, dtype=np.int64)
        if self.indices.size == 0:
            raise EmptyDatasetError("no slice selected")
        if self.indices.min() < 0 or self.indices.max() >= len(self.data):
            raise InvalidInputError(f"slice indices must be in 0..{len(self.data) - 1}")
        if coils < 1 or noise < 0:
            raise InvalidInputError(f"coils must be >= 1 and noise >= 0, got {coils} and {noise}")
        source_shape = tuple(int(s) for s in self.data.shape[1:])
        shape = source_shape if crop is None else ((crop, crop) if isinstance(crop, int) else tuple(crop))
        if not pad and (shape[0] > source_shape[0] or shape[1] > source_shape[1]):
            raise ImageTooSmallError(
                f"slices are {source_shape[0]}x{source_shape[1]}, smaller than the {shape[0]}x{shape[1]} crop; "
                "choose a smaller crop or pad=True"
            )
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        #: Matrix sides drawn per batch (each axis independently) when given: ``shape`` changes with every batch.
        self.sizes = [int(n) for n in sizes] if sizes else None
        if self.sizes and (min(self.sizes) < 16 or (not pad and max(self.sizes) > min(source_shape))):
            raise ImageTooSmallError(
                f"matrix sizes {self.sizes} must be >= 16 and fit the {source_shape[0]}x{source_shape[1]} slices"
            )
        self.pad, self.random_crop, self.augment = pad, random_crop, augment
        self.noise, self.percentile = float(noise), percentile
        self.mask_family, self.acceleration, self.calib = mask_family, acceleration, calib
        self.per_sample_masks = per_sample_masks
        self.maps = None if coils == 1 else torch.from_numpy(simulated_coil_maps(self.shape, coils))
        self.rng = np.random.default_rng(seed)
        self.scanner = scanner
        self.last_draws: list[dict] = []
        self.fixed_mask = self._make_mask(seed) if scanner is None else None

    def __len__(self) -> int:
        return int(self.indices.size)

    def _make_mask(self, seed: int) -> np.ndarray:
        return make_mask(self.mask_family, self.shape, self.acceleration, seed=seed, calib=self.calib).mask

    def _fit(self, img: np.ndarray) -> np.ndarray:
        """Crop (centred or random) and zero-pad to ``self.shape``."""
        out = img
        for ax, n in enumerate(self.shape):
            size = out.shape[ax]
            if size > n:
                start = int(self.rng.integers(size - n + 1)) if self.random_crop else (size - n) // 2
                out = out[start : start + n] if ax == 0 else out[:, start : start + n]
            elif size < n:
                before = (n - size) // 2
                widths = [(0, 0), (0, 0)]
                widths[ax] = (before, n - size - before)
                out = np.pad(out, widths)
        return out

    def _image(self, position: int) -> np.ndarray:
        index = int(self.indices[position])
        img = self._fit(np.asarray(self.data[index]))
        if self.magnitude is not None and self.magnitude[index]:
            img = img.real
        img = img.astype(np.complex64) if np.iscomplexobj(img) else with_smooth_phase(img.astype(np.float32), self.rng)
        return augment(img, self.rng) if self.augment else np.ascontiguousarray(img)

    def _mask(self) -> np.ndarray:
        if self.per_sample_masks or self.fixed_mask is None:
            return self._make_mask(int(self.rng.integers(2**31)))
        return self.fixed_mask

    def batch(self, positions: Sequence[int] | np.ndarray) -> Batch:
        """A normalised batch of the selected slices at ``positions`` (0..len-1)."""
        if self.scanner is not None:
            return self._scanner_batch(positions)
        x = torch.from_numpy(np.stack([self._image(int(p)) for p in positions]))
        masks = torch.from_numpy(np.stack([self._mask() for _ in positions]))
        maps = None if self.maps is None else self.maps.expand(len(x), -1, -1, -1)
        op = SenseOperator(masks, maps)
        k = fft2c(op.coil_images(x))
        if self.noise > 0:
            rms = x.abs().pow(2).mean(dim=(-2, -1)).sqrt()[:, None, None, None]
            white = self.rng.standard_normal((*k.shape, 2)).astype(np.float32)
            noise = torch.view_as_complex(torch.from_numpy(white)) * (self.noise / np.sqrt(2.0))
            k = k + noise * rms
        y = k * masks.unsqueeze(1)
        return normalised_batch(y, op, x, self.percentile)

    def sample(self, batch_size: int) -> Batch:
        """A random batch (of a newly drawn matrix size when ``sizes`` is set)."""
        if self.sizes:
            self.shape = (int(self.rng.choice(self.sizes)), int(self.rng.choice(self.sizes)))
        return self.batch(self.rng.integers(0, len(self), batch_size))

    def sample_seeded(self, batch_size: int, seed: Sequence[int]) -> Batch:
        """The batch of ``seed`` (a sequence of ints): the same seed gives the same batch on any process."""
        self.rng = np.random.default_rng(list(seed))
        return self.sample(batch_size)

    def _scanner_batch(self, positions: Sequence[int] | np.ndarray) -> Batch:
        sim, rng = self.scanner, self.rng
        assert sim is not None
        kind, coils, index = sim.coils.draw_kind(rng)
        ys, xs, masks, maps_used, draws = [], [], [], [], []
        for p in positions:
            img = self._image(int(p))
            smooth = sim.draw_smoothing(rng)
            if smooth is not None:
                img = kspace_taper(img, smooth)
            remapped = sim.draw_contrast(img, rng)
            if remapped is not None:
                img = remapped
            phase = sim.draw_phase(img.shape, rng)
            if phase is not None:
                img = (img * np.exp(1j * phase)).astype(np.complex64)
            maps = sim.coils.draw_maps(kind, coils, index, self.shape, rng)
            mask, info = draw_mask(sim.masks, self.shape, rng, sim.uniform_calib)
            coil_img = img[None] if maps is None else maps * img[None]
            full = fft2c(coil_img)
            level = sim.draw_noise_level(rng)
            rms = float(np.sqrt(np.mean(np.abs(img) ** 2)))
            if level > 0:
                noise, _ = correlated_noise(full.shape, level * rms, rng)
                full = full + noise
            y = (full * mask).astype(np.complex64)
            if maps is not None and sim.estimate_maps:
                used = sim.estimate(y, mask)
                ref = (np.conj(used) * coil_img).sum(0)
            else:
                used, ref = maps, img
            ys.append(y)
            xs.append(ref.astype(np.complex64))
            masks.append(mask)
            maps_used.append(used)
            draws.append(
                {
                    **info,
                    "coils": coils,
                    "maps": kind,
                    "noise": level,
                    "smooth": smooth,
                    "contrast": remapped is not None,
                    "phase": phase is not None,
                }
            )
        self.last_draws = draws
        mask_t = torch.from_numpy(np.stack(masks))
        maps_t = None if maps_used[0] is None else torch.from_numpy(np.stack(maps_used))
        op = SenseOperator(mask_t, maps_t)
        return normalised_batch(torch.from_numpy(np.stack(ys)), op, torch.from_numpy(np.stack(xs)), self.percentile)
