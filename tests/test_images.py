"""ISMRMRD images from results: layout, geometry, series, meta, round trip."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from recon_plugin.images import SERIES_INDEX, make_image
from recon_plugin.kspace import SliceGeometry
from recon_plugin.reconstructors import Result

GEOMETRY = SliceGeometry(
    position=(1.5, -2.0, 30.0),
    read_dir=(0.0, 0.0, 1.0),
    phase_dir=(0.0, 1.0, 0.0),
    slice_dir=(-1.0, 0.0, 0.0),
    patient_table_position=(0.0, 0.0, -1200.0),
    fov=(120.0, 240.0, 3.0),
    slice=7,
    contrast=1,
    repetition=2,
    partition=7,
    acquisition_time_stamp=1234,
    measurement_uid=99,
)


def result(rows: int = 5, cols: int = 3) -> Result:
    rng = np.random.default_rng(0)
    image = (rng.standard_normal((rows, cols)) + 1j * rng.standard_normal((rows, cols))).astype(np.complex64)
    meta = {
        "method": "rgancs",
        "model": "m",
        "weights_sha256": "ab" * 32,
        "acceleration": 5.0,
        "dc_residual": 0.0123,
        "seconds": 0.5,
        "snr_db": 21.5,
        "slice": 7,
    }
    return Result(image=image, meta=meta)


def test_magnitude_image_layout_and_geometry():
    res = result()
    img = make_image(res, GEOMETRY, series_index=SERIES_INDEX["rgancs"], image_index=3)
    assert img.matrix_size == (3, 5, 1)  # (columns, rows, 1): not transposed
    assert img.data.shape == (1, 1, 5, 3)
    assert np.allclose(img.data[0, 0], np.abs(res.image))
    assert img.data_type == ismrmrd.DATATYPE_FLOAT and img.image_type == ismrmrd.IMTYPE_MAGNITUDE
    assert tuple(img.position) == pytest.approx(GEOMETRY.position)
    assert tuple(img.read_dir) == GEOMETRY.read_dir and tuple(img.phase_dir) == GEOMETRY.phase_dir
    assert tuple(img.slice_dir) == GEOMETRY.slice_dir
    assert tuple(img.patient_table_position) == GEOMETRY.patient_table_position
    assert tuple(img.field_of_view) == pytest.approx(GEOMETRY.fov)
    assert (img.slice, img.contrast, img.repetition) == (7, 1, 2)
    assert (img.image_series_index, img.image_index) == (2, 3)
    assert img.acquisition_time_stamp == 1234 and img.measurement_uid == 99


def test_meta_attributes():
    img = make_image(result(), GEOMETRY, series_index=2, image_index=1, extra_meta={"Site": "x"})
    meta = img.meta
    assert meta["Method"] == "rgancs" and meta["ModelName"] == "m"
    assert meta["WeightsSHA256"] == "ab" * 32
    assert float(meta["Acceleration"]) == 5.0
    assert float(meta["DataConsistencyResidual"]) == pytest.approx(0.0123)
    assert float(meta["ReconSeconds"]) == 0.5 and float(meta["SNR_dB"]) == 21.5
    assert meta["Site"] == "x"
    assert "slice" not in meta  # labels are header fields, not meta


def test_complex_output_and_round_trip():
    res = result(4, 6)
    img = make_image(res, GEOMETRY, series_index=2, image_index=1, complex_output=True)
    assert img.data_type == ismrmrd.DATATYPE_CXFLOAT and img.image_type == ismrmrd.IMTYPE_COMPLEX
    back = ismrmrd.Image.from_bytes(img.to_bytes())
    assert np.array_equal(back.data[0, 0], res.image)
    assert back.meta["Method"] == "rgancs"
    assert tuple(back.position) == pytest.approx(GEOMETRY.position) and back.matrix_size == (6, 4, 1)
