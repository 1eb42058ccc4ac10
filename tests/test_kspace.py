"""Acquisition assembly: whitening, oversampling, 2D/3D placement, masks, retro undersampling, bad input."""

from __future__ import annotations

import copy

import ismrmrd
import numpy as np
import pytest
from raw_helpers import tiny_2d, tiny_3d

from recon_plugin import sample_raw as sr
from recon_plugin.errors import EncodingError, IsmrmrdFormatError, NonFiniteDataError
from recon_plugin.kspace import Assembler, RetroSettings
from recon_plugin.masks import radial_view_ordered
from recon_plugin.metrics import snr_db


@pytest.fixture(scope="module")
def scan3d() -> sr.RawScan:
    return sr.build_raw(tiny_3d())


@pytest.fixture(scope="module")
def scan2d() -> sr.RawScan:
    return sr.build_raw(tiny_2d())


def assemble(scan: sr.RawScan, acqs=None, **kw) -> Assembler:
    asm = Assembler(scan.header.toXML(), **kw)
    for a in scan.acquisitions if acqs is None else acqs:
        asm.add(a)
    return asm


def whitened_sense(problem, maps: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Least-squares coil combination with the true (whitened) maps of a fully sampled problem."""
    from recon_plugin.physics import ifft2c

    coil_images = ifft2c(problem.kspace)
    s = np.einsum("ij,j...->i...", whiten, maps)
    return (s.conj() * coil_images).sum(0) / np.maximum((np.abs(s) ** 2).sum(0), 1e-12)


def test_3d_planes_recover_truth(scan3d):
    asm = assemble(scan3d)
    items = asm.problems()
    sim = scan3d.simulation
    nz, ny, nx = sim.truth.shape
    assert len(items) == nx  # one ky-kz problem per readout position, oversampling removed
    whiten = asm.whitening_matrix()
    for item in items:
        x = item.geometry.partition
        p = item.problem
        assert p.kspace.shape == (4, ny, nz) and p.mask.all() and not item.retrospective
        truth = sim.truth[:, :, x].T  # [ky, kz] plane
        image = whitened_sense(p, sim.maps[:, :, :, x].transpose(0, 2, 1), whiten)
        assert snr_db(truth, image) > 28  # measured about 33 dB (noise, not assembly error)


def test_whitening_makes_noise_white(scan3d):
    psi = scan3d.simulation.noise_covariance
    noise = sr.correlated_noise(psi, (40_000,), np.random.default_rng(5))
    asm = Assembler(scan3d.header.toXML())
    for chunk in np.split(noise, 200, axis=1):
        acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(chunk))
        acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        asm.add(acq)
    whiten = asm.whitening_matrix()
    assert np.allclose(whiten @ psi @ whiten.conj().T, np.eye(4), atol=0.03)
    correlation = psi / np.sqrt(np.outer(np.diag(psi), np.diag(psi)).real)
    assert np.abs(correlation - np.eye(4)).max() > 0.3  # the raw noise was strongly correlated


def test_acquisition_order_does_not_matter(scan3d):
    shuffled = list(scan3d.acquisitions)
    np.random.default_rng(0).shuffle(shuffled)
    a = assemble(scan3d).problems()
    b = assemble(scan3d, shuffled).problems()
    for pa, pb in zip(a, b, strict=True):
        assert np.allclose(pa.problem.kspace, pb.problem.kspace, atol=1e-6)


def test_mask_is_read_from_the_lines_that_arrived():
    sim = tiny_3d()
    nz, ny, _ = sim.truth.shape
    mask = radial_view_ordered((ny, nz), 3.0, seed=2, calib=8)
    scan = sr.build_raw(sim, mask=mask)
    items = assemble(scan, retro=RetroSettings(acceleration=5)).problems()  # retro ignored: not fully sampled
    for item in items:
        assert np.array_equal(item.problem.mask, mask.mask)
        assert item.problem.reference is None and not item.retrospective
        assert np.all(item.problem.kspace[:, ~mask.mask] == 0)


def test_retrospective_undersampling_keeps_reference(scan3d):
    items = assemble(scan3d, retro=RetroSettings(acceleration=4, calib=8)).problems()
    masks = {item.problem.mask.tobytes() for item in items}
    assert len(masks) == 1  # the same mask on every plane
    p = items[3].problem
    assert abs(p.acceleration - 4) / 4 < 0.02 and items[3].retrospective
    assert p.reference is not None and p.reference.shape == p.shape


def test_2d_multislice(scan2d):
    asm = assemble(scan2d, retro=RetroSettings(acceleration=2, calib=8))
    items = asm.problems()
    sim = scan2d.simulation
    slices, ny, nx = sim.truth.shape
    assert [i.geometry.slice for i in items] == list(range(slices))
    positions = [i.geometry.position for i in items]
    assert len(set(positions)) == slices
    for item in items:
        p = item.problem
        assert p.shape == (ny, nx)
        rows = p.mask.all(axis=1)
        assert np.array_equal(p.mask, np.repeat(rows[:, None], nx, axis=1))  # whole ky lines
        assert item.geometry.partition == -1
        assert item.geometry.read_dir == tuple(float(v) for v in scan2d.acquisitions[-1].read_dir)


def test_geometry_of_3d_planes(scan3d):
    items = assemble(scan3d).problems()
    head = scan3d.acquisitions[-1]
    read = np.array(head.read_dir)
    g0, g1 = items[0].geometry, items[1].geometry
    step = np.array(g1.position) - np.array(g0.position)
    dx = scan3d.simulation.geometry.voxel_mm[0]
    assert np.allclose(step, dx * read, atol=1e-4)  # planes step along the readout by one voxel
    assert g0.read_dir == tuple(float(v) for v in head.slice_dir)  # columns run along kz
    assert g0.phase_dir == tuple(float(v) for v in head.phase_dir)  # rows along ky
    assert np.allclose(np.cross(g0.read_dir, g0.phase_dir), g0.slice_dir)
    assert g0.fov[2] == pytest.approx(dx)


def test_contrasts_repetitions_and_averages(scan2d):
    acqs = []
    for a in scan2d.acquisitions:
        acqs.append(a)
        if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            for contrast, repetition in ((1, 0), (0, 1)):
                b = copy.deepcopy(a)
                b.idx.contrast, b.idx.repetition = contrast, repetition
                acqs.append(b)
    avg = copy.deepcopy(acqs[-1])
    avg.data[:] = avg.data * 3  # a second average of this line: the assembly averages, (1 + 3) / 2 = 2
    avg.idx.average = 1
    plain = assemble(scan2d, acqs).problems()
    items = assemble(scan2d, [*acqs, avg]).problems()
    slices = scan2d.simulation.truth.shape[0]
    assert len(items) == 3 * slices
    keys = [(i.geometry.slice, i.geometry.contrast, i.geometry.repetition) for i in items]
    assert len(set(keys)) == 3 * slices
    where = keys.index((avg.idx.slice, avg.idx.contrast, avg.idx.repetition))
    ny = items[where].problem.shape[0]
    row = (
        avg.idx.kspace_encode_step_1 - scan2d.header.encoding[0].encodingLimits.kspace_encoding_step_1.center + ny // 2
    )
    assert np.allclose(items[where].problem.kspace[:, row], 2 * plain[where].problem.kspace[:, row], atol=1e-5)
    others = np.delete(np.arange(ny), row)
    assert np.allclose(items[where].problem.kspace[:, others], plain[where].problem.kspace[:, others])


def test_bad_headers():
    sim = tiny_2d()
    scan = sr.build_raw(sim)
    with pytest.raises(IsmrmrdFormatError):
        Assembler(b"<not-ismrmrd/>")
    header = copy.deepcopy(scan.header)
    header.encoding[0].trajectory = sr.xsd.trajectoryType.RADIAL
    with pytest.raises(EncodingError, match="radial"):
        Assembler(header.toXML())
    header = copy.deepcopy(scan.header)
    header.encoding[0].encodingLimits.kspace_encoding_step_1 = None
    with pytest.raises(EncodingError, match="encodingLimits"):
        Assembler(header.toXML())
    header = copy.deepcopy(scan.header)
    header.encoding = []
    with pytest.raises(EncodingError, match="no <encoding>"):
        Assembler(header)


def test_bad_acquisitions(scan2d):
    data = [a for a in scan2d.acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    asm = Assembler(scan2d.header.toXML())
    bad = copy.deepcopy(data[0])
    bad.data[0, 3] = np.nan
    with pytest.raises(NonFiniteDataError, match="NaN"):
        asm.add(bad)
    outside = copy.deepcopy(data[0])
    outside.idx.kspace_encode_step_1 = 10_000
    with pytest.raises(EncodingError, match="outside"):
        asm.add(outside)
    traj = ismrmrd.Acquisition.from_array(data[0].data, trajectory=np.zeros((data[0].number_of_samples, 2), np.float32))
    with pytest.raises(EncodingError, match="trajectory"):
        asm.add(traj)
    asm.add(data[0])
    fewer = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data[1].data[:2]))
    fewer.center_sample = data[1].center_sample
    with pytest.raises(IsmrmrdFormatError, match="channels"):
        asm.add(fewer)
    with pytest.raises(IsmrmrdFormatError, match="no imaging"):
        Assembler(scan2d.header.toXML()).problems()


def test_header_matrix_beyond_bounds_is_refused_before_allocation():
    from recon_plugin.kspace import MAX_ENCODED_POINTS

    scan = sr.build_raw(tiny_2d())
    for x, y, z in ((65535, 65535, 1), (256, 256, 5000), (8192, 4096, 8)):
        header = copy.deepcopy(scan.header)
        space = header.encoding[0].encodedSpace.matrixSize
        space.x, space.y, space.z = x, y, z
        header.encoding[0].reconSpace.matrixSize.x = min(x, header.encoding[0].reconSpace.matrixSize.x)
        with pytest.raises(EncodingError, match="refused before allocating"):
            Assembler(header.toXML())
    assert MAX_ENCODED_POINTS < 8192 * 4096 * 8


def test_a_huge_channel_count_is_refused_before_the_buffer(scan2d, monkeypatch):
    from recon_plugin import kspace

    data = [a for a in scan2d.acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    monkeypatch.setenv("RECON_MAX_BUFFER", "1000")  # far below one slice buffer of this exam
    with pytest.raises(kspace.MemoryLimitError, match="operator's cap"):
        Assembler(scan2d.header.toXML()).add(data[0])


def test_lines_that_disagree_with_the_header_are_refused(scan2d, scan3d):
    data = [a for a in scan2d.acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    asm = Assembler(scan2d.header.toXML())
    short = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data[0].data[:, :100]))
    short.idx.kspace_encode_step_1 = data[0].idx.kspace_encode_step_1
    short.center_sample = 128  # the centre is not in its 100 samples: it would land at kx 0..99
    with pytest.raises(EncodingError, match="centre lies outside its data"):
        asm.add(short)
    kz = copy.deepcopy(data[0])
    kz.idx.kspace_encode_step_2 = 3
    with pytest.raises(EncodingError, match="kspace_encode_step_2 = 3 in a 2D exam"):
        asm.add(kz)
    limits = scan2d.header.encoding[0].encodingLimits.kspace_encoding_step_1
    header = copy.deepcopy(scan2d.header)
    header.encoding[0].encodingLimits.kspace_encoding_step_1.maximum = limits.maximum - 2
    narrow = Assembler(header.toXML())
    beyond = next(a for a in data if a.idx.kspace_encode_step_1 == limits.maximum)
    with pytest.raises(EncodingError, match="outside the header's encodingLimits"):
        narrow.add(beyond)


def test_a_2d_exam_with_a_3d_header_is_named(scan2d):
    header = copy.deepcopy(scan2d.header)
    header.encoding[0].encodedSpace.matrixSize.z = 4
    header.encoding[0].reconSpace.matrixSize.z = 4
    header.encoding[0].encodingLimits.kspace_encoding_step_2 = sr.xsd.limitType(minimum=0, maximum=3, center=0)
    asm = Assembler(header.toXML())
    for a in scan2d.acquisitions:
        asm.add(a)
    with pytest.raises(EncodingError, match="2D exam with a 3D header"):
        asm.problems()
