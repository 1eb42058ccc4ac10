"""The static side-by-side report: rows, columns, PNGs, error maps, metrics, escaping, named errors, atomicity."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon_plugin.errors import IsmrmrdFormatError, ReconError
from recon_plugin.images import SERIES_INDEX, make_image
from recon_plugin.kspace import SliceGeometry
from recon_plugin.metrics import snr_db, ssim
from recon_plugin.reconstructors import Result
from recon_plugin.replay.dataset import write_images
from recon_plugin.review.report import ReportError, write_report

HEADER = b'<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"></ismrmrdHeader>'
METHODS = ("zero_filled", "rgancs", "cs_wavelet", "cs_tv")
NOISE = {"zero_filled": 0.3, "rgancs": 0.1, "cs_wavelet": 0.15, "cs_tv": 0.2}


def geometry(slice_index: int) -> SliceGeometry:
    return SliceGeometry(
        position=(0.0, 0.0, float(slice_index)),
        read_dir=(1.0, 0.0, 0.0),
        phase_dir=(0.0, 1.0, 0.0),
        slice_dir=(0.0, 0.0, 1.0),
        patient_table_position=(0.0, 0.0, 0.0),
        fov=(64.0, 48.0, 1.0),
        slice=slice_index,
        contrast=0,
        repetition=0,
        measurement_uid=7,
    )


def phantom(slice_index: int, shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) < (min(shape) / 3) ** 2
    return (disc * (1.0 + 0.1 * slice_index) + 0.05).astype(np.complex64)


def exam(
    path: Path,
    *,
    slices: int = 3,
    shape: tuple[int, int] = (12, 16),
    methods: tuple[str, ...] = METHODS,
    reference: bool = True,
    method_meta: dict[str, str] | None = None,
    odd_shape: str | None = None,
) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """An ISMRMRD image file like `recon-plugin replay` writes; returns it and the magnitudes per method."""
    rng = np.random.default_rng(1)
    images: dict[int, list] = {}
    pixels: dict[str, list[np.ndarray]] = {}
    names = [*methods, "reference"] if reference else list(methods)
    for name in names:
        for s in range(slices):
            truth = phantom(s, shape)
            image = truth if name == "reference" else truth + NOISE[name] * rng.standard_normal(shape)
            if odd_shape == name:  # the whole series (one HDF5 group holds one shape)
                image = np.ones((shape[0] + 2, shape[1]), np.complex64)
            meta = {"method": (method_meta or {}).get(name, name), "seconds": 0.5 + s, "snr_db": 99.0, "ssim": 0.5}
            if name == "reference":
                meta = {"method": "reference"}
            result = Result(image=image.astype(np.complex64), meta=meta)
            img = make_image(result, geometry(s), series_index=SERIES_INDEX[name], image_index=s + 1)
            images.setdefault(SERIES_INDEX[name], []).append(img)
            pixels.setdefault(name, []).append(np.abs(img.data[0, 0]))
    return write_images(path, images, HEADER), pixels


class _Page(HTMLParser):
    """Image sources, header cells and table rows of the report."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
            self._in_th = tag == "th"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            self.rows[-1].append(text)
            if self._in_th:
                self.headers.append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(html: Path) -> _Page:
    page = _Page()
    page.feed(html.read_text(encoding="utf-8"))
    return page


def metric_rows(page: _Page) -> dict[str, list[str]]:
    """Rows of the metrics table by method label (first cell), recognised by its 7 cells."""
    return {row[0]: row for row in page.rows if len(row) == 7 and row[0] != "method"}


def test_rows_columns_pngs_and_error_maps(tmp_path):
    h5, _ = exam(tmp_path / "exam.h5", slices=3)
    html = write_report([h5], tmp_path / "out" / "report.html")
    assert html == tmp_path / "out" / "report.html"
    page = parse(html)
    for label in ("Zero-filled", "CS-WV", "CS-TV", "RGANCS", "Reference"):
        assert label in page.headers
    header_row = next(r for r in page.rows if "Zero-filled" in r and "Reference" in r)
    assert header_row[1:] == ["Zero-filled", "CS-WV", "CS-TV", "RGANCS", "Reference"]  # the column order
    for index in (1, 2, 3):
        assert f"image {index} (slice {index - 1})" in page.headers
    assert len(page.srcs) == 3 * 5 + 3 * 4  # 5 images and 4 error maps per slice
    for src in page.srcs:
        assert not src.startswith(("/", "file:")) and ".." not in src
        png = html.parent / src
        assert png.is_file() and png.parent.parent == html.parent / "report_files"
        assert Image.open(png).size == (16, 12)  # native resolution; the page enlarges it
    assert sum(src.endswith("_err.png") for src in page.srcs) == 12
    assert "pixelated" in html.read_text()
    assert not list(tmp_path.joinpath("out").glob(".*"))  # no temporary files left


def test_metrics_are_recomputed_against_the_reference(tmp_path):
    h5, pixels = exam(tmp_path / "exam.h5", slices=3)
    page = parse(write_report([h5], tmp_path / "report.html"))
    rows = metric_rows(page)
    for name, label in (("zero_filled", "Zero-filled"), ("rgancs", "RGANCS"), ("cs_tv", "CS-TV")):
        refs, ests = pixels["reference"], pixels[name]
        mean_snr = np.mean([snr_db(r, e) for r, e in zip(refs, ests, strict=True)])
        mean_ssim = np.mean([ssim(r, e) for r, e in zip(refs, ests, strict=True)])
        row = rows[label]
        assert row[1] == "3"
        assert float(row[2]) == pytest.approx(mean_snr, abs=0.006)  # not the meta's 99 dB
        assert float(row[3]) == pytest.approx(mean_ssim, abs=6e-5)
        assert float(row[4]) == pytest.approx(1.5)  # ReconSeconds 0.5, 1.5, 2.5
        assert row[5] == "vs reference"
    # the noisier method scores lower, and per-slice values sit under each image
    assert float(rows["Zero-filled"][2]) < float(rows["RGANCS"][2])
    first = snr_db(pixels["reference"][0], pixels["rgancs"][0])
    assert f"SNR {first:.2f} dB" in " ".join(" ".join(r) for r in page.rows)


def test_without_reference_no_error_maps_and_metrics_from_meta(tmp_path):
    h5, _ = exam(tmp_path / "exam.h5", slices=2, methods=("zero_filled", "rgancs"), reference=False)
    html = write_report([h5], tmp_path / "report.html")
    page = parse(html)
    assert "Reference" not in page.headers and "CS-WV" not in page.headers  # absent methods get no column
    assert len(page.srcs) == 2 * 2 and not any(src.endswith("_err.png") for src in page.srcs)
    rows = metric_rows(page)
    assert float(rows["RGANCS"][2]) == pytest.approx(99.0) and float(rows["RGANCS"][3]) == pytest.approx(0.5)
    assert rows["RGANCS"][5] == "from meta"


def test_several_exams_and_max_slices(tmp_path):
    a, _ = exam(tmp_path / "a.h5", slices=32, shape=(8, 8))
    b, _ = exam(tmp_path / "b.h5", slices=2, methods=("rgancs",))
    html = write_report([a, b], tmp_path / "report.html", max_slices=5)
    text = html.read_text()
    assert re.findall(r"<h2>(.*?)</h2>", text) == ["1. a.h5", "2. b.h5"]
    page = parse(html)
    shown = [h for h in page.headers if h.startswith("image ")]
    assert shown[:5] == [f"image {i} (slice {i - 1})" for i in (1, 9, 17, 24, 32)]  # evenly spaced, ends kept
    assert shown[5:] == ["image 1 (slice 0)", "image 2 (slice 1)"]
    assert "5 of 32 slices shown" in text
    assert metric_rows(page)["Zero-filled"][1] == "32"  # metrics cover every slice
    assert all((html.parent / src).is_file() for src in page.srcs)


def test_hostile_method_string_is_escaped(tmp_path):
    hostile = '<script>alert("x")</script>&'
    h5, _ = exam(tmp_path / "<i>exam&.h5", slices=1, method_meta={"cs_tv": hostile})
    html = write_report([h5], tmp_path / "report.html")
    text = html.read_text()
    assert "<script>" not in text and "<i>exam" not in text and "&lt;i&gt;exam&amp;.h5" in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in text
    assert hostile in parse(html).headers  # shown as text, as a column of its own


def test_missing_slice_in_one_method_is_an_empty_cell(tmp_path):
    h5, _ = exam(tmp_path / "exam.h5", slices=2, methods=("zero_filled",))
    from recon_plugin.replay.dataset import read_images

    images = read_images(h5)
    images[SERIES_INDEX["zero_filled"]] = images[SERIES_INDEX["zero_filled"]][:1]
    write_images(h5, images, HEADER)
    page = parse(write_report([h5], tmp_path / "report.html"))
    assert any("no image" in row for row in page.rows)
    assert metric_rows(page)["Zero-filled"][1] == "1"


def test_mismatched_shapes_are_a_named_error_and_nothing_is_written(tmp_path):
    h5, _ = exam(tmp_path / "exam.h5", slices=2, odd_shape="cs_wavelet")
    html = tmp_path / "out" / "report.html"
    with pytest.raises(ReportError, match=r"image 1 \(slice 0\).*different shapes.*CS-WV 14x16"):
        write_report([h5], html)
    assert not html.parent.exists() or not any(html.parent.iterdir())


def test_not_ismrmrd_is_a_named_error(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    for bad in (text, tmp_path / "missing.h5"):
        with pytest.raises(IsmrmrdFormatError):
            write_report([bad], tmp_path / "report.html")
    import h5py

    h5py.File(tmp_path / "plain.h5", "w").close()  # HDF5 but no ISMRMRD dataset
    with pytest.raises(IsmrmrdFormatError):
        write_report([tmp_path / "plain.h5"], tmp_path / "report.html")
    with pytest.raises(ReportError):
        write_report([], tmp_path / "report.html")
    assert issubclass(ReportError, ReconError)
    assert not (tmp_path / "report.html").exists()


def test_failure_keeps_the_previous_report_whole(tmp_path):
    good, _ = exam(tmp_path / "good.h5", slices=1)
    html = write_report([good], tmp_path / "report.html")
    before = html.read_text()
    bad, _ = exam(tmp_path / "bad.h5", slices=2, odd_shape="rgancs")
    with pytest.raises(ReportError):
        write_report([good, bad], html)
    assert html.read_text() == before
    assert all((html.parent / src).is_file() for src in parse(html).srcs)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # and a second successful run replaces the PNG folder without leftovers
    write_report([good], html)
    assert sorted(p.name for p in (tmp_path / "report_files").iterdir()) == ["exam01"]


def test_failure_while_drawing_leaves_no_partial_output(tmp_path, monkeypatch):
    from recon_plugin.review import report

    h5, _ = exam(tmp_path / "exam.h5", slices=3)
    html = write_report([h5], tmp_path / "report.html")
    before = html.read_text()
    pngs = sorted(p.name for p in (tmp_path / "report_files" / "exam01").iterdir())
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk full")
        return ""

    monkeypatch.setattr(report, "_slice_caption", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report([h5], html)
    assert html.read_text() == before
    assert sorted(p.name for p in (tmp_path / "report_files" / "exam01").iterdir()) == pngs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
