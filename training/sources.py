"""Build the training data source and the fixed validation batches from ``[data]`` of a TrainConfig.

``kind = "images"`` -> :class:`~training.datasets.ImageArraySlices`, ``"raw"`` ->
:class:`~training.datasets.RawFileSlices`, ``"fastmri"`` -> :class:`~training.datasets.FastMRISlices`,
``"sr"`` -> :class:`~training.datasets.ImageFolderSR`.
Every source exposes ``sample(batch_size)``, ``batch(indices)`` and ``rng`` (checkpointed).
Missing or unreadable data raise :class:`TrainingConfigError` naming ``[data].path``.
"""

from __future__ import annotations

import copy
import glob
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon_plugin.errors import InvalidInputError

from .config import DataConfig, TrainConfig
from .data import Batch
from .datasets import (
    FastMRISlices,
    ImageArraySlices,
    ImageFolderSR,
    RawFileSlices,
    SRBatch,
    extra_training_slices,
    load_many,
    load_slices,
    siat_blocks,
)
from .datasets.base import DatasetError
from .datasets.scanner_sim import CoilModel, ScannerSimulation, parse_mixture, real_maps_from_kspace
from .errors import TrainingConfigError

#: Validation examples per fixed batch.
VAL_CHUNK = 8
#: Default super-resolution crop (the paper's 128x128 faces).
SR_CROP = 128

Source = ImageArraySlices | RawFileSlices | FastMRISlices | ImageFolderSR


@dataclass
class Sources:
    """The training source, the fixed validation batches and a JSON summary for the bundle."""

    train: Source
    val_batches: list[Batch] | list[SRBatch]
    summary: dict[str, Any]


def _split(n: int, d: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation indices from ranges, SIAT blocks or ``val_fraction``; checked against ``n``."""
    if d.train_blocks is not None or d.val_blocks is not None:
        if d.train_blocks is None or d.val_blocks is None:
            missing = "train_blocks" if d.train_blocks is None else "val_blocks"
            raise TrainingConfigError(f"[data].{missing}: give both train_blocks and val_blocks, or neither")
        try:
            split = siat_blocks(d.train_blocks, d.val_blocks, blocks=max(1, n // 10))
        except InvalidInputError as exc:
            raise TrainingConfigError(f"[data].train_blocks: {exc} ({n} slices in {d.path})") from exc
        return split.train, split.val
    if d.train_range is None and d.val_range is None:
        if n < 2:
            raise TrainingConfigError(f"[data].path: {n} example(s); training and validation need at least 2")
        n_val = max(1, math.ceil(n * d.val_fraction))
        return np.arange(0, n - n_val), np.arange(n - n_val, n)
    if d.train_range is None or d.val_range is None:
        missing = "train_range" if d.train_range is None else "val_range"
        raise TrainingConfigError(f"[data].{missing}: give both train_range and val_range, or neither")
    for key, r in (("train_range", d.train_range), ("val_range", d.val_range)):
        if r[1] > n:
            raise TrainingConfigError(f"[data].{key}: {list(r)} exceeds the {n} examples in {d.path or d.paths}")
    train, val = np.arange(*d.train_range), np.arange(*d.val_range)
    if set(train.tolist()) & set(val.tolist()):
        raise TrainingConfigError("[data].val_range: overlaps train_range; validation slices must be held out")
    return train, val


def _raw_files(d: DataConfig) -> list[str]:
    if d.paths:
        return list(d.paths)
    if glob.has_magic(d.path):
        found = sorted(glob.glob(d.path))
        if not found:
            raise TrainingConfigError(f"[data].path: no file matches {d.path}")
        return found
    return [d.path]


def _subset(source: Any, attr: str, keep: np.ndarray, seed: int) -> Any:
    """A shallow copy of a raw/SR source restricted to the items ``keep`` of list ``attr``, with its own RNG."""
    out = copy.copy(source)
    items = getattr(source, attr)
    setattr(out, attr, [items[int(i)] for i in keep])
    out.rng = np.random.default_rng(seed)
    for cache in ("_maps", "_refs", "_fixed"):
        if hasattr(out, cache):
            setattr(out, cache, {})
    return out


def _chunks(n: int) -> list[list[int]]:
    return [list(range(i, min(i + VAL_CHUNK, n))) for i in range(0, n, VAL_CHUNK)]


def _val_chunks(val: Any, n: int) -> list[list[int]]:
    """Validation batches of at most VAL_CHUNK; for file sources, one (coils, matrix) per batch."""
    if not hasattr(val, "shape_key"):
        return _chunks(n)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(n):
        groups.setdefault(val.shape_key(i), []).append(i)
    return [g[i : i + VAL_CHUNK] for g in groups.values() for i in range(0, len(g), VAL_CHUNK)]


def scanner_simulation(d: DataConfig) -> ScannerSimulation | None:
    """The scanner-like simulation of ``[data]`` (None for ``simulation = "simple"``); real maps estimated here."""
    if d.simulation != "scanner":
        return None
    real = [real_maps_from_kspace(p) for p in d.coil_kspace or []]
    coils = CoilModel(
        coil_range=tuple(d.coil_range or (4, 32)),  # type: ignore[arg-type]
        real_maps=real,
        real_fraction=d.real_map_fraction,
        single_coil_fraction=d.single_coil_fraction,
        log_uniform=d.coil_log_uniform,
    )
    return ScannerSimulation(
        masks=parse_mixture(d.mask_mixture or [f"{d.mask_family}:{d.acceleration:g}"]),
        coils=coils,
        noise_range=tuple(d.noise_range or (0.005, 0.05)),  # type: ignore[arg-type]
        uniform_calib=tuple(d.uniform_calib or (16, 48)),  # type: ignore[arg-type]
        estimate_maps=d.estimate_maps,
        sources=[Path(p).name for p in d.coil_kspace or []],
        smooth_fraction=d.smooth_fraction,
        smooth_range=tuple(d.smooth_range or (0.2, 0.6)),  # type: ignore[arg-type]
        contrast_fraction=d.contrast_fraction,
        contrast_gamma=tuple(d.contrast_gamma or (0.5, 2.0)),  # type: ignore[arg-type]
        phase_fraction=d.phase_fraction,
        phase_radians=d.phase_radians,
        phase_grids=tuple(d.phase_grids or (4,)),
    )


def _image_sources(
    d: DataConfig, seed: int, val_seed: int | None
) -> tuple[ImageArraySlices, ImageArraySlices | None, np.ndarray, np.ndarray]:
    """(train source, validation source or None when ``val_seed`` is None, train indices, validation indices)."""
    slices = load_many(d.paths) if d.paths else load_slices(d.path, d.axis)
    train_idx, val_idx = _split(len(slices), d)
    magnitude = None
    if d.train_extra:  # training only: appended after the split, never in validation
        extra, flags, _ = extra_training_slices(d.train_extra, (int(slices.shape[1]), int(slices.shape[2])))
        magnitude = np.concatenate([np.full(len(slices), not np.iscomplexobj(slices)), flags])
        train_idx = np.concatenate([train_idx, np.arange(len(slices), len(slices) + len(extra))])
        slices = np.concatenate([np.asarray(slices, dtype=np.complex64), extra])
    sim = scanner_simulation(d)
    common = {
        "axis": 0,
        "crop": d.crop or None,
        "coils": d.coils,
        "noise": d.noise,
        "mask_family": d.mask_family,
        "acceleration": d.acceleration,
        "percentile": d.percentile,
    }
    train = ImageArraySlices(
        slices,
        slices=train_idx,
        per_sample_masks=d.per_sample_masks,
        augment=d.augment,
        seed=seed,
        random_crop=d.random_crop,
        scanner=sim,
        sizes=d.sizes,
        magnitude=magnitude,
        **common,
    )
    if val_seed is None:
        return train, None, train_idx, val_idx
    if d.random_crop or d.sizes:  # validate on whole slices
        common["crop"] = None
    val = ImageArraySlices(
        slices,
        slices=val_idx,
        per_sample_masks=False,
        augment=False,
        seed=val_seed,
        scanner=sim,
        magnitude=magnitude,
        **common,
    )
    return train, val, train_idx, val_idx


def image_train_source(config: TrainConfig, seed_offset: int = 0) -> ImageArraySlices:
    """The training source of ``kind = "images"`` alone (what a bank producer process simulates from)."""
    try:
        return _image_sources(config.data, config.data.seed + seed_offset, None)[0]
    except DatasetError as exc:
        raise TrainingConfigError(f"[data].path: {exc}") from exc


def _build(config: TrainConfig, seed: int, val_seed: int) -> Sources:
    d = config.data
    summary: dict[str, Any] = {"kind": d.kind}
    if d.kind == "images":
        train, val, train_idx, val_idx = _image_sources(d, seed, val_seed)
        sim = train.scanner
        summary.update(
            source=Path(d.path).name if d.path else [Path(p).name for p in d.paths or []],
            matrix=list(train.shape),
            complex=bool(np.iscomplexobj(train.data)),
            coils=d.coils,
            simulation=f"{d.coils} simulated coil(s), noise {d.noise:g}, smooth random phase for magnitude input"
            + (", flips/rotations" if d.augment else "")
            + (f", random {d.crop}x{d.crop} training crops, whole validation slices" if d.random_crop else "")
            + (f", matrix sides drawn per batch from {d.sizes}" if d.sizes else ""),
        )
        if d.train_extra:
            summary["train_extra"] = [
                {"file": Path(i["path"]).name, "slices": i.get("slices"), "exclude": i.get("exclude")}
                for i in d.train_extra
            ]
            summary["train_extra_note"] = "training only; centre-padded to the main matrix; magnitude gets a phase"
        if sim is not None:
            summary.update(
                coils="per example (scanner simulation)",
                simulation="scanner-like: per-example coil maps, correlated noise, mask mixture"
                + (", flips/rotations" if d.augment else "")
                + (f", random {d.crop}x{d.crop} training crops, whole validation slices" if d.random_crop else "")
                + (f", matrix sides drawn per batch from {d.sizes}" if d.sizes else ""),
                scanner_simulation=sim.summary(),
                seed=d.seed,
            )
    elif d.kind == "raw":
        files = _raw_files(d)
        full = RawFileSlices(
            files,
            mask_family=d.mask_family,
            acceleration=d.acceleration,
            per_sample_masks=d.per_sample_masks,
            percentile=d.percentile,
            seed=seed,
        )
        train_idx, val_idx = _split(len(full), d)
        train = _subset(full, "slices", train_idx, seed)
        val = _subset(full, "slices", val_idx, val_seed)
        val.per_sample_masks, val.seed = False, val_seed
        first = full.slices[0].problem
        summary.update(
            source=[Path(f).name for f in files],
            matrix=list(first.shape),
            complex=True,
            coils=first.coils,
            simulation="measured fully sampled k-space, retrospective masks",
        )
    elif d.kind == "fastmri":
        masks = {"mask_family": d.mask_family, "acceleration": d.acceleration, "percentile": d.percentile}
        full = FastMRISlices(_raw_files(d), per_sample_masks=d.per_sample_masks, seed=seed, **masks)
        if d.val_path:
            train, train_idx = full, np.arange(len(full))
            val = FastMRISlices(d.val_path, per_sample_masks=False, seed=val_seed, **masks)
            val_idx = np.arange(len(val))
        else:
            train_idx, val_idx = _split(len(full), d)
            train = _subset(full, "slices", train_idx, seed)
            val = _subset(full, "slices", val_idx, val_seed)
            val.per_sample_masks, val.seed = False, val_seed
        files = list(dict.fromkeys(s.file for s in full.slices))
        val_files = list(dict.fromkeys(s.file for s in val.slices)) if d.val_path else []
        summary.update(
            source=[f.path.name for f in files],
            matrix=list(full.shape_key(0)[1:]),
            complex=True,
            coils=full.shape_key(0)[0],
            simulation="measured fully sampled fastMRI k-space, retrospective masks"
            + (", readout oversampling removed" if any(f.readout for f in files) else ""),
        )
        if val_files:
            summary.update(validation_source=[f.path.name for f in val_files])
    else:
        crop = d.crop or SR_CROP
        full = ImageFolderSR(d.path, crop=crop, kernel=d.sr_kernel, steps=d.sr_steps, step=d.sr_step, seed=seed)
        train_idx, val_idx = _split(len(full), d)
        train = _subset(full, "paths", train_idx, seed)
        train.augment = d.augment
        val = _subset(full, "paths", val_idx, val_seed)
        val.augment = False
        summary.update(
            source=Path(d.path).name,
            matrix=[crop, crop],
            complex=False,
            simulation=f"grayscale random crops, {d.sr_kernel}x{d.sr_kernel} block average, "
            f"input {d.sr_steps} gradient steps of {d.sr_step:g}" + (", flips/rotations" if d.augment else ""),
        )
    summary.update(train_slices=len(train_idx), validation_slices=len(val_idx))
    if d.train_blocks is not None:
        summary.update(train_blocks=list(d.train_blocks), validation_blocks=list(d.val_blocks or []))
    elif train_idx.size and val_idx.size and not d.val_path:
        summary.update(
            train_range=[int(train_idx[0]), int(train_idx[-1]) + 1],
            validation_range=[int(val_idx[0]), int(val_idx[-1]) + 1],
        )
    # Fixed validation examples, built once: validation never touches a training RNG.
    val_batches = [val.batch(chunk) for chunk in _val_chunks(val, len(val_idx))]
    return Sources(train=train, val_batches=val_batches, summary=summary)


def build_sources(config: TrainConfig, seed_offset: int = 0) -> Sources:
    """The data of a run; ``seed_offset`` shifts the training seed (one per distributed rank).

    Validation batches use ``data.seed + 1`` on every rank, so all ranks validate on the same examples.
    """
    try:
        return _build(config, config.data.seed + seed_offset, config.data.seed + 1)
    except TrainingConfigError:
        raise
    except DatasetError as exc:
        raise TrainingConfigError(f"[data].path: {exc}") from exc
    except InvalidInputError as exc:
        raise TrainingConfigError(f"[data]: {exc}") from exc
