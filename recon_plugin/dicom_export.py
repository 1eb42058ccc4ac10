"""DICOM export: ISMRMRD images -> one MR Image Storage series per method, for a PACS or a DICOM viewer.

Every export is one study (a shared StudyInstanceUID: the header's when it has one, else a new one)
with one series per ``image_series_index``: SeriesNumber = the series index, SeriesDescription = the
method ("RGANCS", "Zero-filled", ...), InstanceNumber = ``image_index``. Files are explicit VR little
endian Part 10 files, ``out_dir/<SeriesNumber:03d>_<description>/IM_<InstanceNumber:04d>.dcm``.

Geometry (ISMRMRD and DICOM share the patient LPS frame):

* ImageOrientationPatient = ``read_dir`` + ``phase_dir`` (row cosine = direction of increasing
  column index, column cosine = direction of increasing row index).
* PixelSpacing = [FOV rows / rows, FOV columns / columns] (DICOM lists the row spacing first);
  SliceThickness = ``field_of_view[2]``.
* ImagePositionPatient is the centre of the top-left pixel. ISMRMRD ``position`` is the centre of the
  slice; the reconstruction uses the centred FFT (k-space centre at index n // 2), so the pixel at
  (rows // 2, columns // 2) is the one centred on ``position`` (also for even sizes, where the FOV box's
  geometric centre lies half a pixel away). Hence
  ``IPP = position - (columns // 2) * dx * read_dir - (rows // 2) * dy * phase_dir``.
* SliceLocation = ``position . (read_dir x phase_dir)``, the normal DICOM readers derive from the
  orientation (equal to ``slice_dir`` for images from :mod:`recon_plugin.images`).

Pixels: the magnitude is exported (complex images: ``|x|``; several channels: root-sum-of-squares),
as uint16 with one RescaleSlope per series (intercept 0) so that ``stored * slope`` gives the real
values back to within half a quantum (max / 131070) and the slices of a series compare. The window
spans the series' 0.5th to 99.5th percentile, in real values; when that is narrower than 1 (tiny
intensities) VOILUTFunction LINEAR_EXACT is set, the VOI function DICOM allows widths below 1 for.
Phase, real, imaginary and RGB images and 3D image volumes are refused.

Provenance without private tags: DerivationDescription (method, model, weights sha256, acceleration)
and ImageComments (every reconstruction meta attribute as ``key=value``).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from . import __version__
from .console import make_readable
from .errors import InvalidInputError, IsmrmrdFormatError, NonFiniteDataError
from .gadget_settings import SERIES_INDEX
from .kspace import parse_header
from .replay.dataset import pick_image_group, read_images

logger = logging.getLogger(__name__)

#: SeriesDescription per ``Method`` meta value; other methods keep their raw name.
METHOD_DESCRIPTIONS = {
    "rgancs": "RGANCS",
    "cs_wavelet": "CS-Wavelet",
    "cs_tv": "CS-TV",
    "zero_filled": "Zero-filled",
    "reference": "Reference",
}

ANONYMOUS = "Anonymous"
MANUFACTURER = "recon_plugin"
#: Largest stored pixel value (BitsStored 16).
MAX_STORED = 65535
#: Percentiles of a series' real values that bound its display window.
WINDOW_PERCENTILES = (0.5, 99.5)
#: Gyromagnetic ratio of 1H in MHz/T, for the field strength when the header has only the frequency.
GAMMA_1H_MHZ_PER_T = 42.577478

_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_REFUSED_TYPES = {
    ismrmrd.IMTYPE_PHASE: "phase",
    ismrmrd.IMTYPE_REAL: "real",
    ismrmrd.IMTYPE_IMAG: "imaginary",
    ismrmrd.IMTYPE_RGB: "RGB",
}
#: ImageComments: ISMRMRD meta attributes of the reconstruction, in this order.
_COMMENT_KEYS = (
    "Method",
    "ModelName",
    "WeightsSHA256",
    "Acceleration",
    "Retrospective",
    "DataConsistencyResidual",
    "SNR_dB",
    "SSIM",
    "Device",
    "ReconSeconds",
)


@dataclass(frozen=True)
class _Slice:
    """One image, checked and reduced to its magnitude and geometry."""

    instance: int
    magnitude: np.ndarray  # float64 [rows, columns]
    position: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    fov: tuple[float, float, float]
    meta: dict[str, str]


def write_dicom_series(
    images_by_series: Mapping[int, Sequence[ismrmrd.Image]],
    out_dir: str | Path,
    *,
    header: ismrmrd.xsd.ismrmrdHeader | bytes | str | None = None,
    study_uid: str | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    overwrite: bool = False,
) -> dict[int, list[Path]]:
    """Write each series as a DICOM MR series under ``out_dir``; return the files by series, by instance.

    ``header`` (the exam's ISMRMRD header) supplies patient, study, protocol and scanner fields;
    ``study_uid``, ``patient_name`` and ``patient_id`` override it; without either, patient name and
    ID are "Anonymous" and the study UID is new. Every image is checked before anything is written.
    With ``overwrite`` the ``IM_*.dcm`` files already in a series folder are removed first.

    Raises:
        InvalidInputError: no images, duplicate image_index in a series, 3D volumes, phase/real/RGB
            images, missing or degenerate geometry (zero FOV, non-orthonormal directions), invalid UID.
        NonFiniteDataError: an image holds NaN or infinite values.
        IsmrmrdFormatError: ``header`` is not a valid ISMRMRD header.
        FileExistsError: a series folder already holds ``IM_*.dcm`` files and ``overwrite`` is False.
        OSError: ``out_dir`` cannot be created or written (propagated unchanged).
    """
    parsed = parse_header(header, where="DICOM export header") if header is not None else None
    series_slices = {
        int(series): _prepare_series(int(series), images) for series, images in images_by_series.items() if images
    }
    if not series_slices:
        raise InvalidInputError("no images to export: every series is empty")

    out_dir = Path(out_dir)
    now = dt.datetime.now()
    common = _common_dataset(parsed, study_uid, patient_name, patient_id, now)
    folders = {s: out_dir / f"{s:03d}_{_slug(_description(s, sl))}" for s, sl in series_slices.items()}
    for folder in folders.values():
        existing = sorted(folder.glob("IM_*.dcm")) if folder.is_dir() else []
        if existing and not overwrite:
            raise FileExistsError(
                f"{folder} already holds {len(existing)} DICOM files; choose an empty folder or pass overwrite=True"
            )

    written: dict[int, list[Path]] = {}
    for series in sorted(series_slices):
        slices, folder = series_slices[series], folders[series]
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("IM_*.dcm"):
            stale.unlink()
        written[series] = _write_series(series, slices, folder, common)
    count = sum(len(paths) for paths in written.values())
    logger.info(
        "wrote %d DICOM images in %d series to %s (study %s)", count, len(written), out_dir, common.StudyInstanceUID
    )
    return written


def export_file(
    ismrmrd_images_h5: str | Path,
    out_dir: str | Path,
    *,
    dataset_name: str | None = None,
    study_uid: str | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    overwrite: bool = False,
) -> dict[int, list[Path]]:
    """Export an ISMRMRD image file (e.g. a replay output) to DICOM, with its ``<group>/xml`` header if present.

    ``dataset_name``: the image group; None picks the file's only one, or the newest date-time group
    (:func:`~recon_plugin.replay.dataset.pick_image_group`).

    Raises:
        ImageGroupError: no such image group, or several and none named (the message lists them).
        IsmrmrdFormatError: the file cannot be read, holds no image series, or its XML header is invalid.
        Otherwise as :func:`write_dicom_series`.
    """
    path = Path(ismrmrd_images_h5)
    dataset_name = pick_image_group(path, dataset_name)
    images = read_images(path, dataset_name)
    header_xml = _read_optional_header(path, dataset_name)
    header = parse_header(header_xml, where=str(path)) if header_xml is not None else None
    return write_dicom_series(
        images,
        out_dir,
        header=header,
        study_uid=study_uid,
        patient_name=patient_name,
        patient_id=patient_id,
        overwrite=overwrite,
    )


def _read_optional_header(path: Path, dataset_name: str) -> bytes | None:
    try:
        with h5py.File(path, "r") as h5:
            node = h5.get(f"{dataset_name}/xml")
            if not isinstance(node, h5py.Dataset) or node.size < 1:
                return None
            value = node[()] if node.shape == () else node[0]
    except OSError as exc:
        raise IsmrmrdFormatError(f"{path}: the XML header cannot be read ({exc})") from exc
    if isinstance(value, np.ndarray):
        value = value.tobytes()
    raw = (value.encode("utf-8") if isinstance(value, str) else bytes(value)).rstrip(b"\0")
    return raw if raw.strip() else None


# ----------------------------------------------------------------------------------------------- checks


def _prepare_series(series: int, images: Sequence[ismrmrd.Image]) -> list[_Slice]:
    slices = [_prepare_image(series, image) for image in images]
    seen: set[int] = set()
    for item in slices:
        if item.instance in seen:
            raise InvalidInputError(
                f"series {series} has two images with image_index {item.instance}; "
                "DICOM InstanceNumber (and the file name) must be unique within a series"
            )
        seen.add(item.instance)
    return sorted(slices, key=lambda item: item.instance)


def _prepare_image(series: int, image: ismrmrd.Image) -> _Slice:
    where = f"series {series} image {int(image.image_index)}"
    kind = int(image.image_type)
    if kind in _REFUSED_TYPES:
        raise InvalidInputError(f"{where} is a {_REFUSED_TYPES[kind]} image; only magnitude or complex images export")
    data = np.asarray(image.data)  # [channels, z, rows, columns]
    if data.ndim != 4 or data.shape[1] != 1:
        raise InvalidInputError(
            f"{where} is a 3D volume ({data.shape[1]} planes); export 2D images (one per slice or plane)"
        )
    if not np.all(np.isfinite(data)):
        raise NonFiniteDataError(f"{where} holds NaN or infinite pixel values")
    planes = np.abs(data[:, 0]).astype(np.float64)
    magnitude = planes[0] if planes.shape[0] == 1 else np.sqrt(np.sum(planes**2, axis=0))
    rows, cols = magnitude.shape
    fov = tuple(float(v) for v in image.field_of_view)
    if not all(np.isfinite(fov)) or min(fov) <= 0:
        raise InvalidInputError(f"{where} has field_of_view {fov}; every entry must be a positive size in mm")
    row_cosine = np.array(image.read_dir, dtype=np.float64)
    column_cosine = np.array(image.phase_dir, dtype=np.float64)
    position = np.array(image.position, dtype=np.float64)
    orthonormal = (
        abs(np.linalg.norm(row_cosine) - 1) < 1e-3
        and abs(np.linalg.norm(column_cosine) - 1) < 1e-3
        and abs(float(row_cosine @ column_cosine)) < 1e-3
    )
    if not orthonormal or not np.all(np.isfinite(position)):
        raise InvalidInputError(
            f"{where} has no valid geometry (read_dir {tuple(row_cosine)}, phase_dir {tuple(column_cosine)}, "
            f"position {tuple(position)}): the directions must be orthogonal unit vectors"
        )
    if (cols, rows) != tuple(int(v) for v in image.matrix_size[:2]):
        raise InvalidInputError(f"{where}: matrix_size {tuple(image.matrix_size)} does not match its data {data.shape}")
    return _Slice(
        instance=int(image.image_index),
        magnitude=magnitude,
        position=position,
        row_cosine=row_cosine / np.linalg.norm(row_cosine),
        column_cosine=column_cosine / np.linalg.norm(column_cosine),
        fov=fov,  # type: ignore[arg-type]
        meta=_meta_strings(image),
    )


def _meta_strings(image: ismrmrd.Image) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in dict(image.meta).items():
        if isinstance(value, list):
            value = "\\".join(str(v) for v in value)
        out[str(key)] = str(value)
    return out


# ----------------------------------------------------------------------------------------------- datasets


def _description(series: int, slices: Sequence[_Slice]) -> str:
    method = slices[0].meta.get("Method") or next((m for m, s in SERIES_INDEX.items() if s == series), None)
    if method is None:
        return f"Series {series}"
    return METHOD_DESCRIPTIONS.get(method, method)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "series"


def _common_dataset(
    header: ismrmrd.xsd.ismrmrdHeader | None,
    study_uid: str | None,
    patient_name: str | None,
    patient_id: str | None,
    now: dt.datetime,
) -> Dataset:
    """Patient, study, frame of reference, equipment and MR acquisition attributes shared by every file."""
    subject = getattr(header, "subjectInformation", None)
    study = getattr(header, "studyInformation", None)
    measurement = getattr(header, "measurementInformation", None)
    system = getattr(header, "acquisitionSystemInformation", None)
    conditions = getattr(header, "experimentalConditions", None)
    sequence = getattr(header, "sequenceParameters", None)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    # Patient
    ds.PatientName = _text(patient_name or getattr(subject, "patientName", None) or ANONYMOUS, 64)
    ds.PatientID = _text(patient_id or getattr(subject, "patientID", None) or ANONYMOUS, 64)
    ds.PatientBirthDate = _date(getattr(subject, "patientBirthdate", None))
    sex = str(getattr(subject, "patientGender", None) or "").strip().upper()[:1]
    ds.PatientSex = sex if sex in ("M", "F", "O") else ""
    if getattr(subject, "patientWeight_kg", None):
        ds.PatientWeight = _ds(subject.patientWeight_kg)  # type: ignore[union-attr]
    if getattr(subject, "patientHeight_m", None):
        ds.PatientSize = _ds(subject.patientHeight_m)  # type: ignore[union-attr]
    # Study: one per export (the scanner's study when the header names it)
    ds.StudyInstanceUID = _uid(study_uid, "study_uid", strict=True) or _uid(
        getattr(study, "studyInstanceUID", None), "the header's studyInstanceUID"
    )
    ds.StudyDate = _date(getattr(study, "studyDate", None)) or now.strftime("%Y%m%d")
    ds.StudyTime = _time(getattr(study, "studyTime", None)) or now.strftime("%H%M%S.%f")
    ds.StudyID = _text(getattr(study, "studyID", None), 16)
    ds.AccessionNumber = _text(getattr(study, "accessionNumber", None), 16)
    ds.ReferringPhysicianName = _text(getattr(study, "referringPhysicianName", None), 64)
    if getattr(study, "studyDescription", None):
        ds.StudyDescription = _text(study.studyDescription, 64)  # type: ignore[union-attr]
    if getattr(study, "bodyPartExamined", None):
        ds.BodyPartExamined = _code(study.bodyPartExamined)  # type: ignore[union-attr]
    # Series-level fields every series shares
    ds.SeriesDate = _date(getattr(measurement, "seriesDate", None)) or now.strftime("%Y%m%d")
    ds.SeriesTime = _time(getattr(measurement, "seriesTime", None)) or now.strftime("%H%M%S.%f")
    position = getattr(measurement, "patientPosition", None)
    ds.PatientPosition = _code(getattr(position, "value", position) or "")
    if getattr(measurement, "protocolName", None):
        ds.ProtocolName = _text(measurement.protocolName, 64)  # type: ignore[union-attr]
    if getattr(measurement, "sequenceName", None):
        ds.SequenceName = _text(measurement.sequenceName, 16)  # type: ignore[union-attr]
    # Frame of reference: all series of the export share the scanner's patient frame
    ds.FrameOfReferenceUID = _uid(getattr(measurement, "frameOfReferenceUID", None), "the header's frameOfReferenceUID")
    ds.PositionReferenceIndicator = ""
    # Equipment: the images were made by this software
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = __version__
    for keyword, field in (("InstitutionName", "institutionName"), ("StationName", "stationName")):
        if getattr(system, field, None):
            setattr(ds, keyword, _text(getattr(system, field), 16 if keyword == "StationName" else 64))
    if getattr(system, "deviceSerialNumber", None):
        ds.DeviceSerialNumber = _text(system.deviceSerialNumber, 64)  # type: ignore[union-attr]
    # MR acquisition
    ds.ScanningSequence = _scanning_sequence(getattr(sequence, "sequence_type", None))
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = _acquisition_type(header)
    ds.RepetitionTime = _first_ds(getattr(sequence, "TR", None))
    ds.EchoTime = _first_ds(getattr(sequence, "TE", None))
    if getattr(sequence, "TI", None):
        ds.InversionTime = _first_ds(sequence.TI)  # type: ignore[union-attr]
    ds.EchoTrainLength = ""
    if getattr(sequence, "flipAngle_deg", None):
        ds.FlipAngle = _first_ds(sequence.flipAngle_deg)  # type: ignore[union-attr]
    frequency = getattr(conditions, "H1resonanceFrequency_Hz", None)
    if frequency:
        ds.ImagingFrequency = _ds(frequency / 1e6)
    field_t = getattr(system, "systemFieldStrength_T", None)
    if not field_t and frequency:
        field_t = round(frequency / 1e6 / GAMMA_1H_MHZ_PER_T, 2)
    if field_t:
        ds.MagneticFieldStrength = _ds(field_t)
    # Instance creation and content (the reconstruction) time
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S.%f")
    return ds


def _write_series(series: int, slices: Sequence[_Slice], folder: Path, common: Dataset) -> list[Path]:
    description = _description(series, slices)
    series_uid = generate_uid()
    peak = max(float(item.magnitude.max()) for item in slices)
    slope = float(_ds(peak / MAX_STORED)) if peak > 0 else 1.0
    values = np.concatenate([item.magnitude.ravel() for item in slices])
    low, high = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    width = high - low if high > low else max(abs(high), 1.0)
    paths = []
    for item in slices:
        ds = copy.deepcopy(common)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series
        ds.SeriesDescription = _text(description, 64)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = item.instance
        ds.ImageType = ["DERIVED", "SECONDARY", "M"]
        ds.ComplexImageComponent = "MAGNITUDE"
        ds.DerivationDescription = _text(_derivation(description, item.meta), 1024)
        comments = "; ".join(f"{key}={item.meta[key]}" for key in _COMMENT_KEYS if key in item.meta)
        if comments:
            ds.ImageComments = _text(comments, 10240)
        _set_geometry(ds, item)
        _set_pixels(ds, item.magnitude, slope)
        ds.WindowCenter = _ds((low + high) / 2)
        ds.WindowWidth = _ds(width)
        if width < 1:  # LINEAR needs a width of at least 1; LINEAR_EXACT accepts any positive width
            ds.VOILUTFunction = "LINEAR_EXACT"
        paths.append(_save(ds, folder / f"IM_{item.instance:04d}.dcm"))
    logger.info("series %d (%s): %d images in %s", series, description, len(paths), folder)
    return paths


def _set_geometry(ds: Dataset, item: _Slice) -> None:
    rows, cols = item.magnitude.shape
    dx, dy = item.fov[0] / cols, item.fov[1] / rows  # column spacing (along a row), row spacing
    corner = item.position - (cols // 2) * dx * item.row_cosine - (rows // 2) * dy * item.column_cosine
    normal = np.cross(item.row_cosine, item.column_cosine)
    ds.ImagePositionPatient = [_ds(v) for v in corner]
    ds.ImageOrientationPatient = [_ds(v) for v in (*item.row_cosine, *item.column_cosine)]
    ds.PixelSpacing = [_ds(dy), _ds(dx)]
    ds.SliceThickness = _ds(item.fov[2])
    ds.SliceLocation = _ds(float(item.position @ normal))


def _set_pixels(ds: Dataset, magnitude: np.ndarray, slope: float) -> None:
    stored = np.clip(np.rint(magnitude / slope), 0, MAX_STORED).astype("<u2")
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "US"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"


def _save(ds: Dataset, path: Path) -> Path:
    """Write a Part 10 file (explicit VR little endian) under a temporary name, then rename it into place."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        dcmwrite(tmp_name, ds, enforce_file_format=True)
        make_readable(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------------------------- values


def _derivation(description: str, meta: Mapping[str, str]) -> str:
    parts = [f"{description} reconstruction by {MANUFACTURER} {__version__} from raw k-space"]
    for key, label in (("ModelName", "model"), ("WeightsSHA256", "weights sha256"), ("Acceleration", "acceleration")):
        if meta.get(key):
            parts.append(f"{label} {meta[key]}")
    if meta.get("Retrospective", "").lower() == "true":
        parts.append("retrospective undersampling")
    return "; ".join(parts)


def _scanning_sequence(sequence_type: str | None) -> str:
    """DICOM ScanningSequence from ISMRMRD sequence_type; RM (research mode) when unknown."""
    name = (sequence_type or "").lower()
    if "epi" in name:
        return "EP"
    if any(key in name for key in ("flash", "gre", "gradient", "fisp", "ssfp", "mprage")):
        return "GR"
    if any(key in name for key in ("spin", "tse", "fse", "haste", "space")) or name == "se":
        return "SE"
    return "RM"


def _acquisition_type(header: ismrmrd.xsd.ismrmrdHeader | None) -> str:
    try:
        z = int(header.encoding[0].encodedSpace.matrixSize.z)  # type: ignore[union-attr]
    except (AttributeError, IndexError, TypeError, ValueError):
        return ""
    return "3D" if z > 1 else "2D"


def _uid(value: str | None, what: str, *, strict: bool = False) -> str:
    """``value`` when it is a valid UID; a new UID when absent (or, unless strict, invalid)."""
    if not value:
        return generate_uid() if not strict else ""
    uid = str(value).strip()
    if len(uid) <= 64 and _UID_PATTERN.fullmatch(uid):
        return uid
    if strict:
        raise InvalidInputError(f"{what} {value!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    logger.warning("%s %r is not a valid DICOM UID; a new one is used", what, value)
    return generate_uid()


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _first_ds(values: Any) -> DSfloat | str:
    if isinstance(values, list | tuple):
        values = values[0] if values else None
    return _ds(values) if values is not None else ""


def _text(value: Any, limit: int) -> str:
    return "" if value is None else str(value).replace("\\", "/").strip()[:limit]


def _code(value: Any) -> str:
    """A CS value: upper case letters, digits, space and underscore, at most 16 characters."""
    return re.sub(r"[^A-Z0-9 _]", "_", str(value).strip().upper())[:16]


def _date(value: Any) -> str:
    if value is None or not hasattr(value, "year"):
        return ""
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def _time(value: Any) -> str:
    if value is None or not hasattr(value, "hour"):
        return ""
    text = f"{value.hour:02d}{value.minute:02d}{int(value.second):02d}"
    fraction = int(getattr(value, "fractional_second", 0) or 0)  # nanoseconds (xsdata XmlTime)
    return f"{text}.{fraction // 1000:06d}" if fraction else text
