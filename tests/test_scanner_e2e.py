"""End to end: sample ISMRMRD files replayed through every protocol's real gadgets over loopback,
and bad input that must end in a named error, within seconds, with no output file."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from raw_helpers import tiny_2d

from recon_plugin import sample_raw as sr
from recon_plugin.errors import GadgetFailedError, IsmrmrdFormatError
from recon_plugin.model import load_bundle
from recon_plugin.pipeline import default_weights
from recon_plugin.replay import read_images, read_raw, replay_file

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "sample_data" / "raw"
PROTOCOLS = ROOT / "protocols"


def replay(raw: Path, protocol: str | Path, out: Path, **kw):
    protocol = protocol if isinstance(protocol, Path) else PROTOCOLS / protocol
    return replay_file(raw, protocol, out, progress=False, timeout=60, **kw)


def data_acquisitions(path: Path) -> list[ismrmrd.Acquisition]:
    return [a for a in read_raw(path).acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]


@pytest.mark.parametrize(
    ("protocol", "series", "method"), [("zero_filled.xml", 1, "zero_filled"), ("rgancs.xml", 2, "rgancs")]
)
def test_prospective_3d(tmp_path, protocol, series, method):
    raw = RAW / "brain3d_radial5x.h5"
    summary = replay(raw, protocol, tmp_path / "out.h5")
    images = read_images(tmp_path / "out.h5")
    assert list(images) == [series]
    imgs = images[series]
    assert len(imgs) == 32 and summary.images == 32  # one ky-kz plane per readout position
    assert all(im.matrix_size == (40, 80, 1) for im in imgs)  # (kz columns, ky rows)
    acq = data_acquisitions(raw)[0]
    first, second = imgs[0], imgs[1]
    assert np.allclose(np.subtract(second.position, first.position), 3.0 * np.array(acq.read_dir), atol=1e-3)
    assert tuple(first.read_dir) == tuple(acq.slice_dir) and tuple(first.phase_dir) == tuple(acq.phase_dir)
    assert tuple(first.patient_table_position) == pytest.approx(tuple(acq.patient_table_position))
    assert tuple(first.field_of_view) == pytest.approx((120.0, 240.0, 3.0))
    assert [im.image_index for im in imgs] == list(range(1, 33))
    meta = first.meta
    assert meta["Method"] == method and float(meta["Acceleration"]) == pytest.approx(5.0)
    assert meta["Retrospective"] == "False" and "SNR_dB" not in meta
    if method == "rgancs":
        # the gadget's default for this device and CPU class (the rgancs protocol sets no weights or model)
        assert meta["ModelName"] == load_bundle(default_weights()).name and len(meta["WeightsSHA256"]) == 64
        assert float(meta["DataConsistencyResidual"]) < 0.5
    assert np.isfinite(np.concatenate([im.data.ravel() for im in imgs])).all()


@pytest.mark.parametrize(("protocol", "series"), [("zero_filled_retro5x.xml", 1), ("rgancs_retro5x.xml", 2)])
def test_retrospective_2d_multislice(tmp_path, protocol, series):
    raw = RAW / "brain2d_multislice.h5"
    summary = replay(raw, protocol, tmp_path / "out.h5", png_dir=tmp_path / "png")
    imgs = read_images(tmp_path / "out.h5")[series]
    assert len(imgs) == 4 and all(im.matrix_size == (112, 128, 1) for im in imgs)
    acqs = data_acquisitions(raw)
    by_slice = {a.idx.slice: a for a in acqs}
    for im in imgs:
        assert tuple(im.position) == pytest.approx(tuple(by_slice[im.slice].position))
        assert tuple(im.read_dir) == pytest.approx(tuple(by_slice[im.slice].read_dir))
        assert float(im.meta["SNR_dB"]) > 10 and 0 < float(im.meta["SSIM"]) <= 1
        assert abs(float(im.meta["Acceleration"]) - 5) < 0.2
    assert tuple(imgs[0].field_of_view) == pytest.approx((196.0, 224.0, 3.0))
    assert summary.series[0].mean_snr_db == pytest.approx(np.mean([float(i.meta["SNR_dB"]) for i in imgs]))
    assert len(list((tmp_path / "png").glob("*.png"))) == 4


def test_side_by_side_compare_protocol(tmp_path):
    summary = replay(RAW / "brain3d_fully_sampled.h5", "compare_retro5x.xml", tmp_path / "out.h5")
    images = read_images(tmp_path / "out.h5")
    assert sorted(images) == [1, 2, 9]  # zero-filled, RGANCS, reference
    assert all(len(v) == 32 for v in images.values())
    zf = {im.image_index: im for im in images[1]}
    for im in images[2]:  # same geometry for the same plane across methods
        assert tuple(im.position) == pytest.approx(tuple(zf[im.image_index].position))
    snr = {s.series: s.mean_snr_db for s in summary.series}
    assert snr[1] is not None and snr[2] is not None and snr[9] is None
    assert images[9][0].meta["Method"] == "reference"
    timings = {t.source: t for t in summary.timings}  # one per parallel branch, each with its own clocks
    assert sorted(timings) == ["rgancs", "zero_filled"]
    assert timings["rgancs"].series == (2,) and timings["zero_filled"].series == (1, 9)  # zf sends the reference
    assert "network" in timings["rgancs"].stages and "zero_filled" in timings["zero_filled"].stages
    for t in timings.values():
        assert t.acquisition_to_last_image is not None and 0 <= t.acquisition_to_last_image <= summary.seconds
        assert min(t.stages.values()) >= 0 and t.stages["coil_maps"] > 0


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny_scan() -> sr.RawScan:
    return sr.build_raw(tiny_2d())


def write(tmp_path: Path, header, acqs) -> Path:
    return sr.write_ismrmrd(tmp_path / "in.h5", header, acqs)


def expect_failure(tmp_path: Path, raw: Path, error: type, match: str, protocol: str | Path = "rgancs.xml"):
    out = tmp_path / "out.h5"
    start = time.monotonic()
    with pytest.raises(error, match=match):
        replay(raw, protocol, out)
    assert time.monotonic() - start < 30
    assert not out.exists()
    assert not list(tmp_path.glob(".out.h5*"))  # no temporary left behind either


def test_truncated_file(tmp_path, tiny_scan):
    raw = write(tmp_path, tiny_scan.header, tiny_scan.acquisitions)
    raw.write_bytes(raw.read_bytes()[: raw.stat().st_size // 2])
    expect_failure(tmp_path, raw, IsmrmrdFormatError, "truncated|corrupt|cannot be read|not")


def test_not_hdf5(tmp_path):
    raw = tmp_path / "in.h5"
    raw.write_text("this is not HDF5")
    expect_failure(tmp_path, raw, IsmrmrdFormatError, ".")


def test_header_without_encoding(tmp_path, tiny_scan):
    header = copy.deepcopy(tiny_scan.header)
    header.encoding = []
    raw = write(tmp_path, header, tiny_scan.acquisitions)
    expect_failure(tmp_path, raw, (GadgetFailedError, IsmrmrdFormatError), "encoding")


def test_non_cartesian(tmp_path, tiny_scan):
    header = copy.deepcopy(tiny_scan.header)
    header.encoding[0].trajectory = sr.xsd.trajectoryType.SPIRAL
    raw = write(tmp_path, header, tiny_scan.acquisitions)
    expect_failure(tmp_path, raw, GadgetFailedError, "EncodingError.*spiral")


def test_nan_in_the_data(tmp_path, tiny_scan):
    acqs = copy.deepcopy(tiny_scan.acquisitions)
    acqs[len(acqs) // 2].data[1, 2] = np.nan
    raw = write(tmp_path, tiny_scan.header, acqs)
    expect_failure(tmp_path, raw, GadgetFailedError, "NonFiniteDataError", "zero_filled.xml")


def test_gadget_fails_mid_stream(tmp_path, tiny_scan):
    acqs = copy.deepcopy(tiny_scan.acquisitions)
    acqs[len(acqs) // 2].idx.kspace_encode_step_1 = 5000  # a line outside the matrix, mid-stream
    raw = write(tmp_path, tiny_scan.header, acqs)
    expect_failure(tmp_path, raw, GadgetFailedError, "EncodingError.*outside", "compare_retro5x.xml")


def test_missing_weights(tmp_path, tiny_scan):
    raw = write(tmp_path, tiny_scan.header, tiny_scan.acquisitions)
    protocol = (
        (PROTOCOLS / "rgancs.xml")
        .read_text()
        .replace(
            '<property name="weights" value=""/>', f'<property name="weights" value="{tmp_path / "no_such_bundle"}"/>'
        )
    )
    path = tmp_path / "p.xml"
    path.write_text(protocol)
    expect_failure(tmp_path, raw, GadgetFailedError, "BundleError.*no model bundle", path)
