"""DICOM export: series/study UIDs, descriptions, geometry, rescaled pixels, header fields, refusals, real assembly."""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from recon_plugin import __version__
from recon_plugin.dicom_export import export_file, write_dicom_series
from recon_plugin.errors import InvalidInputError, NonFiniteDataError
from recon_plugin.images import SERIES_INDEX, make_image
from recon_plugin.kspace import SliceGeometry, parse_header
from recon_plugin.reconstructors import Result

SAMPLE_2D = Path(__file__).resolve().parents[1] / "sample_data" / "raw" / "brain2d_multislice.h5"
SHA = "ab" * 32


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def geometry(slice_index: int, *, oblique: bool = True, fov=(200.0, 270.0, 4.0)) -> SliceGeometry:
    rot = rotation(0.3, -0.5, 0.8) if oblique else np.eye(3)
    read, phase, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    centre = np.array([10.0, -20.0, 35.0]) + slice_index * 5.0 * normal
    as3 = lambda v: tuple(float(x) for x in v)  # noqa: E731
    return SliceGeometry(
        position=as3(centre),
        read_dir=as3(read),
        phase_dir=as3(phase),
        slice_dir=as3(normal),
        patient_table_position=(0.0, 0.0, 0.0),
        fov=fov,
        slice=slice_index,
        contrast=0,
        repetition=0,
    )


def images_for(method: str, shape=(24, 20), count: int = 3, *, oblique: bool = True, scale: float = 50.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = scale * (rng.random(shape) + 1j * rng.random(shape)).astype(np.complex64)
        meta = {"method": method, "acceleration": 5.0, "retrospective": True}
        if method == "rgancs":
            meta |= {"model": "demo-small", "weights_sha256": SHA}
        result = Result(image=image, meta=meta)
        out.append(
            make_image(result, geometry(i, oblique=oblique), series_index=SERIES_INDEX[method], image_index=i + 1)
        )
    return out


def read_series(paths: list[Path]):
    return [dcmread(p) for p in paths]


def pixel_to_patient(ds, r: float, c: float) -> np.ndarray:
    """DICOM's mapping of pixel (row r, column c) to patient coordinates."""
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return ipp + c * column_spacing * iop[:3] + r * row_spacing * iop[3:]


@pytest.fixture
def two_series():
    return {
        SERIES_INDEX["rgancs"]: images_for("rgancs"),
        SERIES_INDEX["zero_filled"]: images_for("zero_filled", seed=1),
    }


def test_study_series_uids_descriptions_and_files(tmp_path, two_series):
    written = write_dicom_series(two_series, tmp_path)
    assert sorted(written) == [1, 2]
    assert [p.relative_to(tmp_path).as_posix() for p in written[2]] == [f"002_RGANCS/IM_{i:04d}.dcm" for i in (1, 2, 3)]
    assert written[1][0].parent.name == "001_Zero-filled"
    rg, zf = read_series(written[2]), read_series(written[1])
    assert len({ds.StudyInstanceUID for ds in rg + zf}) == 1
    assert len({ds.FrameOfReferenceUID for ds in rg + zf}) == 1
    assert len({ds.SeriesInstanceUID for ds in rg}) == 1 and len({ds.SeriesInstanceUID for ds in zf}) == 1
    assert rg[0].SeriesInstanceUID != zf[0].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in rg + zf}) == 6
    for ds in rg + zf:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MR" and ds.Manufacturer == "recon_plugin" and ds.SoftwareVersions == __version__
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "M" in ds.ImageType
        assert ds.PatientName == "Anonymous" and ds.PatientID == "Anonymous"
    assert [(ds.SeriesNumber, ds.SeriesDescription) for ds in (rg[0], zf[0])] == [(2, "RGANCS"), (1, "Zero-filled")]
    assert [ds.InstanceNumber for ds in rg] == [1, 2, 3]
    assert SHA in rg[0].DerivationDescription and "demo-small" in rg[0].DerivationDescription
    assert "acceleration 5" in rg[0].DerivationDescription and f"WeightsSHA256={SHA}" in rg[0].ImageComments
    assert "Zero-filled" in zf[0].DerivationDescription


@pytest.mark.parametrize(("shape", "oblique"), [((24, 20), True), ((25, 19), True), ((16, 16), False)])
def test_geometry_maps_centre_pixel_to_position(tmp_path, shape, oblique):
    images = images_for("rgancs", shape=shape, oblique=oblique)
    for image, ds in zip(images, read_series(write_dicom_series({2: images}, tmp_path)[2]), strict=True):
        rows, cols = shape
        assert (ds.Rows, ds.Columns) == (rows, cols)
        assert np.allclose(ds.ImageOrientationPatient, [*image.read_dir, *image.phase_dir], atol=1e-7)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([270.0 / rows, 200.0 / cols])
        assert float(ds.SliceThickness) == pytest.approx(4.0)
        position = np.array(image.position, dtype=float)
        assert pixel_to_patient(ds, rows // 2, cols // 2) == pytest.approx(position, abs=1e-4)
        # any pixel: offset from the centre pixel along read (columns) and phase (rows)
        r, c = 3, cols - 2
        expected = (
            position + (c - cols // 2) * (200.0 / cols) * np.array(image.read_dir)
            + (r - rows // 2) * (270.0 / rows) * np.array(image.phase_dir)
        )  # fmt: skip
        assert pixel_to_patient(ds, r, c) == pytest.approx(expected, abs=1e-4)
        assert float(ds.SliceLocation) == pytest.approx(float(position @ np.array(image.slice_dir)), abs=1e-4)


def test_rescaled_pixels_recover_the_magnitude_with_one_scale_per_series(tmp_path, two_series):
    written = write_dicom_series(two_series, tmp_path)
    for series, paths in written.items():
        datasets = read_series(paths)
        assert len({str(ds.RescaleSlope) for ds in datasets}) == 1
        peak = max(float(np.abs(im.data).max()) for im in two_series[series])
        for image, ds in zip(two_series[series], datasets, strict=True):
            assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            stored = ds.pixel_array
            assert stored.dtype == np.uint16 and stored.shape == image.data.shape[2:]
            real = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            magnitude = np.abs(image.data[0, 0])
            assert np.max(np.abs(real - magnitude)) <= 1e-4 * peak
            assert float(ds.WindowCenter) > 0 and float(ds.WindowWidth) > 0
            assert float(ds.WindowCenter) + float(ds.WindowWidth) / 2 <= peak * 1.001


def test_complex_images_export_their_magnitude(tmp_path):
    result = Result(image=np.full((8, 6), 3 + 4j, dtype=np.complex64), meta={"method": "rgancs"})
    image = make_image(result, geometry(0), series_index=2, image_index=1, complex_output=True)
    ds = dcmread(write_dicom_series({2: [image]}, tmp_path)[2][0])
    assert ds.pixel_array * float(ds.RescaleSlope) == pytest.approx(np.full((8, 6), 5.0), rel=1e-5)


def test_small_intensities_use_linear_exact_window(tmp_path):
    ds = dcmread(write_dicom_series({2: images_for("rgancs", scale=1e-3, count=1)}, tmp_path)[2][0])
    assert 0 < float(ds.WindowWidth) < 1 and ds.VOILUTFunction == "LINEAR_EXACT"
    real = ds.pixel_array * float(ds.RescaleSlope)
    assert real.max() == pytest.approx(float(ds.RescaleSlope) * 65535, rel=1e-6)


HEADER = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
 <subjectInformation><patientName>Doe^Jane</patientName><patientWeight_kg>61.5</patientWeight_kg>
  <patientID>P123</patientID><patientBirthdate>1980-02-03</patientBirthdate><patientGender>F</patientGender>
 </subjectInformation>
 <studyInformation><studyDate>2024-05-06</studyDate><studyTime>12:34:56.5</studyTime><studyID>S1</studyID>
  <accessionNumber>42</accessionNumber><studyDescription>Brain</studyDescription>
  <studyInstanceUID>1.2.826.0.1.3680043.8.498.1</studyInstanceUID></studyInformation>
 <measurementInformation><patientPosition>FFS</patientPosition><protocolName>t1_flash</protocolName>
 </measurementInformation>
 <experimentalConditions><H1resonanceFrequency_Hz>63860000</H1resonanceFrequency_Hz></experimentalConditions>
 <encoding><encodedSpace><matrixSize><x>20</x><y>24</y><z>1</z></matrixSize>
  <fieldOfView_mm><x>200</x><y>270</y><z>4</z></fieldOfView_mm></encodedSpace>
  <reconSpace><matrixSize><x>20</x><y>24</y><z>1</z></matrixSize>
  <fieldOfView_mm><x>200</x><y>270</y><z>4</z></fieldOfView_mm></reconSpace>
  <encodingLimits/><trajectory>cartesian</trajectory></encoding>
 <sequenceParameters><TR>250</TR><TE>3</TE><flipAngle_deg>8</flipAngle_deg><sequence_type>Flash</sequence_type>
 </sequenceParameters>
</ismrmrdHeader>"""


def test_header_fields(tmp_path, two_series):
    written = write_dicom_series(two_series, tmp_path, header=parse_header(HEADER))
    ds = dcmread(written[1][0])
    assert ds.PatientName == "Doe^Jane" and ds.PatientID == "P123" and float(ds.PatientWeight) == 61.5
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19800203", "F")
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert (ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber) == ("20240506", "123456.500000", "S1", "42")
    assert ds.StudyDescription == "Brain" and ds.ProtocolName == "t1_flash" and ds.PatientPosition == "FFS"
    assert float(ds.ImagingFrequency) == pytest.approx(63.86)
    assert float(ds.MagneticFieldStrength) == pytest.approx(1.5)  # from the frequency: no field strength given
    assert (float(ds.RepetitionTime), float(ds.EchoTime), float(ds.FlipAngle)) == (250.0, 3.0, 8.0)
    assert ds.ScanningSequence == "GR" and ds.MRAcquisitionType == "2D"


def test_explicit_study_and_patient_override_the_header(tmp_path, two_series):
    uid = "1.2.826.0.1.3680043.8.498.77"
    written = write_dicom_series(
        two_series, tmp_path, header=HEADER.encode(), study_uid=uid, patient_name="Test^Pat", patient_id="X9"
    )
    for ds in read_series(written[1] + written[2]):
        assert (ds.StudyInstanceUID, ds.PatientName, ds.PatientID) == (uid, "Test^Pat", "X9")
    with pytest.raises(InvalidInputError, match="not a valid DICOM UID"):
        write_dicom_series(two_series, tmp_path / "bad", study_uid="not-a-uid")


def test_descriptions_for_unknown_and_missing_methods(tmp_path):
    unknown = images_for("rgancs", count=1)
    unknown[0].meta["Method"] = "my_method"
    anonymous = images_for("zero_filled", count=1)
    del anonymous[0].meta["Method"]
    written = write_dicom_series({7: unknown, 1: anonymous}, tmp_path)
    assert dcmread(written[7][0]).SeriesDescription == "my_method"
    assert dcmread(written[1][0]).SeriesDescription == "Zero-filled"  # from the fixed series index


def test_refusals(tmp_path, two_series):
    with pytest.raises(InvalidInputError, match="no images"):
        write_dicom_series({}, tmp_path)
    with pytest.raises(InvalidInputError, match="no images"):
        write_dicom_series({2: []}, tmp_path)
    bad = images_for("rgancs", count=2)
    bad[1].data[0, 0, 3, 4] = np.nan
    with pytest.raises(NonFiniteDataError, match="series 2 image 2"):
        write_dicom_series({1: two_series[1], 2: bad}, tmp_path)
    assert not any(tmp_path.iterdir())  # checked before anything is written
    duplicate = images_for("rgancs", count=2)
    duplicate[1].image_index = 1
    with pytest.raises(InvalidInputError, match="two images with image_index 1"):
        write_dicom_series({2: duplicate}, tmp_path)
    phase = images_for("rgancs", count=1)
    phase[0].image_type = ismrmrd.IMTYPE_PHASE
    with pytest.raises(InvalidInputError, match="phase image"):
        write_dicom_series({2: phase}, tmp_path)
    no_geometry = ismrmrd.Image.from_array(np.ones((1, 1, 4, 4), dtype=np.float32))
    no_geometry.field_of_view[:] = (10.0, 10.0, 1.0)
    with pytest.raises(InvalidInputError, match="no valid geometry"):
        write_dicom_series({2: [no_geometry]}, tmp_path)
    no_fov = images_for("rgancs", count=1)
    no_fov[0].field_of_view[:] = (0.0, 0.0, 0.0)
    with pytest.raises(InvalidInputError, match="field_of_view"):
        write_dicom_series({2: no_fov}, tmp_path)
    volume = ismrmrd.Image.from_array(np.ones((1, 3, 4, 4), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="3D volume"):
        write_dicom_series({2: [volume]}, tmp_path)


def test_existing_series_folder_needs_overwrite(tmp_path, two_series):
    first = write_dicom_series(two_series, tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dicom_series(two_series, tmp_path)
    second = write_dicom_series({2: two_series[2][:1]}, tmp_path, overwrite=True)
    assert sorted(second[2][0].parent.glob("*.dcm")) == second[2]  # stale instances 2 and 3 removed
    assert dcmread(second[2][0]).SOPInstanceUID != dcmread(first[1][0]).SOPInstanceUID


@pytest.fixture(scope="module")
def sample_exam():
    """The 2D multi-slice sample through the real assembly path (zero-filled, fully sampled)."""
    from recon_plugin.pipeline import GadgetSettings, assemble, build_reconstructor, reconstruct_exam
    from recon_plugin.replay import read_raw

    raw = read_raw(SAMPLE_2D)
    settings = GadgetSettings.from_properties("zero_filled", {})
    header = parse_header(raw.header_xml)
    images = list(
        reconstruct_exam(assemble(header, raw.acquisitions, settings), build_reconstructor(settings), settings)
    )
    slice_positions: dict[int, np.ndarray] = {}
    for acq in raw.acquisitions:
        if not acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            slice_positions.setdefault(int(acq.idx.slice), np.array(acq.position, dtype=float))
    return raw, images, slice_positions


def test_real_multislice_exam_positions_follow_the_acquisitions(tmp_path, sample_exam):
    from recon_plugin.replay import write_images

    raw, images, slice_positions = sample_exam
    h5 = write_images(tmp_path / "images.h5", {1: images}, raw.header_xml)
    written = export_file(h5, tmp_path / "dicom")
    datasets = read_series(written[1])
    assert len(datasets) == len(slice_positions) == 4
    assert datasets[0].SeriesDescription == "Zero-filled" and datasets[0].ProtocolName == "brain2d"
    assert datasets[0].PatientPosition == "HFS" and float(datasets[0].MagneticFieldStrength) == 3.0
    normal = np.cross(*(np.array(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3)))
    by_slice = {int(im.slice): ds for im, ds in zip(images, datasets, strict=True)}
    first = min(by_slice)
    for index, ds in by_slice.items():
        shift = np.array(ds.ImagePositionPatient, dtype=float) - np.array(by_slice[first].ImagePositionPatient, float)
        expected = slice_positions[index] - slice_positions[first]
        assert shift == pytest.approx(expected, abs=1e-4)  # the slices differ by the acquisitions' shifts ...
        assert float(shift @ normal) == pytest.approx(float(expected @ normal), abs=1e-4)  # ... along the normal
        assert float(ds.SliceLocation) == pytest.approx(float(slice_positions[index] @ normal), abs=1e-4)
        rows, cols = ds.Rows, ds.Columns
        assert pixel_to_patient(ds, rows // 2, cols // 2) == pytest.approx(slice_positions[index], abs=1e-4)
    assert [float(v) for v in datasets[0].PixelSpacing] == pytest.approx([224.0 / 128, 196.0 / 112])
    assert float(datasets[0].SliceThickness) == 3.0
