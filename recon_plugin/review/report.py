"""Static side-by-side report of reconstructed exams: one HTML page plus a folder of PNGs, no server needed.

Every slice is a row of the methods (zero-filled, CS-WV, CS-TV, RGANCS, reference) in one shared display
window; with a reference, a second row holds the error maps ``| |method| - |reference| |`` on one shared
scale. A metrics table per exam gives mean SNR / SSIM (recomputed against the reference when there is one,
else read from the image meta) and seconds per slice.
"""

from __future__ import annotations

import contextlib
import html as html_lib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ismrmrd
import numpy as np
from PIL import Image

from ..errors import IsmrmrdFormatError, ReconError
from ..gadget_settings import SERIES_INDEX
from ..images import SNR_META, SSIM_META, image_meta
from ..metrics import snr_db, ssim
from ..preview import to_uint8
from ..replay.dataset import read_images

logger = logging.getLogger(__name__)

#: Column order of the known methods; other series follow in series order, the reference comes last.
METHOD_ORDER = ("zero_filled", "cs_wavelet", "cs_tv", "rgancs")
METHOD_LABELS = {
    "zero_filled": "Zero-filled",
    "cs_wavelet": "CS-WV",
    "cs_tv": "CS-TV",
    "rgancs": "RGANCS",
    "reference": "Reference",
}
REFERENCE = "reference"
_SERIES_METHOD = {index: name for name, index in SERIES_INDEX.items()}
_DISPLAY_PX = 240  # the larger side of an image in the page, in CSS pixels
_ERROR_CMAP = "inferno"

SliceKey = tuple[int, int, int, int, int]  # measurement_uid, slice, contrast, repetition, image_index


class ReportError(ReconError):
    """The report cannot be made: no inputs or images, or images of one slice that differ in shape."""


@dataclass
class _Column:
    series: int
    method: str  # Method meta of the series (or its standard name)
    label: str
    images: dict[SliceKey, ismrmrd.Image]

    @property
    def is_reference(self) -> bool:
        return self.method == REFERENCE


@dataclass
class _Exam:
    path: Path
    columns: list[_Column]
    keys: list[SliceKey]  # every slice of the exam, sorted
    shapes: dict[SliceKey, tuple[int, int]]
    metrics: dict[int, dict[SliceKey, tuple[float | None, float | None]]] = field(default_factory=dict)

    @property
    def reference(self) -> _Column | None:
        return next((c for c in self.columns if c.is_reference), None)

    @property
    def methods(self) -> list[_Column]:
        return [c for c in self.columns if not c.is_reference]


def write_report(inputs: list[Path], html: Path, *, max_slices: int | None = None) -> Path:
    """Write a static HTML report of ISMRMRD image files (one section per file) and its PNGs; return ``html``.

    The PNGs go to ``<html stem>_files/`` next to the page, linked by relative paths. Both are written under
    temporary names and moved into place only when complete. ``max_slices`` shows at most that many slices
    per exam, evenly spaced (metrics still cover every slice).

    Raises:
        IsmrmrdFormatError: an input is missing, not HDF5 or not an ISMRMRD image file.
        ReportError: no inputs, no images, images of one slice that differ in shape, or a bad ``max_slices``.
    """
    inputs = [Path(p) for p in inputs]
    html = Path(html)
    if not inputs:
        raise ReportError("no input files: give at least one ISMRMRD image file from `recon-plugin replay`")
    if max_slices is not None and max_slices < 1:
        raise ReportError(f"max_slices must be at least 1, got {max_slices}")
    exams = [_load_exam(path) for path in inputs]
    for exam in exams:
        _compute_metrics(exam)

    html.parent.mkdir(parents=True, exist_ok=True)
    files_dir = html.parent / f"{html.stem}_files"
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{files_dir.name}.", suffix=".tmp", dir=html.parent))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{html.name}.", suffix=".tmp", dir=html.parent)
    os.close(fd)
    tmp_html = Path(tmp_name)
    try:
        sections = [
            _render_exam(number, exam, tmp_dir, files_dir.name, max_slices) for number, exam in enumerate(exams, 1)
        ]
        tmp_html.write_text(_page(sections, [e.path for e in exams]), encoding="utf-8")
        tmp_html.chmod(0o644)
        _swap_into_place(tmp_dir, files_dir)
        os.replace(tmp_html, html)
    except BaseException:
        tmp_html.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("wrote report of %d exam(s) to %s", len(exams), html)
    return html


# ---------------------------------------------------------------------------------------------------- reading


def _load_exam(path: Path) -> _Exam:
    if not path.is_file():
        raise IsmrmrdFormatError(f"{path} does not exist or is not a file")
    try:
        by_series = read_images(path)
    except LookupError as exc:  # HDF5 without the ISMRMRD dataset group
        raise IsmrmrdFormatError(f"{path} is not an ISMRMRD image file ({exc})") from exc
    columns = [_column(path, series, images) for series, images in sorted(by_series.items()) if images]
    if not columns:
        raise ReportError(f"{path} holds no images")
    _disambiguate(columns)
    columns.sort(key=_column_rank)
    keys = sorted({key for column in columns for key in column.images})
    shapes: dict[SliceKey, tuple[int, int]] = {}
    for key in keys:
        found = {c.label: _magnitude(c.images[key], path).shape for c in columns if key in c.images}
        if len(set(found.values())) > 1:
            detail = ", ".join(f"{label} {rows}x{cols}" for label, (rows, cols) in found.items())
            raise ReportError(f"{path}: {_key_label(key)} has images of different shapes across methods ({detail})")
        shapes[key] = next(iter(found.values()))
    return _Exam(path, columns, keys, shapes)


def _column(path: Path, series: int, images: list[ismrmrd.Image]) -> _Column:
    by_key: dict[SliceKey, ismrmrd.Image] = {}
    for image in images:
        key = _slice_key(image)
        if key in by_key:
            logger.warning("%s: series %d holds %s twice; keeping the first", path, series, _key_label(key))
            continue
        by_key[key] = image
    method = str(image_meta(images[0]).get("Method") or _SERIES_METHOD.get(series) or f"series {series}")
    return _Column(series, method, METHOD_LABELS.get(method, method), by_key)


def _disambiguate(columns: list[_Column]) -> None:
    labels = [c.label for c in columns]
    for column in columns:
        if labels.count(column.label) > 1:
            column.label = f"{column.label} (series {column.series})"


def _column_rank(column: _Column) -> tuple[int, int]:
    if column.is_reference:
        return (2, column.series)
    if column.method in METHOD_ORDER:
        return (0, METHOD_ORDER.index(column.method))
    return (1, column.series)


def _slice_key(image: ismrmrd.Image) -> SliceKey:
    return (
        int(image.measurement_uid),
        int(image.slice),
        int(image.contrast),
        int(image.repetition),
        int(image.image_index),
    )


def _key_label(key: SliceKey) -> str:
    _, slc, contrast, repetition, index = key
    extra = "".join(
        f", {name} {value}" for name, value in (("contrast", contrast), ("repetition", repetition)) if value
    )
    return f"image {index} (slice {slc}{extra})"


def _magnitude(image: ismrmrd.Image, path: Path) -> np.ndarray:
    data = np.asarray(image.data)  # [channels, z, rows, columns]
    if data.ndim != 4 or data.shape[1] != 1:
        raise ReportError(f"{path}: image {image.image_index} is {data.shape[1]}-plane 3D; the report shows 2D images")
    mag = np.abs(data[:, 0]).astype(np.float64)
    return np.sqrt(np.sum(mag**2, axis=0)) if mag.shape[0] > 1 else mag[0]


# ---------------------------------------------------------------------------------------------------- metrics


def _meta_float(image: ismrmrd.Image, name: str) -> float | None:
    value = image_meta(image).get(name)
    try:
        number = float(value) if value is not None and not isinstance(value, list) else None
    except ValueError:
        return None
    return number if number is not None and not math.isnan(number) else None


def _compute_metrics(exam: _Exam) -> None:
    """Per method and slice (SNR dB, SSIM): against the reference where it has the slice, else from meta."""
    reference = exam.reference
    for column in exam.methods:
        values: dict[SliceKey, tuple[float | None, float | None]] = {}
        for key, image in column.images.items():
            if reference is not None and key in reference.images:
                ref = _magnitude(reference.images[key], exam.path)
                est = _magnitude(image, exam.path)
                values[key] = (snr_db(ref, est), ssim(ref, est))
            else:
                values[key] = (_meta_float(image, SNR_META), _meta_float(image, SSIM_META))
        exam.metrics[column.series] = values


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


# ---------------------------------------------------------------------------------------------------- rendering


def _pick(keys: list[SliceKey], max_slices: int | None) -> list[SliceKey]:
    if max_slices is None or len(keys) <= max_slices:
        return keys
    positions = np.rint(np.linspace(0, len(keys) - 1, max_slices)).astype(int)
    return [keys[i] for i in dict.fromkeys(positions.tolist())]


def _display_size(shape: tuple[int, int]) -> tuple[int, int, bool]:
    """CSS width, height and whether to keep pixels sharp: small images are enlarged by a whole factor."""
    rows, cols = shape
    scale = _DISPLAY_PX / max(rows, cols)
    if scale >= 1:
        zoom = math.floor(scale)
        return cols * zoom, rows * zoom, True
    return max(1, round(cols * scale)), max(1, round(rows * scale)), False


def _error_lut() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[_ERROR_CMAP](np.arange(256))[:, :3] * 255).astype(np.uint8)


def _render_exam(number: int, exam: _Exam, out_dir: Path, link_dir: str, max_slices: int | None) -> str:
    exam_dir = out_dir / f"exam{number:02d}"
    exam_dir.mkdir()
    reference = exam.reference
    methods = exam.methods
    lut = _error_lut() if reference is not None and methods else None
    shown = _pick(exam.keys, max_slices)
    head = "".join(f"<th>{_esc(c.label)}</th>" for c in exam.columns)
    rows: list[str] = []
    for row, key in enumerate(shown):
        present = {c.series: _magnitude(c.images[key], exam.path) for c in exam.columns if key in c.images}
        ref_image = present.get(reference.series) if reference is not None else None
        window_from = ref_image if ref_image is not None else np.concatenate([m.ravel() for m in present.values()])
        window = float(np.percentile(window_from, 99.5)) or 1.0
        width, height, sharp = _display_size(exam.shapes[key])
        img_attrs = f'width="{width}" height="{height}"' + (' class="px"' if sharp else "")
        cells: list[str] = []
        for column in exam.columns:
            if column.series not in present:
                cells.append('<td class="missing">no image</td>')
                continue
            name = f"s{row:03d}_series{column.series}.png"
            Image.fromarray(to_uint8(present[column.series], window)).save(exam_dir / name)
            caption = _slice_caption(exam, column, key)
            src = f"{link_dir}/{exam_dir.name}/{name}"
            cells.append(f'<td><img src="{_esc(src)}" {img_attrs} alt="{_esc(column.label)}">{caption}</td>')
        label = f'<th rowspan="{2 if lut is not None else 1}" class="slice">{_esc(_key_label(key))}</th>'
        rows.append(f"<tr>{label}{''.join(cells)}</tr>")
        if lut is not None:
            rows.append(_error_row(exam, key, row, present, ref_image, window, lut, exam_dir, link_dir, img_attrs))
    note = f"{len(shown)} of {len(exam.keys)} slices shown (evenly spaced)" if len(shown) < len(exam.keys) else ""
    return _section(number, exam, head, rows, note)


def _error_row(
    exam: _Exam,
    key: SliceKey,
    row: int,
    present: dict[int, np.ndarray],
    ref_image: np.ndarray | None,
    window: float,
    lut: np.ndarray,
    exam_dir: Path,
    link_dir: str,
    img_attrs: str,
) -> str:
    if ref_image is None:
        span = len(exam.columns)
        return f'<tr class="err"><td colspan="{span}" class="missing">no reference for this slice</td></tr>'
    errors = {c.series: np.abs(present[c.series] - ref_image) for c in exam.methods if c.series in present}
    pooled = np.concatenate([e.ravel() for e in errors.values()]) if errors else np.zeros(1)
    scale = float(np.percentile(pooled, 99.5)) or 1.0
    cells: list[str] = []
    for column in exam.columns:
        if column.is_reference:
            cells.append(
                f'<td class="scale">error maps<br>|&thinsp;|method| &minus; |reference|&thinsp;|<br>'
                f"scale 0 &ndash; {scale:.4g}<br>({100 * scale / window:.1f}% of<br>the image window)</td>"
            )
        elif column.series in errors:
            name = f"s{row:03d}_series{column.series}_err.png"
            Image.fromarray(lut[to_uint8(errors[column.series], scale)]).save(exam_dir / name)
            src = f"{link_dir}/{exam_dir.name}/{name}"
            cells.append(f'<td><img src="{_esc(src)}" {img_attrs} alt="error {_esc(column.label)}"></td>')
        else:
            cells.append('<td class="missing"></td>')
    return f'<tr class="err">{"".join(cells)}</tr>'


def _slice_caption(exam: _Exam, column: _Column, key: SliceKey) -> str:
    if column.is_reference:
        return ""
    snr, sim = exam.metrics[column.series].get(key, (None, None))
    seconds = _meta_float(column.images[key], "ReconSeconds")
    parts = [f"SNR {_fmt(snr, 2)} dB", f"SSIM {_fmt(sim, 3)}"]
    if seconds is not None:
        parts.append(f"{seconds:.3g} s")
    return f'<div class="cap">{"<br>".join(parts)}</div>'


def _metrics_table(exam: _Exam) -> str:
    reference = exam.reference
    rows: list[str] = []
    for column in exam.methods:
        values = exam.metrics[column.series]
        snrs = [v[0] for v in values.values()]
        ssims = [v[1] for v in values.values()]
        seconds = _mean([_meta_float(im, "ReconSeconds") for im in column.images.values()])
        against = sum(1 for k in column.images if reference is not None and k in reference.images)
        source = "vs reference" if against == len(values) else "from meta" if against == 0 else "mixed"
        first = image_meta(next(iter(column.images.values())))
        details = ", ".join(
            f"{name} {first[name]}" for name in ("ModelName", "Lambda", "Iterations", "Device") if name in first
        )
        rows.append(
            f'<tr><td>{_esc(column.label)}</td><td class="num">{len(values)}</td>'
            f'<td class="num snr">{_fmt(_mean(snrs), 2)}</td><td class="num ssim">{_fmt(_mean(ssims), 4)}</td>'
            f'<td class="num">{_fmt(seconds, 3)}</td><td>{source}</td><td>{_esc(details)}</td></tr>'
        )
    if not rows:
        return "<p>Only a reference series: no metrics.</p>"
    return (
        '<table class="metrics"><tr><th>method</th><th>slices</th><th>mean SNR (dB)</th><th>mean SSIM</th>'
        "<th>seconds / slice</th><th>metrics</th><th>details</th></tr>" + "".join(rows) + "</table>"
    )


def _section(number: int, exam: _Exam, head: str, rows: list[str], note: str) -> str:
    uids = sorted({k[0] for k in exam.keys})
    shapes = sorted({f"{r}x{c}" for r, c in exam.shapes.values()})
    facts = [
        f"{len(exam.keys)} slices",
        f"matrix {', '.join(shapes)} (rows x columns)",
        f"measurement {', '.join(map(str, uids))}",
        "reference present" if exam.reference is not None else "no reference: no error maps, metrics from meta",
    ]
    return (
        f'<section id="exam{number}"><h2>{number}. {_esc(exam.path.name)}</h2>'
        f'<p class="facts">{_esc(" · ".join(facts))}</p>'
        f"<h3>Metrics</h3>{_metrics_table(exam)}"
        f"<h3>Slices</h3>{f'<p>{_esc(note)}</p>' if note else ''}"
        f'<table class="slices"><tr><th></th>{head}</tr>{"".join(rows)}</table></section>'
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
p.note, p.facts { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin-bottom: 1em; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 3px 8px; font-size: 0.9em; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.slices td, table.slices th { padding: 2px 4px; vertical-align: top; text-align: center; }
table.slices th.slice { font-weight: normal; font-size: 0.85em; text-align: right; vertical-align: middle; }
table.slices img { display: block; background: #000; }
img.px { image-rendering: pixelated; }
div.cap { font-size: 0.75em; color: #444; }
td.scale { font-size: 0.75em; color: #444; vertical-align: middle; }
td.missing { color: #999; font-size: 0.8em; vertical-align: middle; }
"""


def _page(sections: list[str], paths: list[Path]) -> str:
    title = "Reconstruction report: " + ", ".join(p.name for p in paths)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        '<p class="note">Each slice row shares one display window (99.5th percentile of the reference, or of all '
        "methods without one). Error maps show the absolute difference of magnitudes against the reference on one "
        "scale per row, given in the reference column. SNR and SSIM are recomputed against the reference when the "
        "file holds one, otherwise read from the image meta.</p>" + "".join(sections) + "</body></html>\n"
    )


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "&mdash;"
    if math.isinf(value):
        return "&infin;"
    return f"{value:.{digits}f}"


def _esc(text: str) -> str:
    return html_lib.escape(str(text), quote=True)


def _swap_into_place(new_dir: Path, files_dir: Path) -> None:
    """Replace ``files_dir`` by the complete ``new_dir`` (a folder cannot be replaced in one rename)."""
    new_dir.chmod(0o755)
    old: Path | None = None
    if files_dir.exists() or files_dir.is_symlink():
        old = files_dir.with_name(f".{files_dir.name}.old.{os.getpid()}")
        os.replace(files_dir, old)
    try:
        os.replace(new_dir, files_dir)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, files_dir)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
