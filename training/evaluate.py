"""``recon-train eval``: evaluation data detected by content, one mask and one set of coil maps per slice shared by
every method, SNR/SSIM/seconds per method and slice.

``--data`` is one of (decided by content and rank, never by the file name, except for the k-space folder):

* ``images``: a .npy of rank 3 ``[n, ny, nx]``, complex images (a real array is taken as a magnitude). K-space is
  simulated, ``fft2c(maps * image)`` with ``birdcage_coil_maps`` for ``coils`` > 1; the reference is the image.
  A rank-3 .npy is always images, even one of multi-coil k-space of one slice (a warning says so when it looks
  like k-space): put such files in a folder (below).
* ``kspace``: a .npy of rank 4 ``[n, coils, ny, nx]``, fully sampled complex multi-coil k-space (centred,
  orthonormal FFT).
* ``kspace_folder``: a folder of ``*_kspace.npy`` files (or a folder holding ``multicoil_kspace/``), each
  ``[coils, ny, nx]`` (one slice) or ``[n, coils, ny, nx]``; ``names`` picks files by stem, the default being
  :data:`~recon_plugin.evaluation.MULTICOIL_SLICES` when the folder holds all three, else every file.
* ``ismrmrd``: a folder of (or one) fully sampled ISMRMRD raw HDF5 file(s), assembled by the scanner's own
  ``Assembler`` (prewhitening, readout oversampling removed); every assembled problem is a slice.
* ``fastmri``: a folder of (or one) fastMRI HDF5 file(s): a top-level ``kspace`` dataset, fully sampled
  ``[slices, coils, rows, cols]`` or single-coil ``[slices, rows, cols]``, optional ``ismrmrd_header``
  (:mod:`training.datasets.fastmri`: read one slice at a time; with a header the readout is put along the columns
  and its oversampling removed as the ``Assembler`` does, without one the data are taken as ``[ky, kx]``). Every
  slice of every file is a slice, labelled ``<stem>/slice_<index>``.

HDF5 files are told apart by content: ISMRMRD raw has a ``dataset`` group, fastMRI a top-level ``kspace``.

For k-space kinds the maps come from the undersampled problem's calibration region (ESPIRiT, as on the scanner),
and the reference is the fully sampled k-space combined with them. Slice ``i`` of the selection gets
``make_mask(family, shape, acceleration, seed=seed + i, calib=calib)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon_plugin.adaptation import AdaptSettings
from recon_plugin.errors import InvalidInputError, ShapeMismatchError
from recon_plugin.evaluation import (
    MULTICOIL_SLICES,
    Case,
    compare,
    eval_mask,
    image_case,
    kspace_case,
    method_means,
)
from recon_plugin.masks import MaskResult
from recon_plugin.physics import check_finite
from recon_plugin.reconstructors import Reconstructor

from .datasets.base import EmptyDatasetError, ImageTooSmallError, NotFullySampledError, UnreadableImageError
from .datasets.fastmri import FastMRIFile, hdf5_kind

log = logging.getLogger(__name__)

#: Method names in table order.
METHODS = ("zero_filled", "cs_wavelet", "cs_tv", "rgancs")
BART_METHODS = {"cs_wavelet": "wavelet", "cs_tv": "tv"}
#: Smallest in-plane side accepted.
MIN_SIDE = 16
#: ``calib`` of the "uniform" family when none is given (it has no family default).
UNIFORM_CALIB = 24
#: Families whose ``calib`` counts ky lines (only the rows must fit); the others take a square block.
LINE_FAMILIES = ("lines", "uniform")
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class SourceSlice:
    """One fully sampled slice: a complex image [ny, nx] (kind ``images``) or k-space [coils, ny, nx]."""

    name: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """In-plane matrix (ny, nx)."""
        return tuple(int(s) for s in self.data.shape[-2:])  # type: ignore[return-value]


@dataclass
class EvalData:
    """An opened ``--data``: its kind, the labels of all its slices, and a loader that validates one slice."""

    path: Path
    kind: str
    labels: list[str]
    load: Callable[[int], SourceSlice] = field(repr=False)

    def select(self, spec: str | None) -> list[SourceSlice]:
        """The slices of ``START:STOP`` (either end may be empty; None = all), loaded and validated."""
        return [self.load(i) for i in parse_slices(spec, len(self.labels), self.path)]


def portable_path(path: str | Path) -> str:
    """``path`` relative to the working directory (``../shared/data/...``), so a report names no machine's folders."""
    return Path(os.path.relpath(Path(path).resolve())).as_posix()


def parse_slices(spec: str | None, count: int, where: Path | str = "the data") -> range:
    """``START:STOP`` or ``START:STOP:STEP`` -> indices; InvalidInputError for bad syntax or a stop past ``count``,
    EmptyDatasetError when nothing is selected."""
    if spec is None or spec.strip() in ("", ":"):
        selected = range(count)
    else:
        parts = spec.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            start = int(parts[0]) if parts[0].strip() else 0
            stop = int(parts[1]) if parts[1].strip() else count
            step = int(parts[2]) if len(parts) == 3 and parts[2].strip() else 1
        except ValueError:
            raise InvalidInputError(f"--slices {spec!r} is not START:STOP[:STEP] (e.g. 140:160)") from None
        if start < 0 or stop < 0 or step < 1:
            raise InvalidInputError(f"--slices {spec!r}: START and STOP must be >= 0 and STEP >= 1")
        if stop > count:
            raise InvalidInputError(f"--slices {spec!r} reaches past the {count} slices of {where}")
        selected = range(start, stop, step)
    if not selected:
        raise EmptyDatasetError(f"--slices {spec!r} selects no slice of the {count} in {where}")
    return selected


def _magic(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(8)
    except OSError as exc:
        raise UnreadableImageError(f"{path} cannot be read ({exc.strerror or exc})") from exc


def _is_hdf5(path: Path) -> bool:
    return _magic(path) == b"\x89HDF\r\n\x1a\n"


def _load_npy(path: Path) -> np.ndarray:
    if _magic(path)[:6] != _NPY_MAGIC:
        raise UnreadableImageError(f"{path} is neither a .npy array nor an HDF5 file (ISMRMRD raw or fastMRI)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UnreadableImageError(f"{path} is not a readable .npy array ({exc})") from exc
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise UnreadableImageError(f"{path} holds {arr.dtype} values, not numbers")
    return arr


def _checked(name: str, data: np.ndarray, what: str) -> SourceSlice:
    check_finite(f"{what} {name}", data)
    ny, nx = data.shape[-2:]
    if ny < MIN_SIDE or nx < MIN_SIDE:
        raise ImageTooSmallError(f"{what} {name} is {ny}x{nx}; evaluation needs at least {MIN_SIDE}x{MIN_SIDE}")
    return SourceSlice(name, data)


def _image_slice(arr: np.ndarray, index: int) -> SourceSlice:
    x = np.asarray(arr[index])
    image = x.astype(np.complex64) if np.iscomplexobj(x) else np.abs(x.astype(np.float32)).astype(np.complex64)
    return _checked(f"slice_{index}", image, "image")


def _kspace_slice(name: str, x: np.ndarray) -> SourceSlice:
    k = np.asarray(x, dtype=np.complex64)
    out = _checked(name, k, "k-space")
    sampled = np.abs(k).max(axis=0) > 0
    if not sampled.all():
        raise NotFullySampledError(
            f"k-space {name} is not fully sampled ({sampled.mean():.1%} of the points are non-zero); evaluation "
            "undersamples fully sampled data itself (choose other slices or --names)"
        )
    return out


def _complex_kspace(path: Path, arr: np.ndarray) -> None:
    if not np.iscomplexobj(arr):
        raise InvalidInputError(f"{path} holds real-valued {arr.dtype} k-space; k-space must be complex")


def _kspace_files(folder: Path, names: list[str] | None) -> list[Path]:
    files = {p.name.removesuffix("_kspace.npy"): p for p in sorted(folder.glob("*_kspace.npy")) if p.is_file()}
    if names is None:
        names = list(MULTICOIL_SLICES) if all(n in files for n in MULTICOIL_SLICES) else list(files)
    stems = [n.removesuffix(".npy").removesuffix("_kspace") for n in names]
    missing = [f"{n}_kspace.npy" for n in stems if n not in files]
    if missing:
        raise UnreadableImageError(f"no {', '.join(missing)} in {folder} (it holds: {', '.join(files) or 'nothing'})")
    return [files[n] for n in stems]


def open_data(path: str | Path, names: list[str] | None = None) -> EvalData:
    """Open ``--data`` (module docstring), checking what can be checked without loading every slice."""
    path = Path(path)
    if not path.exists():
        raise UnreadableImageError(f"{path} does not exist")
    if path.is_dir():
        folder = path / "multicoil_kspace" if (path / "multicoil_kspace").is_dir() else path
        h5 = [p for p in sorted(folder.iterdir()) if p.is_file() and _is_hdf5(p)]
        if h5:
            if names is not None:
                raise InvalidInputError("--names picks *_kspace.npy files; use --slices for folders of .h5 files")
            return _open_hdf5_folder(path, h5)
        if any(folder.glob("*_kspace.npy")):
            return _open_kspace_folder(path, _kspace_files(folder, names))
        raise UnreadableImageError(f"{path} holds no ISMRMRD or fastMRI .h5 file and no *_kspace.npy file")
    if names is not None:
        raise InvalidInputError("--names picks files of a folder of *_kspace.npy; --data is one file")
    if _is_hdf5(path):
        kind = hdf5_kind(path)
        if kind is None:
            raise UnreadableImageError(
                f"{path} is HDF5 but neither ISMRMRD raw (no 'dataset' group) nor fastMRI (no 'kspace' dataset)"
            )
        return _open_fastmri(path, [path]) if kind == "fastmri" else _open_raw(path, [path])
    arr = _load_npy(path)
    labels = [f"slice_{i}" for i in range(len(arr))]
    if arr.ndim == 3:
        return EvalData(path, "images", labels, lambda i: _image_slice(arr, i))
    if arr.ndim == 4:
        _complex_kspace(path, arr)
        return EvalData(path, "kspace", labels, lambda i: _kspace_slice(labels[i], arr[i]))
    raise ShapeMismatchError(
        f"{path} has shape {arr.shape}: expected images [n, ny, nx] (rank 3) or multi-coil k-space "
        "[n, coils, ny, nx] (rank 4)"
    )


def _open_kspace_folder(path: Path, files: list[Path]) -> EvalData:
    entries: list[tuple[str, np.ndarray]] = []
    for f in files:
        arr = _load_npy(f)
        stem = f.name.removesuffix("_kspace.npy")
        if arr.ndim not in (3, 4):
            raise ShapeMismatchError(
                f"{f} has shape {arr.shape}: expected k-space [coils, ny, nx] or [n, coils, ny, nx]"
            )
        _complex_kspace(f, arr)
        entries += [(stem, arr)] if arr.ndim == 3 else [(f"{stem}[{j}]", arr[j]) for j in range(len(arr))]
    return EvalData(path, "kspace_folder", [n for n, _ in entries], lambda i: _kspace_slice(*entries[i]))


def _open_raw(path: Path, files: list[Path]) -> EvalData:
    from .datasets.ismrmrd_raw import assemble_file

    entries: list[tuple[str, np.ndarray]] = []
    for f in files:
        slices = assemble_file(f)
        entries += [(f"{f.stem}/{j}", s.problem.kspace) for j, s in enumerate(slices)]
    log.info("assembled %d slices from %d raw file(s)", len(entries), len(files))
    return EvalData(path, "ismrmrd", [n for n, _ in entries], lambda i: _kspace_slice(*entries[i]))


def _open_hdf5_folder(path: Path, files: list[Path]) -> EvalData:
    """fastMRI when any file has a top-level ``kspace`` (then no ISMRMRD raw file may be there), else ISMRMRD raw."""
    kinds = {}
    for f in files:
        try:
            kinds[f] = hdf5_kind(f)
        except UnreadableImageError:
            kinds[f] = None  # named by the reader of the folder's kind
    if "fastmri" not in kinds.values():
        return _open_raw(path, files)
    raw = [f.name for f, k in kinds.items() if k == "ismrmrd"]
    if raw:
        raise InvalidInputError(f"{path} mixes fastMRI and ISMRMRD raw files ({', '.join(raw)}); use one kind")
    return _open_fastmri(path, files)


def _open_fastmri(path: Path, files: list[Path]) -> EvalData:
    opened = [FastMRIFile.open(f) for f in files]
    entries = [(f, j) for f in opened for j in range(f.slices)]
    log.info("%d slices in %d fastMRI file(s)", len(entries), len(opened))

    def load(i: int) -> SourceSlice:
        f, j = entries[i]
        return _checked(f.label(j), f.read(j), "k-space")

    return EvalData(path, "fastmri", [f.label(j) for f, j in entries], load)


def looks_like_kspace(x: np.ndarray) -> bool:
    """True when most of the energy of ``x`` [ny, nx] sits in its central 1/8 x 1/8 block, peaking at the centre:
    how centred k-space looks, and images almost never do."""
    mag2 = np.abs(np.asarray(x)) ** 2
    ny, nx = mag2.shape
    total = float(mag2.sum())
    if total <= 0:
        return False
    hy, hx = max(1, ny // 16), max(1, nx // 16)
    centre = float(mag2[ny // 2 - hy : ny // 2 + hy, nx // 2 - hx : nx // 2 + hx].sum())
    peak = np.unravel_index(int(np.argmax(mag2)), mag2.shape)
    return centre > 0.5 * total and abs(peak[0] - ny // 2) <= 1 and abs(peak[1] - nx // 2) <= 1


def resolve_calib(family: str, calib: int | None) -> int | None:
    """``calib`` as given; the "uniform" family has no default and gets :data:`UNIFORM_CALIB`."""
    if calib is None and str(family).strip().lower() == "uniform":
        return UNIFORM_CALIB
    if calib is not None and calib < 0:
        raise InvalidInputError(f"--calib must be >= 0, got {calib}")
    return calib


def make_masks(
    slices: list[SourceSlice], family: str, acceleration: float, calib: int | None, seed: int
) -> list[MaskResult]:
    """Slice ``i`` gets ``make_mask(family, shape, acceleration, seed=seed + i, calib=calib)``; a slice smaller
    than the calibration region is an ImageTooSmallError."""
    masks = []
    for i, s in enumerate(slices):
        ny, nx = s.shape
        lines = str(family).strip().lower() in LINE_FAMILIES
        if calib is not None and (calib > ny or (not lines and calib > nx)):
            raise ImageTooSmallError(f"slice {s.name} is {ny}x{nx}, smaller than the {calib}-wide calibration region")
        masks.append(eval_mask(family, s.shape, acceleration, seed + i, calib))
    return masks


def file_masks(spec: str | Path, slices: list[SourceSlice]) -> list[MaskResult]:
    """Every slice gets the mask of ``spec``: ``F.npy`` (2D boolean or 0/1) or ``F.npz:KEY`` (one array of an .npz,
    e.g. a published sampling pattern). A missing file or key, another shape, non-binary values or an empty mask
    is an InvalidInputError."""
    text = str(spec)
    path, _, key = text.partition(".npz:")
    path = Path(path + ".npz") if key else Path(text)
    if not path.is_file():
        raise InvalidInputError(f"--mask-file {text}: no file {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if key:
            if key not in loaded.files:
                raise InvalidInputError(f"--mask-file {text}: no array {key!r} in {path} (it has {loaded.files})")
            mask = loaded[key]
        elif isinstance(loaded, np.ndarray):
            mask = loaded
        else:
            raise InvalidInputError(f"--mask-file {text}: an .npz needs :KEY, one of {loaded.files}")
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"--mask-file {text}: not a NumPy array ({exc})") from exc
    if mask.ndim != 2 or not np.isin(mask, (0, 1)).all() or not mask.any():
        raise InvalidInputError(f"--mask-file {text}: need a non-empty 2D 0/1 mask, got {mask.dtype} {mask.shape}")
    for s in slices:
        if tuple(mask.shape) != s.shape:
            raise ShapeMismatchError(f"--mask-file {text} is {mask.shape[0]}x{mask.shape[1]}, slice {s.name} {s.shape}")
    name = f"file:{path.stem}" + (f":{key}" if key else "")
    r = mask.size / int(mask.astype(bool).sum())
    return [MaskResult(mask=mask.astype(bool), view_order=None, family=name, acceleration_requested=r, seed=0)] * len(
        slices
    )


def build_cases(kind: str, slices: list[SourceSlice], masks: list[MaskResult], coils: int = 1) -> list[Case]:
    """One Case per slice; every Problem's coil maps are estimated here, once, from its undersampled data."""
    cases = []
    for s, m in zip(slices, masks, strict=True):
        if kind == "images":
            cases.append(image_case(s.name, s.data, m.mask, coils=coils))
        else:
            cases.append(kspace_case(s.name, s.data, m.mask))
    return cases


def parse_methods(spec: str | None) -> list[str]:
    """Comma-separated method names (``-`` or ``_``) -> names in :data:`METHODS`; None = all."""
    if spec is None:
        return list(METHODS)
    names = [n.strip().lower().replace("-", "_") for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise InvalidInputError(f"--methods {spec!r}: choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def build_methods(
    names: list[str],
    bundle: Path | None,
    iterations: int = 300,
    device: str = "auto",
    workers: int = 1,
    adapt: AdaptSettings | None = None,
    model: str = "auto",
) -> list[Reconstructor]:
    """Reconstructors for ``names`` (BART CS at its tuned lambdas; RGANCS from ``bundle`` or the default weights
    for ``device`` and the ``model`` property's value, adapted to each slice when ``adapt`` has steps).
    BartNotFoundError when a BART method is asked for without BART, BundleError for a bad bundle."""
    from recon_plugin.reconstructors import RGANCS, BartCS, ZeroFilled

    out: list[Reconstructor] = []
    for name in names:
        if name == "zero_filled":
            out.append(ZeroFilled())
        elif name in BART_METHODS:
            out.append(BartCS(BART_METHODS[name], iterations=iterations, workers=workers, time_limit=600))  # type: ignore[arg-type]
        else:
            if bundle is None:  # the gadgets' default: routed by coil count
                from recon_plugin.pipeline import default_rgancs

                out.append(default_rgancs(device, adapt=adapt, model=model))
            else:
                out.append(RGANCS(bundle, device=device, adapt=adapt))
    return out


@dataclass
class EvalReport:
    """Per-slice rows, per-method means, and the settings that produced them."""

    rows: list[dict]
    means: list[dict]
    settings: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """{"rows", "means", "settings"}."""
        return {"rows": self.rows, "means": self.means, "settings": self.settings}


def run_eval(
    data: str | Path,
    *,
    bundle: Path | None = None,
    family: str = "radial",
    acceleration: float = 5.0,
    calib: int | None = None,
    coils: int | None = None,
    slices: str | None = None,
    names: list[str] | None = None,
    seed: int = 200,
    iterations: int = 300,
    device: str = "auto",
    methods: str | None = None,
    workers: int = 1,
    mask_file: str | Path | None = None,
    adapt: AdaptSettings | None = None,
    exam_size: int | None = None,
    model: str = "auto",
) -> EvalReport:
    """Open the data, make the masks (or take ``mask_file``'s for every slice), build the methods, estimate the
    maps once per slice, compare (the slices as exams of ``exam_size`` consecutive ones; None: one exam). Without a
    ``bundle``, RGANCS is the gadgets' default for ``model`` (auto, accurate or fast) on ``device``."""
    method_names = parse_methods(methods)
    calib = resolve_calib(family, calib)
    source = open_data(data, names)
    if coils is not None and source.kind != "images":
        raise InvalidInputError(f"--coils simulates coils for image data; {source.path} is {source.kind} with its own")
    n_coils = 1 if coils is None else int(coils)
    if n_coils < 1:
        raise InvalidInputError(f"--coils must be >= 1, got {n_coils}")
    selected = source.select(slices)
    if source.kind == "images" and looks_like_kspace(selected[0].data):
        log.warning(
            "%s looks like k-space, but a rank-3 .npy is read as images [n, ny, nx]; evaluate one slice of "
            "multi-coil k-space [coils, ny, nx] from a folder, as NAME_kspace.npy",
            source.path,
        )
    masks = (
        make_masks(selected, family, acceleration, calib, seed)
        if mask_file is None
        else file_masks(mask_file, selected)
    )
    reconstructors = build_methods(method_names, bundle, iterations, device, workers, adapt, model)
    log.info("%d %s slices from %s; estimating coil maps", len(selected), source.kind, source.path)
    cases = build_cases(source.kind, selected, masks, n_coils)
    rows = compare(cases, reconstructors, exam_size)
    rgancs = next((r for r in reconstructors if r.name == "rgancs"), None)
    # the bundle(s) behind it: one, or (the gadgets' default) one per coil count
    multi = getattr(rgancs, "multi", rgancs)
    single = getattr(rgancs, "single", None)
    settings = {
        "data": portable_path(data),
        "kind": source.kind,
        "slices": [c.name for c in cases],
        "family": masks[0].family,
        "acceleration": float(acceleration),
        "acceleration_achieved": float(np.mean([m.acceleration for m in masks])),
        "calib": calib,
        "mask_calib": list(masks[0].calib),
        "coils": sorted({c.problem.coils for c in cases}),
        "coils_simulated": source.kind == "images" and n_coils > 1,
        "seed": seed,
        "iterations": iterations,
        "methods": method_names,
        "device": device,
        "bundle": portable_path(multi.bundle.path) if multi is not None else None,
        "bundle_sha256": multi.bundle.sha256 if multi is not None else None,
        "single_coil_bundle": portable_path(single.bundle.path) if single is not None else None,
    }
    if adapt is not None and adapt.enabled:  # only then: earlier JSON stays comparable key for key
        settings["adapt"] = {"steps": adapt.steps, "lr": adapt.lr, "split": adapt.split, "splits": adapt.splits}
        if adapt.scope != "slice":  # only then, as above
            settings["adapt"] |= {"scope": adapt.scope, "exam_size": exam_size or len(cases)}
    return EvalReport(rows, method_means(rows), settings)
