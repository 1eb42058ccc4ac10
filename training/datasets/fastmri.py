"""fastMRI HDF5 files -> fully sampled Cartesian slices, read lazily (one slice per read, never a whole file).

A fastMRI file holds a top-level dataset ``kspace``: complex ``[slices, coils, rows, cols]`` (multi-coil) or
``[slices, rows, cols]`` (single-coil), centred and orthonormal like this package's FFT, and optionally
``ismrmrd_header`` (ISMRMRD XML). Other datasets (``reconstruction_rss``, ``mask``, ...) are ignored.
ISMRMRD raw files (a ``dataset`` group holding ``data``) are told apart by content: :func:`hdf5_kind`.

Layout. Slices are returned as ``[coils, ky, kx]``: rows are phase-encode lines (what the "lines" and
"uniform" masks undersample), columns the readout, as the scanner path's ``Assembler`` produces.

* With a header: the readout is the axis whose length is the encoded matrix ``x``. fastMRI stores the readout
  along the rows (e.g. 640 x 368 for knee); such slices are transposed. When the header's recon matrix ``x`` is
  smaller than the encoded one, the readout oversampling is removed as the ``Assembler`` does (inverse FFT along
  the readout, keep the central recon ``x`` samples, FFT back): 640 -> 320 for fastMRI knee and brain.
* Without a header: the data are taken as given, ``[ky, kx]``, nothing cropped.

Zero-padded k-space edges (fastMRI knee stores fewer phase encodes than its matrix, zero-filled at both ends)
are accepted; inside the non-zero bounding box every point must be sampled (NotFullySampledError otherwise).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd.xsd
import numpy as np

from recon_plugin.errors import InvalidInputError, ShapeMismatchError
from recon_plugin.kspace import EncodingInfo, _remove_oversampling, parse_header
from recon_plugin.physics import check_finite, fftc
from recon_plugin.problem import Problem

from .base import EmptyDatasetError, NotFullySampledError, UnreadableImageError
from .ismrmrd_raw import RawFileSlices, RawSlice

log = logging.getLogger(__name__)

KSPACE = "kspace"
HEADER = "ismrmrd_header"
#: Slices whose coil maps and reference a training source keeps in memory (least recently used dropped first).
MAPS_CACHE = 64
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: Path) -> bool:
    """True for a readable file that starts with the HDF5 signature."""
    try:
        with path.open("rb") as f:
            return f.read(8) == _HDF5_MAGIC
    except OSError:
        return False


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UnreadableImageError(f"{path} cannot be opened as HDF5; it is truncated or corrupt ({exc})") from exc


def hdf5_kind(path: str | Path) -> str | None:
    """``"ismrmrd"`` (a ``dataset`` group: ISMRMRD raw), ``"fastmri"`` (a top-level ``kspace`` dataset) or None."""
    with _open(Path(path)) as f:
        if isinstance(f.get("dataset"), h5py.Group):
            return "ismrmrd"
        if isinstance(f.get(KSPACE), h5py.Dataset):
            return "fastmri"
    return None


def _header_text(node: h5py.Dataset, path: Path) -> str:
    value = node[()]
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else b""
    if isinstance(value, bytes | np.bytes_):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{path}: '{HEADER}' is not an XML string")
    return value


@dataclass(frozen=True)
class FastMRIFile:
    """One fastMRI file's layout, checked on opening; :meth:`read` loads and validates one slice."""

    path: Path
    slices: int
    coils: int
    stored: tuple[int, int]  # in-plane shape as stored
    transpose: bool  # readout stored along the rows: swap to [ky, kx]
    readout: int | None  # keep the central ``readout`` samples in image space (oversampling removed), None = all

    @classmethod
    def open(cls, path: str | Path) -> FastMRIFile:
        """Check a file's structure without reading its k-space; named errors for each defect."""
        path = Path(path)
        if not path.is_file():
            raise UnreadableImageError(f"fastMRI file {path} does not exist")
        if not is_hdf5(path):
            raise UnreadableImageError(f"{path} is not an HDF5 file (fastMRI files are HDF5)")
        with _open(path) as f:
            node = f.get(KSPACE)
            if not isinstance(node, h5py.Dataset):
                found = ", ".join(sorted(f.keys())) or "nothing"
                raise UnreadableImageError(f"{path} has no '{KSPACE}' dataset (top level holds: {found})")
            shape, dtype = tuple(int(s) for s in node.shape), node.dtype
            header = _header_text(f[HEADER], path) if isinstance(f.get(HEADER), h5py.Dataset) else None
        if len(shape) not in (3, 4):
            raise ShapeMismatchError(
                f"{path}: '{KSPACE}' has shape {shape}; expected [slices, coils, ky, kx] (multi-coil) or "
                "[slices, ky, kx] (single-coil)"
            )
        if not np.issubdtype(dtype, np.complexfloating):
            raise InvalidInputError(f"{path}: '{KSPACE}' holds real-valued {dtype}; k-space must be complex")
        if 0 in shape:
            raise EmptyDatasetError(f"{path}: '{KSPACE}' has shape {shape}; it holds no slice")
        stored = (shape[-2], shape[-1])
        transpose, readout = _layout(stored, None if header is None else parse_header(header, where=str(path)), path)
        coils = shape[1] if len(shape) == 4 else 1
        return cls(path, shape[0], coils, stored, transpose, readout)

    @property
    def shape(self) -> tuple[int, int]:
        """In-plane shape (ny, nx) of the slices :meth:`read` returns."""
        ny, nx = self.stored[::-1] if self.transpose else self.stored
        return ny, self.readout or nx

    def label(self, index: int) -> str:
        """``<stem>/slice_<index>``."""
        return f"{self.path.stem}/slice_{index:02d}"

    def read(self, index: int) -> np.ndarray:
        """Slice ``index`` as complex64 ``[coils, ky, kx]``; NonFiniteDataError, NotFullySampledError."""
        if not 0 <= index < self.slices:
            raise InvalidInputError(f"{self.path} has slices 0..{self.slices - 1}, not {index}")
        try:
            with _open(self.path) as f:
                k = np.asarray(f[KSPACE][index], dtype=np.complex64)
        except (OSError, KeyError) as exc:
            raise UnreadableImageError(f"{self.path}: slice {index} cannot be read ({exc})") from exc
        k = k[None] if k.ndim == 2 else k
        name = self.label(index)
        check_finite(f"fastMRI k-space {self.path.parent / name}", k)
        if self.transpose:
            k = np.swapaxes(k, -1, -2)
        check_sampled(f"{self.path.parent / name}", k)
        if self.readout is not None:
            k = fftc(_remove_oversampling(k, self.readout), axes=(-1,))
        return np.ascontiguousarray(k, dtype=np.complex64)


def _layout(stored: tuple[int, int], header: ismrmrd.xsd.ismrmrdHeader | None, path: Path) -> tuple[bool, int | None]:
    """(transpose, readout samples to keep) from the header's first encoding; as given without a header."""
    if header is None:
        return False, None
    enc = EncodingInfo.from_header(header)
    x, recon_x = enc.encoded[0], enc.recon[0]
    if stored[0] == x:
        transpose = True  # fastMRI's own layout: the readout along the rows
    elif stored[1] == x:
        transpose = False
    else:
        log.warning(
            "%s: the header's encoded readout (%d samples) matches neither axis of the %dx%d k-space; "
            "taking it as [ky, kx], nothing cropped",
            path,
            x,
            *stored,
        )
        return False, None
    return transpose, (recon_x if recon_x < x else None)


def check_sampled(name: str, k: np.ndarray) -> None:
    """NotFullySampledError unless every point inside the non-zero bounding box of ``k`` [coils, ny, nx] is
    sampled (zero-padded edges, as fastMRI knee has, are allowed)."""
    sampled = np.abs(k).max(axis=0) > 0
    rows, cols = np.flatnonzero(sampled.any(axis=1)), np.flatnonzero(sampled.any(axis=0))
    if rows.size == 0:
        raise NotFullySampledError(f"k-space {name} is all zeros")
    inner = sampled[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    if not inner.all():
        raise NotFullySampledError(
            f"k-space {name} is not fully sampled ({inner.mean():.1%} of the acquired region is non-zero); "
            "evaluation and training undersample fully sampled data themselves"
        )


def fastmri_files(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files of one or several sources, each a file, a folder (its HDF5 files, sorted) or a glob."""
    items = [sources] if isinstance(sources, str | Path) else list(sources)
    out: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise EmptyDatasetError(f"no file matches {text}")
            out += found
        elif Path(text).is_dir():
            found = [p for p in sorted(Path(text).iterdir()) if p.is_file() and is_hdf5(p)]
            if not found:
                raise EmptyDatasetError(f"{text} holds no HDF5 (.h5) file")
            out += found
        elif not Path(text).exists():
            raise UnreadableImageError(f"fastMRI file {text} does not exist")
        else:
            out.append(Path(text))
    if not out:
        raise EmptyDatasetError("no fastMRI file given")
    return out


@dataclass(frozen=True)
class FastMRISlice:
    """Slice ``index`` of a :class:`FastMRIFile` (nothing loaded until :meth:`read`)."""

    file: FastMRIFile
    index: int

    @property
    def name(self) -> str:
        """``<stem>/slice_<index>``."""
        return self.file.label(self.index)

    def read(self) -> np.ndarray:
        """The validated k-space ``[coils, ky, kx]``."""
        return self.file.read(self.index)


def open_slices(sources: str | Path | Iterable[str | Path]) -> list[FastMRISlice]:
    """Every slice of every file of ``sources`` (:func:`fastmri_files`), each file's structure checked."""
    files = [FastMRIFile.open(p) for p in fastmri_files(sources)]
    return [FastMRISlice(f, j) for f in files for j in range(f.slices)]


class FastMRISlices(RawFileSlices):
    """Training slices from fastMRI files, built like :class:`RawFileSlices` (same masks, maps, normalisation).

    Each slice of each file is one example; k-space is read from disk per use, one slice at a time. The
    reference is the fully sampled image SENSE-combined with ESPIRiT maps of the fully sampled slice (ones for
    single-coil files); maps and reference of the ``cache`` most recently used slices are kept in memory.
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        *,
        mask_family: str | None = None,
        acceleration: float = 5.0,
        per_sample_masks: bool = True,
        seed: int = 0,
        calib: int = 12,
        calib_width: int = 24,
        percentile: float = 99.0,
        cache: int = MAPS_CACHE,
    ) -> None:
        self.slices: list[FastMRISlice] = open_slices(sources)  # type: ignore[assignment]
        self.calib_width, self.cache = calib_width, max(1, cache)
        self._setup(mask_family, acceleration, per_sample_masks, seed, calib, percentile)
        log.info("%d training slices from %d fastMRI file(s)", len(self.slices), len({s.file for s in self.slices}))

    def family(self, index: int) -> str:
        """Mask family of slice ``index`` ("lines" for these 2D slices unless ``mask_family`` is set)."""
        return self.mask_family or "lines"

    def shape_key(self, index: int) -> tuple[int, int, int]:
        """(coils, ny, nx) of slice ``index``, from the file's layout (nothing read)."""
        f = self.slices[index].file  # type: ignore[attr-defined]
        return (f.coils, *f.shape)

    def _example(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < len(self.slices):
            raise InvalidInputError(f"slice index {index} is outside 0..{len(self.slices) - 1}")
        item: FastMRISlice = self.slices[index]  # type: ignore[assignment]
        kspace = item.read()
        if index in self._maps:
            self._maps[index] = self._maps.pop(index)  # most recently used last
            self._refs[index] = self._refs.pop(index)
        else:
            problem = Problem(kspace, np.ones(kspace.shape[1:], dtype=bool), calib_width=self.calib_width)
            full = RawSlice(item.file.path, problem, is_3d=False)
            self._maps[index], self._refs[index] = full.maps(), full.reference()
            while len(self._maps) > self.cache:
                oldest = next(iter(self._maps))
                del self._maps[oldest], self._refs[oldest]
        return kspace, self._maps[index], self._refs[index]
