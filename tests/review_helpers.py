"""Small ISMRMRD image files for the reader-study tests: several methods of the same exam and slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon_plugin.images import SERIES_INDEX, make_image
from recon_plugin.kspace import SliceGeometry
from recon_plugin.reconstructors import Result
from recon_plugin.replay.dataset import write_images

METHODS = ("zero_filled", "rgancs", "cs_wavelet", "cs_tv")
HEADER = b"<?xml version='1.0'?><ismrmrdHeader xmlns='http://www.ismrm.org/ISMRMRD'/>"


def slice_pixels(slice_index: int, method: str, shape: tuple[int, int] = (12, 10)) -> np.ndarray:
    """A smooth blob per slice, with method-dependent noise and scale (so images differ)."""
    rng = np.random.default_rng(1000 * slice_index + METHODS.index(method) if method in METHODS else 7)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    blob = np.exp(-((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2 - slice_index % 3) ** 2) / 10.0)
    scale = 1.0 + METHODS.index(method) if method in METHODS else 1.0
    return (scale * (blob + 0.05 * rng.random(shape))).astype(np.complex64)


def geometry(slice_index: int, uid: int) -> SliceGeometry:
    return SliceGeometry(
        position=(-10.0 + 2.5 * slice_index, 15.0, 25.0),
        read_dir=(0.0, 1.0, 0.0),
        phase_dir=(0.0, 0.0, 1.0),
        slice_dir=(1.0, 0.0, 0.0),
        patient_table_position=(0.0, 0.0, 0.0),
        fov=(100.0, 120.0, 2.5),
        slice=slice_index,
        contrast=0,
        repetition=0,
        measurement_uid=uid,
    )


def write_exam(
    path: Path, methods: Sequence[str] = METHODS, slices: int = 4, uid: int = 7, shape: tuple[int, int] = (12, 10)
) -> Path:
    """One ISMRMRD image file: ``slices`` slices of each method, one series per method."""
    series: dict[int, list] = {}
    for method in methods:
        images = []
        for s in range(slices):
            result = Result(image=slice_pixels(s, method, shape), meta={"method": method})
            images.append(make_image(result, geometry(s, uid), series_index=SERIES_INDEX[method], image_index=s + 1))
        series[SERIES_INDEX[method]] = images
    return write_images(path, series, HEADER)
