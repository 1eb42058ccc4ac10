"""ISMRMRD HDF5 files for replay: read raw data, write images atomically, optional PNG previews."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import h5py
import ismrmrd
import numpy as np
from ismrmrd.hdf5 import acquisition_header_dtype, get_hdf5type, image_header_dtype, waveform_header_dtype

from ..console import make_readable
from ..errors import FileLockedError, ImageGroupError, IsmrmrdFormatError, OutputExistsError, OutputPathError
from ..kspace import parse_header

logger = logging.getLogger(__name__)

_CHUNK = 1024


class RawData(NamedTuple):
    """One exam's raw data, in file order: ``header_xml, acquisitions, waveforms = read_raw(path)``."""

    header_xml: bytes
    acquisitions: list[ismrmrd.Acquisition]
    waveforms: list[ismrmrd.Waveform]


def read_raw(path: str | Path, dataset_name: str = "dataset") -> RawData:
    """Read the XML header, acquisitions and waveforms of an ISMRMRD HDF5 raw-data file.

    Raises:
        IsmrmrdFormatError: missing file, not HDF5, truncated or corrupt, no ``dataset_name`` group,
            no or invalid XML header, no acquisitions, or acquisitions/waveforms that do not deserialise.
    """
    path = Path(path)
    if not path.is_file():
        raise IsmrmrdFormatError(f"{path} does not exist or is not a file")
    if not h5py.is_hdf5(path):
        raise IsmrmrdFormatError(f"{path} is not an HDF5 file (ISMRMRD raw data are HDF5 files)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        if isinstance(exc, BlockingIOError) or "unable to lock file" in str(exc).lower():
            raise FileLockedError(
                f"{path} is locked by another process that has it open for writing (HDF5 file locking): wait until "
                "the writer has closed it (or, if it is known to be complete, set HDF5_USE_FILE_LOCKING=FALSE)"
            ) from exc
        raise IsmrmrdFormatError(f"{path} cannot be opened as HDF5, it is truncated or corrupt ({exc})") from exc
    with h5, _corrupt_as_format_error(path):
        group = h5.get(dataset_name)
        if not isinstance(group, h5py.Group):
            found = ", ".join(sorted(h5.keys())) or "nothing"
            raise IsmrmrdFormatError(f"{path} has no ISMRMRD group '{dataset_name}' (top level holds: {found})")
        header_xml = _read_header(group, path, dataset_name)
        parse_header(header_xml, where=str(path))
        if "data" not in group:
            raise IsmrmrdFormatError(f"{path} has no acquisitions ('{dataset_name}/data' is missing)")
        acquisitions = list(_read_acquisitions(group["data"], path))
        if not acquisitions:
            raise IsmrmrdFormatError(f"{path} has no acquisitions ('{dataset_name}/data' is empty)")
        waveforms = list(_read_waveforms(group["waveforms"], path)) if "waveforms" in group else []
    logger.info("read %s: %d acquisitions, %d waveforms", path, len(acquisitions), len(waveforms))
    return RawData(header_xml, acquisitions, waveforms)


@contextlib.contextmanager
def _corrupt_as_format_error(path: Path) -> Iterator[None]:
    try:
        yield
    except IsmrmrdFormatError:
        raise
    except (OSError, KeyError, RuntimeError) as exc:
        raise IsmrmrdFormatError(f"{path} cannot be read, it is truncated or corrupt ({exc})") from exc


def _read_header(group: h5py.Group, path: Path, dataset_name: str) -> bytes:
    if "xml" not in group:
        raise IsmrmrdFormatError(f"{path} has no XML header ('{dataset_name}/xml' is missing)")
    node = group["xml"]
    if not isinstance(node, h5py.Dataset) or node.size < 1:
        raise IsmrmrdFormatError(f"{path}: '{dataset_name}/xml' holds no header")
    value = node[()] if node.shape == () else node[0]
    if isinstance(value, np.ndarray):
        value = value.tobytes()
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    raw = raw.rstrip(b"\0")
    if not raw.strip():
        raise IsmrmrdFormatError(f"{path}: the XML header is empty")
    return raw


def _rows(dataset: h5py.Dataset, fields: Sequence[str], path: Path, what: str) -> Iterator[tuple[int, np.ndarray]]:
    names = dataset.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise IsmrmrdFormatError(f"{path}: {what} records lack the field(s) {', '.join(missing)}")
    for start in range(0, dataset.shape[0], _CHUNK):
        yield start, dataset[start : start + _CHUNK]


def _read_acquisitions(dataset: h5py.Dataset, path: Path) -> Iterator[ismrmrd.Acquisition]:
    for start, rows in _rows(dataset, ("head", "traj", "data"), path, "acquisition"):
        try:
            heads = rows["head"].astype(acquisition_header_dtype)
        except (ValueError, TypeError) as exc:
            raise IsmrmrdFormatError(f"{path}: acquisition headers have an unexpected layout ({exc})") from exc
        for offset in range(len(rows)):
            index = start + offset
            try:
                acq = ismrmrd.Acquisition(ismrmrd.AcquisitionHeader.from_buffer_copy(heads[offset].tobytes()))
                data = np.asarray(rows["data"][offset], dtype=np.float32)
                acq.data[:] = data.view(np.complex64).reshape(acq.active_channels, acq.number_of_samples)
                if acq.traj.size:
                    traj = np.asarray(rows["traj"][offset], dtype=np.float32)
                    acq.traj[:] = traj.reshape(acq.number_of_samples, acq.trajectory_dimensions)
            except (ValueError, TypeError) as exc:
                raise IsmrmrdFormatError(
                    f"{path}: acquisition {index} does not deserialise (data or trajectory length does not "
                    f"match its header: {exc})"
                ) from exc
            yield acq


def _read_waveforms(dataset: h5py.Dataset, path: Path) -> Iterator[ismrmrd.Waveform]:
    for start, rows in _rows(dataset, ("head", "data"), path, "waveform"):
        try:
            heads = rows["head"].astype(waveform_header_dtype)
        except (ValueError, TypeError) as exc:
            raise IsmrmrdFormatError(f"{path}: waveform headers have an unexpected layout ({exc})") from exc
        for offset in range(len(rows)):
            try:
                wav = ismrmrd.Waveform(heads[offset].tobytes())
                wav.data[:] = np.asarray(rows["data"][offset], dtype=np.uint32).reshape(
                    wav.channels, wav.number_of_samples
                )
            except (ValueError, TypeError) as exc:
                raise IsmrmrdFormatError(f"{path}: waveform {start + offset} does not deserialise ({exc})") from exc
            yield wav


def image_group(series: int) -> str:
    """The group (under the dataset group) that holds one image series: ``image_<series>``."""
    return f"image_{series}"


def check_output_path(path: str | Path, *, overwrite: bool = False) -> Path:
    """Check before any work that ``path`` can be written: a file name in a writable folder that exists.

    A temporary file is created and removed in the folder (where :func:`write_images` writes), so what
    the check says holds for the real write.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        OutputPathError: ``path`` is a folder, or its folder is missing, not a folder or not writable.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder: give the output a file name (e.g. {path / 'out.h5'})")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise OutputPathError(f"cannot write {path}: {folder} {what} (create the folder first)")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path} exists already: pass --overwrite to replace it, or choose another name")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {path}: the folder {folder} is not writable ({exc.strerror or exc})"
        ) from exc
    os.close(fd)
    os.unlink(probe)
    return path


def check_output_folder(path: str | Path, option: str = "--png") -> Path:
    """Check before any work that the folder ``path`` (``option`` names it in errors) exists or can be created, and
    can be written: a file there, or a missing or read-only parent, is an OutputPathError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file: give a folder for the output files")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{option} {path}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=existing)
    except OSError as exc:
        raise OutputPathError(f"{option} {path}: {existing} is not writable ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)
    return path


def write_images(
    path: str | Path,
    images_by_series: Mapping[int, Sequence[ismrmrd.Image]],
    header_xml: bytes,
    *,
    dataset_name: str = "dataset",
) -> Path:
    """Write images to an ISMRMRD HDF5 file: ``<dataset>/xml`` and ``<dataset>/image_<series>`` groups.

    The file is written under a temporary name in the same folder and renamed into place only
    once complete, so ``path`` never holds a partial file. An existing ``path`` is replaced. The file
    gets the usual mode (0666 less the umask), not the temporary file's 0600.

    Raises:
        IsmrmrdFormatError: a series mixes image shapes or data types (one HDF5 group cannot hold them).
    """
    path = Path(path)
    for series, images in images_by_series.items():
        _check_uniform(series, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with ismrmrd.Dataset(tmp, dataset_name, mode="w") as dataset:
            dataset.write_xml_header(header_xml)
        with h5py.File(tmp, "r+") as h5:
            for series in sorted(images_by_series):
                if images_by_series[series]:
                    _write_series(h5[dataset_name].create_group(image_group(series)), images_by_series[series])
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    count = sum(len(v) for v in images_by_series.values())
    logger.info("wrote %d images in %d series to %s", count, len(images_by_series), path)
    return path


def image_groups(path: str | Path) -> list[str]:
    """The top-level groups of an ISMRMRD file that hold image series (``<group>/image_<n>``), by name.

    Raises:
        IsmrmrdFormatError: not a readable HDF5 file.
    """
    path = Path(path)
    if not path.is_file():
        raise IsmrmrdFormatError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    with _corrupt_as_format_error(path), h5py.File(path, "r") as h5:
        return [
            name
            for name, node in h5.items()
            if isinstance(node, h5py.Group) and any(k.startswith("image_") and k[6:].isdigit() for k in node)
        ]


def pick_image_group(path: str | Path, group: str | None = None) -> str:
    """The image group to read: ``group`` when given (it must hold images); else the file's only image group, or
    the newest of several date-time groups (the name ``recon-plugin client`` and the reference MRD clients give
    each run).

    Raises:
        ImageGroupError: ``group`` holds no images, the file holds none, or several groups and none was named
            (the message lists them).
    """
    groups = image_groups(path)
    listed = ", ".join(repr(g) for g in groups)
    if group is not None:
        if group not in groups:
            raise ImageGroupError(
                f"{path} has no image group {group!r}"
                + (f"; its image groups: {listed}" if groups else "; it holds no image series")
            )
        return group
    if not groups:
        raise ImageGroupError(f"{path} holds no image series")
    if len(groups) == 1:
        return groups[0]
    stamps = {g: _date_time(g) for g in groups}
    if all(stamp is not None for stamp in stamps.values()):
        return max(groups, key=lambda g: stamps[g])  # type: ignore[arg-type, return-value]
    raise ImageGroupError(f"{path} holds {len(groups)} image groups: {listed}; pick one with --group")


def _date_time(name: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(name)
    except ValueError:
        return None


def read_images(path: str | Path, dataset_name: str = "dataset") -> dict[int, list[ismrmrd.Image]]:
    """Read back every ``image_<series>`` group of an ISMRMRD image file's group ``dataset_name``, by series.

    Raises:
        ImageGroupError: the file has no such image group (the message lists those it has).
        IsmrmrdFormatError: the file cannot be read.
    """
    path = Path(path)
    pick_image_group(path, dataset_name)
    out: dict[int, list[ismrmrd.Image]] = {}
    with _corrupt_as_format_error(path), ismrmrd.Dataset(path, dataset_name, create_if_needed=False) as dataset:
        for name in dataset.list():
            if name.startswith("image_") and name[6:].isdigit():
                count = dataset.number_of_images(name)
                out[int(name[6:])] = [dataset.read_image(name, i) for i in range(count)]
    if not out:
        raise IsmrmrdFormatError(f"{path} holds no image series")
    return out


def _write_series(group: h5py.Group, images: Sequence[ismrmrd.Image]) -> None:
    """One series in one go, in the layout of ``ismrmrd.Dataset.append_image`` (header, attributes, data)."""
    count = len(images)
    headers = np.empty(count, dtype=image_header_dtype)
    for i, image in enumerate(images):
        head = image.getHead()
        head.attribute_string_len = len(image.attribute_string.encode("utf-8"))
        headers[i] = np.frombuffer(bytes(head), dtype=image_header_dtype)[0]
    file_type = get_hdf5type(images[0].data_type)
    pixels = np.stack([image.data for image in images]).view(file_type)
    group.create_dataset("header", data=headers, maxshape=(None,))
    attributes = group.create_dataset("attributes", (count,), maxshape=(None,), dtype=h5py.string_dtype())
    attributes[:] = [image.attribute_string for image in images]
    group.create_dataset("data", data=pixels, maxshape=(None, *pixels.shape[1:]))


def _check_uniform(series: int, images: Sequence[ismrmrd.Image]) -> None:
    kinds = {(image.data.shape, image.data_type) for image in images}
    if len(kinds) > 1:
        shapes = ", ".join(f"{shape} type {dtype}" for shape, dtype in sorted(kinds))
        raise IsmrmrdFormatError(
            f"image series {series} mixes image shapes or data types ({shapes}); "
            "one ISMRMRD image group holds one shape: give each its own image_series_index"
        )


def write_pngs(folder: str | Path, images_by_series: Mapping[int, Sequence[ismrmrd.Image]]) -> list[Path]:
    """Save each image's magnitude (root-sum-of-squares over channels) as PNG, one file per image and z.

    Each series shares one window (0 to the 99.5th percentile of the series), so its images compare.
    Files are named ``series<S>_<n>.png`` (``series<S>_<n>_z<z>.png`` for 3D images).
    """
    from PIL import Image as PILImage

    from ..preview import to_uint8

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for series in sorted(images_by_series):
        volumes = [np.sqrt(np.sum(np.abs(im.data) ** 2, axis=0)) for im in images_by_series[series]]
        if not volumes:
            continue
        top = float(np.percentile(np.concatenate([v.ravel() for v in volumes]), 99.5)) or 1.0
        for number, volume in enumerate(volumes):
            for z, plane in enumerate(volume):
                suffix = f"_z{z:03d}" if volume.shape[0] > 1 else ""
                target = folder / f"series{series:03d}_{number:04d}{suffix}.png"
                PILImage.fromarray(to_uint8(plane, top)).save(target)
                written.append(target)
    logger.info("wrote %d PNG previews to %s", len(written), folder)
    return written
