"""One slice to reconstruct: k-space, sampling mask, coil maps and an optional reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CoilMapError, EmptyMaskError, InvalidInputError, ShapeMismatchError
from .physics import check_finite

#: Smallest fully sampled centre (side, points) ESPIRiT is run on.
MIN_CALIB = 8


@dataclass
class Problem:
    """A 2D reconstruction problem.

    ``kspace``: complex [coils, ny, nx] (or [ny, nx] for one coil), centred;
    only points where ``mask`` is True are used. ``mask``: bool [ny, nx].
    ``maps``: coil sensitivities [coils, ny, nx]; None means estimate them by
    ESPIRiT from the fully sampled centre (multi-coil) or maps of ones (single
    coil). ``reference``: fully sampled image [ny, nx] for metrics, when known.
    ``meta``: free-form labels (slice, contrast, ...) carried to the result.
    """

    kspace: np.ndarray
    mask: np.ndarray
    maps: np.ndarray | None = None
    reference: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    calib_width: int = 24
    maps_source: str = field(init=False, default="")  # "given", "ones" or "espirit"

    def __post_init__(self) -> None:
        kspace = np.asarray(self.kspace)
        if kspace.ndim == 2:
            kspace = kspace[None]
        if kspace.ndim != 3:
            raise ShapeMismatchError(f"k-space must be [coils, ny, nx] or [ny, nx], got shape {kspace.shape}")
        if not np.iscomplexobj(kspace):
            raise InvalidInputError(f"k-space must be complex, got dtype {kspace.dtype}")
        check_finite("k-space", kspace)
        mask = np.asarray(self.mask)
        if mask.shape != kspace.shape[1:]:
            raise ShapeMismatchError(f"mask is {mask.shape} but k-space is {kspace.shape[1:]} in-plane")
        mask = mask.astype(bool)
        if not mask.any():
            raise EmptyMaskError("the sampling mask selects no k-space point; nothing was acquired")
        self.kspace = (kspace * mask).astype(np.complex64)
        if not np.abs(self.kspace).any():
            raise InvalidInputError("all sampled k-space values are zero; check the receiver data")
        self.mask = mask
        self.maps_source = "given" if self.maps is not None else ("ones" if kspace.shape[0] == 1 else "")
        if self.maps is not None:
            maps = np.asarray(self.maps)
            if maps.ndim == 2:
                maps = maps[None]
            if maps.shape != kspace.shape:
                raise ShapeMismatchError(f"coil maps are {maps.shape} but k-space is {kspace.shape}")
            check_finite("coil maps", maps)
            self.maps = maps.astype(np.complex64)
        if self.reference is not None:
            ref = np.asarray(self.reference)
            if ref.shape != mask.shape:
                raise ShapeMismatchError(f"reference is {ref.shape} but the slice is {mask.shape}")
            check_finite("reference image", ref)
            self.reference = ref

    @property
    def coils(self) -> int:
        """Number of receive coils."""
        return int(self.kspace.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """In-plane matrix (ny, nx)."""
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def acceleration(self) -> float:
        """Total points / sampled points."""
        return float(self.mask.size / self.mask.sum())

    def coil_maps(self) -> np.ndarray | None:
        """Coil maps, estimated once by ESPIRiT when missing; None for one coil without maps.

        ESPIRiT calibrates on the largest fully sampled centred square of the mask,
        at most ``calib_width`` wide; less than ``MIN_CALIB`` is a CoilMapError.
        """
        if self.maps is None and self.coils > 1:
            from .coils import espirit_maps
            from .masks import fully_sampled_centre

            width = min(self.calib_width, fully_sampled_centre(self.mask))
            if width < MIN_CALIB:
                raise CoilMapError(
                    f"only a {width}x{width} fully sampled k-space centre; coil maps need at least "
                    f"{MIN_CALIB}x{MIN_CALIB} (acquire a larger calibration region or supply maps)"
                )
            self.maps = espirit_maps(self.kspace, width)
            self.maps_source = "espirit"
        return self.maps
