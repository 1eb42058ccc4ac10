"""Images for a reader study, from ISMRMRD image files or DICOM folders, reduced to method + exam + slice + pixels.

Exams are told apart by ``measurement_uid`` (ISMRMRD) or StudyInstanceUID (DICOM); a slice is the image
index (InstanceNumber in DICOM) and the slice centre position rounded to 0.1 mm, which the methods of one
exam share. The method comes from the ``Method`` meta attribute (DICOM: ``Method=`` in ImageComments, else
SeriesDescription), else from the fixed series number of :data:`recon_plugin.gadget_settings.SERIES_INDEX`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ReconError
from ..gadget_settings import SERIES_INDEX
from ..images import image_meta
from .errors import StudyInputError

logger = logging.getLogger(__name__)

_METHOD_BY_SERIES = {number: method for method, number in SERIES_INDEX.items()}
_COMMENT_METHOD = re.compile(r"(?:^|;\s*)Method=([^;]+)")


@dataclass(frozen=True)
class SourceImage:
    """One 2D magnitude image of one method, exam and slice."""

    method: str
    exam: str
    slice_key: tuple[int, float, float, float]  # image index, centre position (mm, rounded)
    pixels: np.ndarray  # float32 [rows, columns]
    source: str


def collect_images(sources: Iterable[str | Path]) -> list[SourceImage]:
    """Every image of every source: ``.h5`` ISMRMRD image files and folders of DICOM files.

    Raises:
        StudyInputError: a source is missing, of an unknown kind or unreadable, holds no images, or two
            images claim the same method, exam and slice.
    """
    images: list[SourceImage] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = list(_from_dicom_folder(path))
        elif path.is_file():
            found = list(_from_ismrmrd(path))
        else:
            raise StudyInputError(f"{path} does not exist (give ISMRMRD image files or DICOM folders)")
        if not found:
            raise StudyInputError(f"{path} holds no 2D images")
        logger.info("%s: %d images", path, len(found))
        images.extend(found)
    seen: dict[tuple[str, str, tuple], str] = {}
    for image in images:
        key = (image.method, image.exam, image.slice_key)
        if key in seen:
            raise StudyInputError(
                f"{image.source} and {seen[key]} both hold a {image.method} image of exam {image.exam}, slice "
                f"{image.slice_key[0]}: give each reconstruction once"
            )
        seen[key] = image.source
    return images


def _method(meta_method: str | None, series: int | None) -> str:
    if meta_method:
        return str(meta_method).strip()
    if series in _METHOD_BY_SERIES:
        return _METHOD_BY_SERIES[series]
    return f"series{series}"


def _slice_key(index: int, centre: Iterable[float]) -> tuple[int, float, float, float]:
    x, y, z = (round(float(v), 1) + 0.0 for v in centre)  # + 0.0 turns -0.0 into 0.0
    return (int(index), x, y, z)


def _plane(pixels: np.ndarray, where: str) -> np.ndarray:
    """[channels, z, rows, cols] or [rows, cols] -> float32 magnitude [rows, cols] (RSS over channels)."""
    data = np.asarray(pixels)
    if data.ndim == 4:
        if data.shape[1] != 1:
            raise StudyInputError(f"{where} is a 3D image volume; the reader study shows 2D images")
        data = np.sqrt(np.sum(np.abs(data[:, 0]) ** 2, axis=0))
    magnitude = np.abs(data).astype(np.float32)
    if magnitude.ndim != 2 or min(magnitude.shape) < 1:
        raise StudyInputError(f"{where} is not a 2D image (shape {data.shape})")
    if not np.all(np.isfinite(magnitude)):
        raise StudyInputError(f"{where} holds NaN or infinite values")
    return magnitude


def _from_ismrmrd(path: Path) -> Iterator[SourceImage]:
    from ..replay.dataset import read_images

    try:
        series = read_images(path)
    except (ReconError, OSError) as exc:
        raise StudyInputError(f"{path} cannot be read as an ISMRMRD image file ({exc})") from exc
    for number, images in sorted(series.items()):
        for image in images:
            meta = image_meta(image)
            method = _method(meta.get("Method"), number)
            where = f"{path} series {number} image {image.image_index}"
            yield SourceImage(
                method=method,
                exam=str(int(image.measurement_uid)),
                slice_key=_slice_key(image.image_index, image.position),
                pixels=_plane(image.data, where),
                source=str(path),
            )


def _from_dicom_folder(folder: Path) -> Iterator[SourceImage]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..dicom_export import METHOD_DESCRIPTIONS

    by_description = {text.lower(): method for method, text in METHOD_DESCRIPTIONS.items()}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(file)
        except (InvalidDicomError, OSError):
            logger.debug("skipping %s: not a DICOM file", file)
            continue
        if "PixelData" not in ds:
            continue
        try:
            comment = _COMMENT_METHOD.search(str(ds.get("ImageComments", "")))
            description = str(ds.get("SeriesDescription", "")).strip()
            series = int(ds.SeriesNumber) if ds.get("SeriesNumber") is not None else None
            meta_method = comment.group(1).strip() if comment else by_description.get(description.lower())
            method = _method(meta_method, series)
            pixels = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1)
            pixels += float(ds.get("RescaleIntercept", 0) or 0)
            rows, cols = pixels.shape[-2:]
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
            dy, dx = (float(v) for v in ds.PixelSpacing)
            corner = np.array([float(v) for v in ds.ImagePositionPatient])
            centre = corner + (cols // 2) * dx * orientation[:3] + (rows // 2) * dy * orientation[3:]
            key = _slice_key(int(ds.InstanceNumber), centre)
            exam = str(ds.StudyInstanceUID)
        except (AttributeError, KeyError, ValueError, TypeError) as exc:
            raise StudyInputError(f"{file} lacks what the study needs (geometry, numbers, pixels): {exc}") from exc
        yield SourceImage(method, exam, key, _plane(pixels, str(file)), str(file))
