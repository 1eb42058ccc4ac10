"""Training configuration: a TOML file with [model], [data], [loss], [optim] and [run] sections.

Every key is checked before training starts: an unknown key or an impossible
value raises :class:`TrainingConfigError` naming ``[section].key``. Relative
paths (``data.path``, ``data.paths``, ``data.val_path``, ``run.out``) are resolved against the TOML
file's folder. Whether the data exist is checked when the Trainer is built, not here.

``[data] kind``:

- ``"images"``: ``path`` is a .npy or NIfTI file of slices (``axis`` picks the slice axis);
  k-space is simulated: ``simulation = "simple"`` (fixed ring coil maps ``coils``, white ``noise``,
  one ``mask_family``) or ``"scanner"`` (training.datasets.scanner_sim: per-example coil maps from
  ``coil_kspace`` real arrays (probability ``real_map_fraction``) or birdcage maps with a coil
  count in ``coil_range``, ``single_coil_fraction`` single-coil examples, correlated noise in
  ``noise_range``, masks from ``mask_mixture`` entries like "radial:4-8" / "uniform:2-4" with
  ``uniform_calib`` ACS lines, maps estimated from each example's ACS when ``estimate_maps``, a share
  ``smooth_fraction`` of the images smoothed by a Gaussian k-space taper of width in ``smooth_range``, a share
  ``contrast_fraction`` with their magnitude remapped (exponent in ``contrast_gamma``), a share ``phase_fraction``
  multiplied by a smooth random phase map within +-``phase_radians`` on a coarse grid drawn
  from ``phase_grids``);
  ``crop``; with ``random_crop`` training slices are
  cropped at a new random position per draw and validation slices stay whole); split by ``train_range``/``val_range``,
  by SIAT blocks (``train_blocks``/``val_blocks``, 10 slices each) or by ``val_fraction``.
- ``"raw"``: fully sampled ISMRMRD files, ``paths`` (a list) or ``path`` (a file or a glob);
  every assembled slice is one example, split like "images" (ranges or ``val_fraction``).
- ``"fastmri"``: fully sampled fastMRI HDF5 files (top-level ``kspace``, see training.datasets.fastmri),
  ``paths`` (a list) or ``path`` (a file, a folder of .h5 files or a glob); every slice of every file is one
  example, built like "raw" (retrospective masks, ESPIRiT maps of the fully sampled slice). Split like "raw"
  (ranges over the slices of the files in order, or ``val_fraction``), or by files: ``val_path`` (a file, folder
  or glob) holds the validation files and every slice of ``path``/``paths`` trains.
- ``"sr"``: ``path`` is a folder of PNG/JPG images; random ``crop`` x ``crop`` grayscale crops
  (default 128), ``sr_kernel`` x ``sr_kernel`` block average, network input = ``sr_steps``
  gradient steps of ``sr_step``. Needs ``[model] channels = 1, output_activation = "sigmoid"``.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from recon_plugin.model import ModelConfig

from .errors import TrainingConfigError

MASK_FAMILIES = ("radial", "poisson", "lines", "uniform")
DATA_KINDS = ("images", "raw", "fastmri", "sr")
#: Kinds whose files may be listed in ``paths``.
FILE_KINDS = ("raw", "fastmri")
SCHEDULES = ("none", "cosine")
DEVICES = ("auto", "cpu", "cuda")
SIMULATIONS = ("simple", "scanner")


def _fail(section: str, key: str, why: str) -> TrainingConfigError:
    return TrainingConfigError(f"[{section}].{key}: {why}")


@dataclass
class DataConfig:
    """Where slices come from and how k-space is simulated."""

    kind: str = "images"
    path: str = ""
    paths: list[str] | None = None
    val_path: str = ""
    train_range: list[int] | None = None
    val_range: list[int] | None = None
    train_blocks: list[int] | None = None
    val_blocks: list[int] | None = None
    axis: int = 0
    coils: int = 1
    noise: float = 0.0
    crop: int = 0
    random_crop: bool = False
    sr_kernel: int = 4
    sr_steps: int = 5
    sr_step: float = 0.1
    val_fraction: float = 0.1
    mask_family: str = "radial"
    acceleration: float = 5.0
    per_sample_masks: bool = True
    augment: bool = True
    percentile: float = 99.0
    seed: int = 0
    simulation: str = "simple"
    mask_mixture: list[str] | None = None
    uniform_calib: list[int] | None = None
    coil_range: list[int] | None = None
    coil_log_uniform: bool = False
    coil_kspace: list[str] | None = None
    real_map_fraction: float = 0.5
    single_coil_fraction: float = 0.0
    noise_range: list[float] | None = None
    estimate_maps: bool = True
    #: Share of the scanner simulation's images smoothed by a Gaussian k-space taper (0 = none) of width
    #: log-uniform in ``smooth_range`` (fractions of the matrix; default [0.2, 0.6]).
    smooth_fraction: float = 0.0
    smooth_range: list[float] | None = None
    #: Share of the scanner simulation's images whose magnitude gets a random intensity remap (0 = none): a power
    #: curve with exponent log-uniform in ``contrast_gamma`` (default [0.5, 2]) times a slow ripple, phase kept.
    contrast_fraction: float = 0.0
    contrast_gamma: list[float] | None = None
    #: Share of the scanner simulation's images multiplied by a smooth random phase map within +-``phase_radians``.
    phase_fraction: float = 0.0
    phase_radians: float = math.pi
    #: Coarse grid sizes of the phase map, one drawn per image (None = [4]: the phase varies over about a quarter
    #: of the matrix; 16 varies over a sixteenth).
    phase_grids: list[int] | None = None
    #: Matrix sides drawn per training batch (each axis independently from the list), e.g. [96, 128, 192, 256].
    sizes: list[int] | None = None
    #: Simulated batches held in the bank that training samples (0 = simulate every batch inline).
    bank_batches: int = 0
    #: Mean number of times a banked batch is used before it leaves the bank.
    bank_reuse: int = 4
    #: Producer processes simulating batches for the bank (0 = in this process, on demand).
    bank_workers: int = 1
    #: Niceness added to the producer processes (0-19): they yield the cores to the training step's threads.
    bank_nice: int = 0
    #: Real fully sampled multi-coil k-space validated on during training (a folder of *_kspace.npy).
    real_val_path: str = ""
    real_val_names: list[str] | None = None
    #: CG steps per copy in the real-data validation (0 = the model's own): the inference setting of the bundle, when
    #: training runs fewer (a "cg" model only).
    real_val_cg_iterations: int = 0
    #: Training-only image files added to ``paths`` (never validated on), each a table ``{path = "...",
    #: slices = [first, stop], exclude = [[a, b], ...]}`` (half-open slice ranges, both optional). Their slices are
    #: centre-padded or cropped to the main files' matrix; magnitude files get a smooth random phase per draw.
    train_extra: list[dict[str, Any]] | None = None

    def check(self) -> None:
        """Raise TrainingConfigError on an impossible value."""
        s = "data"
        self._check_scanner()
        self._check_train_extra()
        if self.kind not in DATA_KINDS:
            raise _fail(s, "kind", f"{self.kind!r} is not supported; use one of {', '.join(DATA_KINDS)}")
        if not self.path and not (self.kind in (*FILE_KINDS, "images") and self.paths):
            what = {
                "images": "a .npy or NIfTI file of slices",
                "raw": "raw files (or give paths)",
                "fastmri": "fastMRI .h5 files: a file, folder or glob (or give paths)",
                "sr": "a folder",
            }
            raise _fail(s, "path", f"{what[self.kind]} is required")
        if self.paths is not None and self.kind not in (*FILE_KINDS, "images"):
            raise _fail(s, "paths", 'only used with kind = "images", "raw" or "fastmri"; give path instead')
        if self.kind == "images" and self.path and self.paths:
            raise _fail(s, "paths", "give path (one file) or paths (several), not both")
        self._check_bank()
        if self.val_path and self.kind != "fastmri":
            raise _fail(s, "val_path", 'only used with kind = "fastmri"; split by train_range/val_range')
        if self.val_path and (self.train_range is not None or self.val_range is not None):
            raise _fail(s, "val_path", "give val_path (validation files) or train_range/val_range, not both")
        for key in ("train_range", "val_range"):
            rng = getattr(self, key)
            if rng is not None and (len(rng) != 2 or rng[0] < 0 or rng[1] <= rng[0]):
                raise _fail(s, key, f"expected [start, stop) with 0 <= start < stop, got {rng}")
        blocks = self.train_blocks is not None or self.val_blocks is not None
        if blocks and self.kind != "images":
            raise _fail(s, "train_blocks", 'SIAT blocks are only used with kind = "images"')
        if blocks and (self.train_range is not None or self.val_range is not None):
            raise _fail(s, "train_blocks", "give train_range/val_range or train_blocks/val_blocks, not both")
        for key, minimum in (("axis", 0), ("coils", 1), ("crop", 0), ("sr_kernel", 1), ("sr_steps", 0)):
            if getattr(self, key) < minimum:
                raise _fail(s, key, f"must be >= {minimum}, got {getattr(self, key)}")
        if self.random_crop and (self.kind != "images" or not self.crop):
            raise _fail(s, "random_crop", 'needs kind = "images" and a crop > 0')
        if self.noise < 0:
            raise _fail(s, "noise", f"must be >= 0, got {self.noise}")
        if self.sr_step <= 0:
            raise _fail(s, "sr_step", f"must be > 0, got {self.sr_step}")
        if self.kind == "sr" and self.crop and self.crop % self.sr_kernel:
            raise _fail(s, "crop", f"must be a multiple of sr_kernel {self.sr_kernel}, got {self.crop}")
        if not 0 < self.val_fraction < 1:
            raise _fail(s, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if self.mask_family not in MASK_FAMILIES:
            raise _fail(s, "mask_family", f"unknown family {self.mask_family!r}; use one of {', '.join(MASK_FAMILIES)}")
        if self.acceleration < 1:
            raise _fail(s, "acceleration", f"must be >= 1, got {self.acceleration}")
        if not 0 < self.percentile <= 100:
            raise _fail(s, "percentile", f"must be in (0, 100], got {self.percentile}")
        if self.seed < 0:
            raise _fail(s, "seed", f"must be >= 0, got {self.seed}")

    def _check_bank(self) -> None:
        s = "data"
        for key, minimum in (("bank_batches", 0), ("bank_reuse", 1), ("bank_workers", 0)):
            if getattr(self, key) < minimum:
                raise _fail(s, key, f"must be >= {minimum}, got {getattr(self, key)}")
        if not 0 <= self.bank_nice <= 19:
            raise _fail(s, "bank_nice", f"must be in 0-19 (a process niceness increment), got {self.bank_nice}")
        if self.bank_batches and self.kind != "images":
            raise _fail(s, "bank_batches", 'the simulation bank is for kind = "images" (simulated k-space)')
        if self.sizes is not None:
            if self.kind != "images":
                raise _fail(s, "sizes", 'per-batch matrix sizes are for kind = "images"')
            if not self.sizes or min(self.sizes) < 16:
                raise _fail(s, "sizes", f"expected a non-empty list of sides >= 16, got {self.sizes}")
        if self.real_val_names is not None and not self.real_val_path:
            raise _fail(s, "real_val_names", "needs real_val_path (the folder of *_kspace.npy files)")
        if not isinstance(self.real_val_cg_iterations, int) or self.real_val_cg_iterations < 0:
            raise _fail(s, "real_val_cg_iterations", f"must be an integer >= 0, got {self.real_val_cg_iterations!r}")
        if self.real_val_cg_iterations and not self.real_val_path:
            raise _fail(s, "real_val_cg_iterations", "needs real_val_path (the folder of *_kspace.npy files)")

    def _check_train_extra(self) -> None:
        if self.train_extra is None:
            return
        if self.kind != "images" or not isinstance(self.train_extra, list):
            raise _fail("data", "train_extra", 'a list of {path, slices, exclude} tables, only with kind = "images"')
        for i, item in enumerate(self.train_extra):
            where = f"train_extra[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
                raise _fail("data", where, f'needs a path (a table like {{path = "x.npy"}}), got {item!r}')
            unknown = sorted(set(item) - {"path", "slices", "exclude"})
            if unknown:
                raise _fail("data", where, f"unknown key(s) {unknown}; known: path, slices, exclude")
            ranges = ([item["slices"]] if "slices" in item else []) + list(item.get("exclude", []))
            for r in ranges:
                if not (
                    isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) for v in r) and 0 <= r[0] < r[1]
                ):
                    raise _fail("data", where, f"slice ranges are [first, stop) with 0 <= first < stop, got {r!r}")

    def _check_scanner(self) -> None:
        s = "data"
        if self.simulation not in SIMULATIONS:
            raise _fail(s, "simulation", f"unknown simulation {self.simulation!r}; use one of {', '.join(SIMULATIONS)}")
        scanner_keys = (
            "mask_mixture",
            "uniform_calib",
            "coil_range",
            "coil_kspace",
            "noise_range",
            "smooth_range",
            "contrast_gamma",
            "phase_grids",
        )
        if self.simulation != "scanner":
            for key in scanner_keys:
                if getattr(self, key) is not None:
                    raise _fail(s, key, 'only used with simulation = "scanner"')
            for key in ("smooth_fraction", "contrast_fraction", "phase_fraction"):
                if getattr(self, key) != 0:
                    raise _fail(s, key, 'only used with simulation = "scanner"')
            return
        if self.kind != "images":
            raise _fail(s, "simulation", 'the scanner simulation is for kind = "images"')
        from .datasets.scanner_sim import parse_mixture

        try:
            parse_mixture(self.mask_mixture or [f"{self.mask_family}:{self.acceleration:g}"])
        except ValueError as exc:
            raise _fail(s, "mask_mixture", str(exc)) from exc
        for key, lo in (("uniform_calib", 0), ("coil_range", 2), ("noise_range", 0)):
            pair = getattr(self, key)
            if pair is not None and (len(pair) != 2 or not lo <= pair[0] <= pair[1]):
                raise _fail(s, key, f"expected [low, high] with {lo} <= low <= high, got {pair}")
        fractions = (
            "real_map_fraction",
            "single_coil_fraction",
            "smooth_fraction",
            "contrast_fraction",
            "phase_fraction",
        )
        for key in fractions:
            if not 0 <= getattr(self, key) <= 1:
                raise _fail(s, key, f"must be in [0, 1], got {getattr(self, key)}")
        if self.smooth_range is not None and (
            len(self.smooth_range) != 2 or not 0 < self.smooth_range[0] <= self.smooth_range[1]
        ):
            raise _fail(s, "smooth_range", f"expected [low, high] with 0 < low <= high, got {self.smooth_range}")
        if self.contrast_gamma is not None and (
            len(self.contrast_gamma) != 2 or not 0 < self.contrast_gamma[0] <= self.contrast_gamma[1]
        ):
            raise _fail(s, "contrast_gamma", f"expected [low, high] with 0 < low <= high, got {self.contrast_gamma}")
        if not (math.isfinite(self.phase_radians) and self.phase_radians > 0):
            raise _fail(s, "phase_radians", f"must be a positive number of radians, got {self.phase_radians}")
        grids = self.phase_grids
        if grids is not None and (not grids or any(type(g) is not int or g < 2 for g in grids)):
            raise _fail(s, "phase_grids", f"expected a list of integers >= 2, got {self.phase_grids}")


@dataclass
class LossConfig:
    """Generator cost weights (paper: fidelity + eta * pixel + lambda(t) * LSGAN)."""

    eta: float = 1.0
    gamma: float = 0.5
    lambda_gan: float = 0.0
    gan_ramp_steps: int = 1000
    fidelity_weight: float = 1.0

    def check(self) -> None:
        """Raise TrainingConfigError on an impossible value."""
        s = "loss"
        if self.eta < 0:
            raise _fail(s, "eta", f"must be >= 0, got {self.eta}")
        if not 0 <= self.gamma <= 1:
            raise _fail(s, "gamma", f"must be in [0, 1], got {self.gamma}")
        if self.lambda_gan < 0:
            raise _fail(s, "lambda_gan", f"must be >= 0, got {self.lambda_gan}")
        if self.gan_ramp_steps < 0:
            raise _fail(s, "gan_ramp_steps", f"must be >= 0, got {self.gan_ramp_steps}")
        if self.fidelity_weight < 0:
            raise _fail(s, "fidelity_weight", f"must be >= 0, got {self.fidelity_weight}")


@dataclass
class OptimConfig:
    """Adam settings (paper defaults: lr 1e-5, betas 0.9/0.999, batch 2) and schedule."""

    lr: float = 1e-5
    lr_d: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    batch_size: int = 2
    steps: int = 1000
    clip: float = 1.0
    schedule: str = "none"
    warmup_steps: int = 0  # lr rises linearly from lr / warmup_steps to lr over the first steps, then the schedule
    lambda_lr_scale: float = 1.0  # the per-copy CG lambdas' lr over ``lr``: Adam moves log lambda by ~lr a step
    # parameter-name substring -> lr multiplier, first match wins (e.g. {"blocks.1." = 10} for a block added by
    # deepening, whose zero-started convolution would hardly move at a fine-tune's lr); each must match a parameter
    lr_scales: dict[str, float] | None = None

    def check(self) -> None:
        """Raise TrainingConfigError on an impossible value."""
        s = "optim"
        if not self.lr > 0:
            raise _fail(s, "lr", f"must be > 0, got {self.lr}")
        if not (math.isfinite(self.lambda_lr_scale) and self.lambda_lr_scale > 0):
            raise _fail(s, "lambda_lr_scale", f"must be a positive number, got {self.lambda_lr_scale}")
        for pattern, scale in (self.lr_scales or {}).items():
            if not pattern or isinstance(scale, bool) or not isinstance(scale, int | float):
                raise _fail(s, "lr_scales", f"expects name = number pairs, got {pattern!r} = {scale!r}")
            if not (math.isfinite(scale) and scale > 0):
                raise _fail(s, "lr_scales", f"{pattern!r} must have a positive scale, got {scale}")
            self.lr_scales[pattern] = float(scale)  # type: ignore[index]
        if self.lr_d is not None and not self.lr_d > 0:
            raise _fail(s, "lr_d", f"must be > 0, got {self.lr_d}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise _fail(s, key, f"must be in [0, 1), got {getattr(self, key)}")
        if self.batch_size < 1:
            raise _fail(s, "batch_size", f"must be >= 1, got {self.batch_size}")
        if self.steps < 1:
            raise _fail(s, "steps", f"must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_steps < self.steps:
            raise _fail(s, "warmup_steps", f"must be >= 0 and below steps ({self.steps}), got {self.warmup_steps}")
        if self.clip < 0:
            raise _fail(s, "clip", f"must be >= 0 (0 = no clipping), got {self.clip}")
        if self.schedule not in SCHEDULES:
            raise _fail(s, "schedule", f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")


@dataclass
class RunConfig:
    """Output folder, cadence of checkpoints/validation/logging, seed and device."""

    out: str = "runs/rgancs"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    #: bf16 autocast for the network: true, false, or "auto" (on CUDA, and on CPUs with native bf16 instructions).
    bf16: bool | str = False
    #: channels_last memory for the network's convolutions: true, false, or "auto" (with bf16 on a CPU with native bf16
    #: instructions, where oneDNN's bf16 convolutions are faster in that layout; measured in docs/performance.md).
    channels_last: bool | str = False
    progress: bool = True
    #: A model bundle whose weights start this run (fine-tuning); empty = random initial weights.
    init_weights: str = ""

    def check(self) -> None:
        """Raise TrainingConfigError on an impossible value."""
        s = "run"
        for key in ("checkpoint_every", "validate_every", "log_every"):
            if getattr(self, key) < 0:
                raise _fail(s, key, f"must be >= 0 (0 = never), got {getattr(self, key)}")
        if self.keep_checkpoints < 1:
            raise _fail(s, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        if self.seed < 0:
            raise _fail(s, "seed", f"must be >= 0, got {self.seed}")
        if self.device not in DEVICES:
            raise _fail(s, "device", f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if isinstance(self.bf16, str) and self.bf16 != "auto":
            raise _fail(s, "bf16", f'expected true, false or "auto", got {self.bf16!r}')
        if isinstance(self.channels_last, str) and self.channels_last != "auto":
            raise _fail(s, "channels_last", f'expected true, false or "auto", got {self.channels_last!r}')


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def check(self) -> None:
        """Validate every section."""
        for section in (self.data, self.loss, self.optim, self.run):
            section.check()
        m = self.model
        if self.data.real_val_cg_iterations and m.data_consistency != "cg":
            raise _fail("data", "real_val_cg_iterations", f'needs data_consistency = "cg", got {m.data_consistency!r}')
        if self.data.kind == "sr":
            if m.channels != 1:
                raise _fail("model", "channels", f'super-resolution (kind = "sr") needs channels = 1, got {m.channels}')
            if m.output_activation != "sigmoid":
                raise _fail("model", "output_activation", 'super-resolution needs output_activation = "sigmoid"')
            if m.data_consistency == "exact":
                raise _fail("model", "data_consistency", 'super-resolution needs "gradient" or "cg" data consistency')
            if m.init != "adjoint":
                raise _fail("model", "init", 'super-resolution gives its own network input; use init = "adjoint"')
        elif m.channels != 2:
            raise _fail(
                "model", "channels", f"complex MR (kind = {self.data.kind!r}) needs channels = 2, got {m.channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (the inverse of :func:`config_from_dict`)."""
        return {
            "model": self.model.to_dict(),
            "data": asdict(self.data),
            "loss": asdict(self.loss),
            "optim": asdict(self.optim),
            "run": asdict(self.run),
        }


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
_MODEL_KEYS = (
    "copies",
    "blocks",
    "features",
    "shared",
    "data_consistency",
    "output_activation",
    "channels",
    "cg_iterations",
    "cg_lambda",
    "init",
    "init_iterations",
    "global_skip",
    "norm",
    "output_gain",
    "phase_average",
    "flip_average",
)


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for a in typing.get_args(annotation) for t in _allowed_types(a))
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return (str,)
    if annotation is None or annotation is type(None):
        return (type(None),)
    return (origin or annotation,)


def _coerce(section: str, key: str, value: Any, annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Literal and value not in typing.get_args(annotation):
        choices = ", ".join(map(str, typing.get_args(annotation)))
        raise _fail(section, key, f"unknown value {value!r}; use one of {choices}")
    allowed = _allowed_types(annotation)
    if isinstance(value, bool) and bool not in allowed:
        raise _fail(section, key, f"expected {'/'.join(t.__name__ for t in allowed)}, got {value!r}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, allowed):
        raise _fail(section, key, f"expected {'/'.join(t.__name__ for t in allowed)}, got {value!r}")
    if isinstance(value, list):
        items = _list_items(annotation)
        item: type | tuple[type, ...] = str if str in items else ((int, float) if float in items else int)
        if any(typing.get_origin(t) is dict for t in items):
            item = dict
        if not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            what = {str: "strings", int: "integers", dict: "tables"}.get(item, "numbers")  # type: ignore[arg-type]
            raise _fail(section, key, f"expected a list of {what}, got {value!r}")
        if float in items:
            value = [float(v) for v in value]
    return value


def _list_items(annotation: Any) -> tuple[type, ...]:
    """Element types of the list types in ``annotation`` (``list[str] | None`` -> (str,))."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for a in typing.get_args(annotation) for t in _list_items(a))
    return typing.get_args(annotation) if typing.get_origin(annotation) is list else ()


def _section(name: str, table: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(table, dict):
        raise TrainingConfigError(f"[{name}] must be a table, got {table!r}")
    known = {f.name for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    allowed = _MODEL_KEYS if name == "model" else tuple(known)
    for key in table:
        if key not in allowed:
            raise _fail(name, key, f"unknown key; known keys are {', '.join(allowed)}")
    values = {key: _coerce(name, key, table[key], hints[key]) for key in table}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # ModelConfig's own checks
        bad = next((k for k in values if k in str(exc)), next(iter(values), "?"))
        raise _fail(name, bad, str(exc)) from exc


def config_from_dict(raw: dict[str, Any], base_dir: str | Path | None = None) -> TrainConfig:
    """Build and validate a TrainConfig; relative paths are resolved against ``base_dir`` when given."""
    for name in raw:
        if name not in _SECTIONS:
            raise TrainingConfigError(f"[{name}]: unknown section; known sections are {', '.join(_SECTIONS)}")
    parts = {name: _section(name, raw.get(name, {})) for name in _SECTIONS}
    config = TrainConfig(**parts)
    if config.model.features < 1 or config.model.copies < 1:
        raise _fail("model", "features" if config.model.features < 1 else "copies", "must be >= 1")
    if base_dir is not None:
        base = Path(base_dir)
        if config.data.path and not Path(config.data.path).is_absolute():
            config.data.path = str(base / config.data.path)
        if config.data.paths:
            config.data.paths = [p if Path(p).is_absolute() else str(base / p) for p in config.data.paths]
        if config.data.real_val_path and not Path(config.data.real_val_path).is_absolute():
            config.data.real_val_path = str(base / config.data.real_val_path)
        if config.data.val_path and not Path(config.data.val_path).is_absolute():
            config.data.val_path = str(base / config.data.val_path)
        if config.data.train_extra and isinstance(config.data.train_extra, list):
            for item in config.data.train_extra:
                if (
                    isinstance(item, dict)
                    and isinstance(item.get("path"), str)
                    and not Path(item["path"]).is_absolute()
                ):
                    item["path"] = str(base / item["path"])
        if config.data.coil_kspace:
            config.data.coil_kspace = [p if Path(p).is_absolute() else str(base / p) for p in config.data.coil_kspace]
        if not Path(config.run.out).is_absolute():
            config.run.out = str(base / config.run.out)
        if config.run.init_weights and not Path(config.run.init_weights).is_absolute():
            config.run.init_weights = str(base / config.run.init_weights)
    config.check()
    return config


def read_toml(path: str | Path, what: str = "training configuration") -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; TrainingConfigError (naming ``what``) when missing or not TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TrainingConfigError(f"no {what} at {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrainingConfigError(f"{path} is not valid TOML: {exc}") from exc


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a TOML training configuration."""
    path = Path(path)
    return config_from_dict(read_toml(path), base_dir=path.parent)


__all__ = [
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
]
