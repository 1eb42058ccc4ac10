"""ISMRMRD images from reconstruction results: geometry, series, indices and meta attributes."""

from __future__ import annotations

from typing import Any

import ismrmrd
import numpy as np

from .gadget_settings import SERIES_INDEX as SERIES_INDEX  # re-exported: images carry these series numbers
from .gadget_settings import SNR_META as SNR_META  # re-exported
from .gadget_settings import SSIM_META as SSIM_META  # re-exported
from .kspace import SliceGeometry
from .reconstructors import Result

#: Meta keys copied from a Result into the image attributes, with their ISMRMRD names.
_META_KEYS = {
    "method": "Method",
    "model": "ModelName",
    "weights_sha256": "WeightsSHA256",
    "acceleration": "Acceleration",
    "dc_residual": "DataConsistencyResidual",
    "seconds": "ReconSeconds",
    "device": "Device",
    "snr_db": SNR_META,
    "ssim": SSIM_META,
    "retrospective": "Retrospective",
    "lambda": "Lambda",
    "iterations": "Iterations",
    "adapt_steps": "AdaptSteps",  # RGANCS weights fine-tuned on the scan itself this many steps (not the bundle's)
    "adapt_split": "AdaptSplit",  # how that fine-tuning drew its loss sets ("auto" resolved by the coil count)
    "adapt_scope": "AdaptScope",  # slice: a copy per slice; exam: one copy for the exam's same-shape slices
}


def make_image(
    result: Result,
    geometry: SliceGeometry,
    *,
    series_index: int,
    image_index: int,
    complex_output: bool = False,
    extra_meta: dict[str, Any] | None = None,
) -> ismrmrd.Image:
    """One ISMRMRD image: magnitude float32 by default (complex64 on request), rows x columns as computed.

    ``matrix_size`` is (columns, rows, 1) of the result's [rows, columns] array,
    never transposed; geometry, indices and meta come from the arguments.
    """
    pixels = result.image if complex_output else np.abs(result.image)
    pixels = np.ascontiguousarray(pixels, dtype=np.complex64 if complex_output else np.float32)
    image = ismrmrd.Image.from_array(pixels[None, None])  # [channels, z, rows, columns]
    head = image.getHead()
    head.image_type = ismrmrd.IMTYPE_COMPLEX if complex_output else ismrmrd.IMTYPE_MAGNITUDE
    head.field_of_view[:] = geometry.fov
    head.position[:] = geometry.position
    head.read_dir[:] = geometry.read_dir
    head.phase_dir[:] = geometry.phase_dir
    head.slice_dir[:] = geometry.slice_dir
    head.patient_table_position[:] = geometry.patient_table_position
    head.slice = geometry.slice
    head.contrast = geometry.contrast
    head.repetition = geometry.repetition
    head.acquisition_time_stamp = geometry.acquisition_time_stamp
    head.measurement_uid = geometry.measurement_uid
    head.image_series_index = series_index
    head.image_index = image_index
    image.setHead(head)
    meta = ismrmrd.Meta()
    for key, name in _META_KEYS.items():
        if key in result.meta and result.meta[key] is not None:
            meta[name] = _fmt(result.meta[key])
    for key, value in (extra_meta or {}).items():
        meta[key] = _fmt(value)
    meta["ImageRowDir"] = [_fmt(v) for v in geometry.read_dir]
    meta["ImageColumnDir"] = [_fmt(v) for v in geometry.phase_dir]
    image.meta = meta
    return image


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def image_meta(image: ismrmrd.Image) -> dict[str, Any]:
    """The image's meta attributes as a plain dict of strings (lists for multi-valued)."""
    return dict(image.meta)
