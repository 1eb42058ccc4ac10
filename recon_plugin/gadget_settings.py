"""A gadget's settings, parsed from its protocol's ``<property>`` elements, without importing torch.

The gadgets (:mod:`recon_plugin.gadgets`) parse them when they start; ``replay`` and ``serve`` parse them
before any gadget starts (:mod:`recon_plugin.gadget_targets`), so a typo fails at once.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ProtocolError
from .sample_data import DEFAULT_BUNDLE, DEFAULT_BUNDLES, DEFAULT_SINGLE_COIL_BUNDLE, MODEL_BUNDLES

#: Each method's image series number (ISMRMRD image_series_index), unless the protocol sets ``series_index``.
SERIES_INDEX = {"zero_filled": 1, "rgancs": 2, "cs_wavelet": 3, "cs_tv": 4, "reference": 9}

#: Image meta attributes carrying an image's SNR (dB) and SSIM against the reference, where there is one.
SNR_META = "SNR_dB"
SSIM_META = "SSIM"


@dataclass(frozen=True)
class RetroSettings:
    """Retrospective undersampling of fully sampled data (for evaluation against the reference)."""

    acceleration: float = 5.0
    family: str | None = None  # None: "radial" for 3D ky-kz planes, "lines" for 2D
    seed: int = 0
    calib: int = 12
    mask_file: Path | None = None  # a boolean .npy mask [ny, nx] instead of a generated one


METHODS = ("rgancs", "zero_filled", "cs_wavelet", "cs_tv")


#: Properties every gadget reads, then those of each method.
_COMMON = frozenset(
    {
        "device",
        "mask",
        "retro_acceleration",
        "seed",
        "calib",
        "series_index",
        "complex",
        "calib_width",
        "reference",
        "threads",
    }
)
_BART = frozenset({"lambda", "iterations", "time_limit", "workers"})
#: The properties each gadget target accepts; any other is a ProtocolError (a typo must not pass silently).
PROPERTIES: dict[str, frozenset[str]] = {
    "rgancs": _COMMON
    | {
        "weights",
        "model",
        "single_coil_weights",
        "fast_path",
        "batch_size",
        "phase_average",
        "flip_average",
        "adapt_steps",
        "adapt_lr",
        "adapt_split",
        "adapt_splits",
        "adapt_scope",
    },
    "zero_filled": _COMMON,
    "cs_wavelet": _COMMON | _BART,
    "cs_tv": _COMMON | _BART,
}


def _unknown_properties(method: str, unknown: list[str], known: frozenset[str]) -> str:
    """``unknown property retro_accleration (did you mean retro_acceleration?); rgancs accepts: ...``."""
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        elsewhere = [m for m, names in PROPERTIES.items() if name in names]
        hint = f" (did you mean {close[0]}?)" if close else ""
        if elsewhere and not close:
            hint = f" (only {', '.join(elsewhere)} gadgets read it)"
        parts.append(f"{name}{hint}")
    noun = "property" if len(unknown) == 1 else "properties"
    return f"unknown {noun} {', '.join(parts)}; the {method} gadget accepts: {', '.join(sorted(known))}"


@dataclass(frozen=True)
class GadgetSettings:
    """A gadget's settings, read from the protocol's <property> elements."""

    method: str
    weights: Path = DEFAULT_BUNDLE
    #: The bundle for single-coil slices; None = ``weights`` for every coil count.
    single_coil_weights: Path | None = None
    device: str = "auto"
    batch_size: int = 0  # 0: the device's default (RGANCS.default_batch_size)
    fast_path: str = "auto"
    phase_average: int = 0  # 0: the bundle's (RecurrentProximalNet's phase_average)
    flip_average: int = 0  # 0: the bundle's (RecurrentProximalNet's flip_average: 1, 2 or 4)
    adapt_steps: int = 0  # scan-specific self-supervised steps before reconstructing (recon_plugin.adaptation)
    adapt_lr: float = 8e-4  # Adam's learning rate while adapting (AdaptSettings.lr; this module imports no torch)
    adapt_split: str | None = None  # how loss sets are drawn while adapting; None: AdaptSettings' default
    adapt_splits: int = 0  # random splits per adaptation step; 0: AdaptSettings' default
    adapt_scope: str | None = None  # slice (a copy per slice) or exam (one per exam); None: AdaptSettings' default
    retro: RetroSettings | None = None
    series_index: int = 0
    complex_output: bool = False
    calib_width: int = 24
    send_reference: bool = False
    lam: float | None = None  # BART CS: None = the tuned default for the coil count
    iterations: int = 300
    time_limit: float = 120.0
    workers: int = 2
    threads: int = 0  # torch threads of this gadget; 0: default_threads()

    @classmethod
    def from_properties(cls, method: str, props: dict[str, str]) -> GadgetSettings:
        """Parse properties (weights, model, device, batch_size, fast_path, phase_average, flip_average, adapt_steps,
        adapt_lr, adapt_split, adapt_splits, adapt_scope, threads,
        mask, retro_acceleration, seed, calib, calib_width, series_index, complex, reference; for BART CS: lambda,
        iterations, time_limit, workers); a bad value is a ProtocolError naming the property."""
        if method not in METHODS:
            raise ProtocolError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        known = PROPERTIES[method]
        unknown = sorted(set(props) - known)
        if unknown:
            raise ProtocolError(_unknown_properties(method, unknown, known))
        retro = _retro_settings(props)
        return cls(
            method=method,
            weights=_weights(props),
            single_coil_weights=_single_coil_weights(props),
            device=props.get("device", "auto") or "auto",
            fast_path=props.get("fast_path", "auto") or "auto",
            batch_size=_number(props, "batch_size", 0, int, minimum=0),
            phase_average=_number(props, "phase_average", 0, int, minimum=0),
            flip_average=_flip_average(props),
            adapt_steps=_number(props, "adapt_steps", 0, int, minimum=0),
            adapt_lr=_number(props, "adapt_lr", 8e-4, float, minimum=0.0, strict=True),
            adapt_split=_adapt_choice(props, "adapt_split"),
            adapt_scope=_adapt_choice(props, "adapt_scope"),
            adapt_splits=_number(props, "adapt_splits", 0, int, minimum=1),
            retro=retro,
            series_index=_number(props, "series_index", SERIES_INDEX[method], int, minimum=0),
            complex_output=_flag(props, "complex"),
            calib_width=_number(props, "calib_width", 24, int, minimum=1),
            send_reference=_flag(props, "reference"),
            lam=_number(props, "lambda", None, float, minimum=0.0),
            iterations=_number(props, "iterations", 300, int, minimum=1),
            time_limit=_number(props, "time_limit", 120.0, float, minimum=0.0, strict=True),
            workers=_number(props, "workers", 2, int, minimum=1),
            threads=_threads(props),
        )


#: Values of the ``model`` property: ``auto`` (the device's default, :func:`default_weights`) or a key of
#: :data:`~recon_plugin.sample_data.MODEL_BUNDLES`.
MODEL_CHOICES = ("auto", *MODEL_BUNDLES)


def _weights(props: dict[str, str]) -> Path:
    """The multi-coil bundle: ``weights`` (a path) or the ``model`` property's choice; both is a ProtocolError."""
    path = props.get("weights", "").strip()
    model = props.get("model", "").strip().lower() or "auto"
    if model not in MODEL_CHOICES:
        raise ProtocolError(f"property model={props['model']!r} must be one of {', '.join(MODEL_CHOICES)}")
    if path and model != "auto":
        raise ProtocolError(f"properties weights and model={model} both name a bundle; set one of them")
    if path:
        return Path(path)
    return default_weights(props.get("device") or "auto", model)


def _single_coil_weights(props: dict[str, str]) -> Path | None:
    """``single_coil_weights``: a bundle path, or ``same`` (``weights`` for every coil count). Absent: the default
    single-coil bundle when ``weights`` is absent too, else ``weights`` for every coil count."""
    text = props.get("single_coil_weights", "").strip()
    if text.lower() == "same":
        return None
    if text:
        return Path(text)
    return None if props.get("weights", "").strip() else DEFAULT_SINGLE_COIL_BUNDLE


def _number(
    props: dict[str, str],
    name: str,
    default: Any,
    kind: type,
    *,
    minimum: float | None = None,
    strict: bool = False,
) -> Any:
    """Property ``name`` as ``kind`` (``default`` when absent or empty); finite, and >= ``minimum`` (> when
    ``strict``), else a ProtocolError naming the property and its domain."""
    text = props.get(name, "").strip()
    if text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ProtocolError(f"property {name}={text!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise ProtocolError(f"property {name}={text!r} must be a finite number")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ProtocolError(f"property {name}={text!r} must be {bound}")
    return value


def _flip_average(props: dict[str, str]) -> int:
    value = _number(props, "flip_average", 0, int, minimum=0)
    if value not in (0, 1, 2, 4):  # recurrent.FLIPS (this module imports no torch)
        raise ProtocolError(f"property flip_average={props['flip_average']!r} must be 1, 2 or 4, or 0 for the bundle's")
    return value


def _threads(props: dict[str, str]) -> int:
    threads = _number(props, "threads", 0, int)
    if threads < 0:
        raise ProtocolError(f"property threads={props['threads']!r} must be an integer >= 1, or 0 for the default")
    return threads


def _adapt_choice(props: dict[str, str], name: str) -> str | None:
    """The ``adapt_split`` or ``adapt_scope`` property (None when absent or empty); torch is imported only when it
    is given."""
    text = props.get(name, "").strip()
    if not text:
        return None
    from .adaptation import SCOPES, SPLITS

    choices = SPLITS if name == "adapt_split" else SCOPES
    if text not in choices:
        raise ProtocolError(f"property {name}={text!r} must be one of {', '.join(choices)}")
    return text


def _flag(props: dict[str, str], name: str) -> bool:
    text = props.get(name, "false").strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ProtocolError(f"property {name}={text!r} must be true or false")
    return text in ("true", "1", "yes")


def _check_mask_file(path: Path) -> None:
    """A mask file must be a 2D boolean (or 0/1) .npy array with at least one sampled point: checked when the
    gadget starts, so a wrong file fails before any data are read."""
    hint = "write masks with numpy.save or `recon-plugin mask`"
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ProtocolError(f"property mask={str(path)!r} is not a NumPy .npy array ({hint}): {exc}") from None
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", None)
        raise ProtocolError(f"property mask={str(path)!r} must hold a 2D array [ny, nx] (or [ky, kz]), got {shape}")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ProtocolError(f"property mask={str(path)!r} must be boolean or 0/1, got {mask.dtype} values")
    if not mask.any():
        raise ProtocolError(f"property mask={str(path)!r} samples no point")


def _retro_settings(props: dict[str, str]) -> RetroSettings | None:
    """Retrospective undersampling: on with ``retro_acceleration`` >= 1 or a mask file; off with 0 or neither."""
    acceleration = _number(props, "retro_acceleration", 0.0, float)
    if acceleration != 0 and acceleration < 1:
        raise ProtocolError(
            f"property retro_acceleration={props['retro_acceleration']!r} must be >= 1, or 0 for no retrospective "
            "undersampling"
        )
    mask = props.get("mask", "").strip()
    from .masks import FAMILIES  # scipy: only when a mask is named

    mask_file = Path(mask) if mask and mask.lower() not in FAMILIES else None
    if mask_file is not None and not mask_file.is_file():
        raise ProtocolError(f"property mask={mask!r} is neither a mask family ({', '.join(FAMILIES)}) nor a file")
    if mask_file is not None:
        _check_mask_file(mask_file)
    if acceleration <= 0 and mask_file is None:
        return None
    return RetroSettings(
        acceleration=acceleration if acceleration > 0 else 5.0,
        family=mask.lower() if mask and mask_file is None else None,
        seed=_number(props, "seed", 0, int, minimum=0),
        calib=_number(props, "calib", 12, int, minimum=0),
        mask_file=mask_file,
    )


def default_weights(device: str = "auto", model: str = "auto") -> Path:
    """The multi-coil bundle a gadget loads without a ``weights`` property: ``model``'s bundle
    (:data:`MODEL_BUNDLES`), or for ``auto`` :data:`DEFAULT_BUNDLES` of the device class it will run on (``auto``
    device: CUDA when available; a CPU is ``cpu_bf16`` when it computes bf16 in hardware). The choice is the model
    study's (docs/model_study.md) and the speed budget's (docs/performance.md)."""
    if model != "auto":
        return MODEL_BUNDLES[model]
    on_gpu = device.startswith("cuda")
    if device == "auto":
        import torch  # here, not at module level: validating a protocol must not wait for torch

        on_gpu = torch.cuda.is_available()
    if on_gpu:
        return DEFAULT_BUNDLES["cuda"]
    from .cpu_features import native_bf16

    return DEFAULT_BUNDLES["cpu_bf16" if native_bf16() else "cpu"]
