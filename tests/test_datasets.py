"""Training data sets: raw ISMRMRD files, image arrays, image folders for super-resolution."""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image
from raw_helpers import tiny_2d, tiny_3d

from recon_plugin import sample_raw as sr
from recon_plugin.errors import InvalidInputError
from recon_plugin.kspace import Assembler
from recon_plugin.masks import radial_view_ordered
from recon_plugin.model.recurrent import ModelConfig, RecurrentProximalNet
from recon_plugin.reconstructors.rgancs import robust_scale
from recon_plugin.replay.dataset import read_raw
from training.datasets import (
    EmptyDatasetError,
    ImageArraySlices,
    ImageFolderSR,
    ImageTooSmallError,
    NotFullySampledError,
    RawFileSlices,
    UnreadableImageError,
    extra_training_slices,
    siat_blocks,
)

SIAT = SHARED_DATA / "siat_brain_complex" / "images_lsq001-160.npy"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().norm() / b.abs().norm())


def assert_normalised(batch) -> None:
    assert torch.allclose(robust_scale(batch.op.adjoint(batch.y)), torch.ones(len(batch.y)), rtol=1e-4)


def blobs(n: int = 4, ny: int = 32, nx: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth positive magnitude images."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.3, 0.6)
        out.append(((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) * 1.0 + 0.2 * ((yy**2 + xx**2) < 0.8))
    return np.array(out, dtype=np.float32)


# --------------------------------------------------------------------------- image arrays


@pytest.mark.parametrize("coils", [1, 4])
def test_arrays_consistent_and_normalised(coils: int) -> None:
    ds = ImageArraySlices(blobs(), coils=coils, acceleration=4, seed=1)
    batch = ds.sample(3)
    assert batch.y.shape == (3, coils, 32, 32) and batch.y.dtype == torch.complex64
    assert batch.x.shape == (3, 32, 32) and batch.x.dtype == torch.complex64
    assert rel(batch.op.forward(batch.x), batch.y) < 1e-5
    assert_normalised(batch)


def test_arrays_reproducible_masks_and_augmentation() -> None:
    a, b = ImageArraySlices(blobs(), seed=3).sample(4), ImageArraySlices(blobs(), seed=3).sample(4)
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    c = ImageArraySlices(blobs(), seed=4).sample(4)
    assert not torch.equal(a.y, c.y)
    masks = a.op.mask
    assert not torch.equal(masks[0], masks[1])
    fixed = ImageArraySlices(blobs(), per_sample_masks=False, seed=3).sample(3).op.mask
    assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[1], fixed[2])
    rect = ImageArraySlices(blobs(ny=32, nx=24), augment=True, seed=0)
    for _ in range(4):
        assert rect.sample(2).x.shape == (2, 32, 24)


def test_arrays_noise_level_and_crop() -> None:
    ds = ImageArraySlices(blobs(2), noise=0.1, mask_family="poisson", acceleration=2, augment=False, seed=0)
    batch = ds.batch([0, 1])
    resid = batch.y - batch.op.forward(batch.x)
    measured = resid.abs().pow(2).sum((1, 2, 3)) / batch.op.mask.sum((1, 2))
    rms = batch.x.abs().pow(2).mean((1, 2))
    assert torch.allclose((measured / rms).sqrt(), torch.full((2,), 0.1), rtol=0.15)
    cropped = ImageArraySlices(blobs(2, 40, 36), crop=24, random_crop=True, seed=0).sample(2)
    assert cropped.x.shape == (2, 24, 24)
    padded = ImageArraySlices(blobs(2, 20, 20), crop=(24, 28), pad=True, augment=False, seed=0).sample(2)
    assert padded.x.shape == (2, 24, 28) and float(padded.x[:, 0].abs().max()) == 0.0
    with pytest.raises(ImageTooSmallError, match="smaller than the 40x40 crop"):
        ImageArraySlices(blobs(2), crop=40)


def test_arrays_files_complex_npy_nifti_and_unreadable(tmp_path: Path) -> None:
    cplx = (blobs(3) * np.exp(1j * 0.3)).astype(np.complex64)
    np.save(tmp_path / "c.npy", cplx)
    ds = ImageArraySlices(tmp_path / "c.npy", slices=[2], augment=False, seed=0)
    batch = ds.sample(1)
    assert_normalised(batch)
    ratio = batch.x[0] / torch.from_numpy(cplx[2])
    inside = torch.from_numpy(np.abs(cplx[2]) > 0)
    assert torch.allclose(ratio[inside], ratio[inside][0].expand(int(inside.sum())), rtol=1e-4)  # same image, scaled
    volume = np.moveaxis(blobs(3, 32, 28), 0, 2)  # slices along the last axis
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    nii = ImageArraySlices(tmp_path / "v.nii.gz", axis=2, seed=0, augment=False)
    assert len(nii) == 3 and nii.sample(2).x.shape == (2, 32, 28)
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    for bad in ("bad.npy", "bad.nii.gz", "missing.npy", "c.txt"):
        with pytest.raises(UnreadableImageError):
            ImageArraySlices(tmp_path / bad)


def test_siat_blocks_split_by_block() -> None:
    split = siat_blocks(train=range(1, 15), val=(15, 16))
    assert len(split.train) == 140 and len(split.val) == 20
    assert split.train.max() == 139 and list(split.val[:2]) == [140, 141] and split.val.max() == 159
    with pytest.raises(InvalidInputError, match="leak"):
        siat_blocks(train=(1, 2), val=(2,))


@pytest.mark.skipif(not SIAT.is_file(), reason="shared SIAT data not present (../shared/data)")
def test_siat_real_data_validation_split() -> None:
    ds = ImageArraySlices(SIAT, slices=siat_blocks().val, crop=128, seed=0)
    batch = ds.sample(2)
    assert batch.x.shape == (2, 128, 128)
    assert rel(batch.op.forward(batch.x), batch.y) < 1e-5
    assert_normalised(batch)


# --------------------------------------------------------------------------- ISMRMRD raw


@pytest.fixture(scope="module")
def raw_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("raw")
    files = {}
    for name, sim in (("2d", tiny_2d()), ("3d", tiny_3d())):
        scan = sr.build_raw(sim)
        files[name] = sr.write_ismrmrd(folder / f"{name}.h5", scan.header, scan.acquisitions)
    sim = tiny_3d()
    mask = radial_view_ordered((32, 16), 3.0, seed=1, calib=8)  # (ky, kz) of tiny_3d
    scan = sr.build_raw(sim, mask=mask)
    files["3d_under"] = sr.write_ismrmrd(folder / "under.h5", scan.header, scan.acquisitions)
    return files


def assembled_count(path: Path) -> int:
    raw = read_raw(path)
    assembler = Assembler(raw.header_xml)
    for acq in raw.acquisitions:
        assembler.add(acq)
    return len(assembler.problems())


def test_raw_slices_match_assembler(raw_files: dict[str, Path]) -> None:
    ds = RawFileSlices([raw_files["2d"], raw_files["3d"]], acceleration=3, calib=8, seed=0)
    assert len(ds) == assembled_count(raw_files["2d"]) + assembled_count(raw_files["3d"]) == 3 + 8
    for index in (1, 5):  # slices 0 and 2 of the 2D phantom are empty (noise only)
        batch = ds.batch([index])
        assert batch.op.coils == 4 and batch.y.shape[1] == 4
        assert_normalised(batch)
        problem = ds.slices[index].problem
        mask = batch.op.mask[0]
        scale = robust_scale(batch.op.adjoint(torch.from_numpy(problem.kspace)[None] * mask))
        assert torch.allclose(batch.y[0] * scale, torch.from_numpy(problem.kspace) * mask, rtol=1e-5, atol=1e-7)
        # the SENSE-combined reference explains the fully sampled data up to noise / map error
        assert rel(batch.op.forward(batch.x), batch.y) < 0.1
    assert ds.family(0) == "lines" and ds.family(5) == "radial"
    lines = ds.batch([0]).op.mask[0]
    assert bool((lines == lines[:, :1]).all())  # whole ky lines


def test_raw_masks_per_sample_reproducible(raw_files: dict[str, Path]) -> None:
    a = RawFileSlices(raw_files["3d"], acceleration=3, calib=8, seed=5)
    b = RawFileSlices(raw_files["3d"], acceleration=3, calib=8, seed=5)
    ba, bb = a.sample(3), b.sample(3)
    assert torch.equal(ba.y, bb.y) and torch.equal(ba.x, bb.x)
    assert not torch.equal(ba.op.mask[0], ba.op.mask[1])
    fixed = RawFileSlices(raw_files["3d"], acceleration=3, calib=8, seed=5, per_sample_masks=False).batch([1, 2])
    assert torch.equal(fixed.op.mask[0], fixed.op.mask[1])


def test_raw_named_errors(raw_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NotFullySampledError, match="undersampled"):
        RawFileSlices(raw_files["3d_under"])
    raw = read_raw(raw_files["2d"])
    keep = [
        a
        for a in raw.acquisitions
        if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) or a.idx.kspace_encode_step_1 != 3
    ]
    sr.write_ismrmrd(tmp_path / "missing_line.h5", ismrmrd.xsd.CreateFromDocument(raw.header_xml), keep)
    with pytest.raises(NotFullySampledError):
        RawFileSlices(tmp_path / "missing_line.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(InvalidInputError):
        RawFileSlices(tmp_path / "junk.h5")


# --------------------------------------------------------------------------- super-resolution


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / (f"im{i}.png" if i % 2 == 0 else f"im{i}.jpg"))


def test_superres_batches(tmp_path: Path) -> None:
    write_images(tmp_path, [(40, 36), (48, 32), (32, 32)])
    ds = ImageFolderSR(tmp_path, crop=32, kernel=4, seed=2)
    batch = ds.sample(3)
    assert batch.x.shape == (3, 32, 32) and batch.y.shape == (3, 8, 8) and batch.x0.shape == (3, 32, 32)
    assert float(batch.x.min()) >= 0 and float(batch.x.max()) <= 1
    assert torch.allclose(batch.op.forward(batch.x), batch.y, rtol=1e-5, atol=1e-6)
    assert torch.equal(batch.x0, batch.op.approximate_inverse(batch.y, 5, 0.1))
    again = ImageFolderSR(tmp_path, crop=32, kernel=4, seed=2).sample(3)
    assert torch.equal(again.x, batch.x)
    model = RecurrentProximalNet(ModelConfig(channels=1, copies=2, blocks=1, features=8, output_activation="sigmoid"))
    out, copies = model(batch.y, batch.op, batch.x0)
    assert out.shape == batch.x.shape and len(copies) == 2


def test_superres_named_errors(tmp_path: Path) -> None:
    write_images(tmp_path, [(40, 40), (20, 60)])
    with pytest.raises(ImageTooSmallError, match="20x60"):
        ImageFolderSR(tmp_path, crop=32)
    (tmp_path / "im1.jpg").unlink()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UnreadableImageError, match=r"broken\.png"):
        ImageFolderSR(tmp_path, crop=32)


# --------------------------------------------------------------------------- training-only extra files
def test_extra_training_slices_select_exclude_and_pad(tmp_path: Path) -> None:
    volume = (np.arange(12)[:, None, None] * np.ones((1, 20, 14)) + 1).astype(np.uint8)
    np.save(tmp_path / "t1.npy", volume)
    item = {"path": str(tmp_path / "t1.npy"), "slices": [2, 10], "exclude": [[4, 6]]}
    slices, flags, summary = extra_training_slices([item], (24, 16))
    assert slices.shape == (6, 24, 16) and slices.dtype == np.complex64 and flags.all()
    assert [int(s[12, 8].real) for s in slices] == [3, 4, 7, 8, 9, 10]  # slices 2, 3, 6, 7, 8, 9 (values + 1)
    assert np.all(slices[:, :2] == 0) and np.all(slices[:, 22:] == 0)  # 20 rows padded 2 + 2
    assert np.all(slices[:, 2:22, 1:15] != 0) and np.all(slices[:, :, 0] == 0)
    assert summary == [{"file": "t1.npy", "slices": 6, "magnitude": True, "from": [20, 14]}]
    np.save(tmp_path / "c.npy", np.ones((3, 30, 30), np.complex64) * 1j)
    slices, flags, _ = extra_training_slices([{"path": str(tmp_path / "c.npy")}], (16, 16))
    assert slices.shape == (3, 16, 16) and not flags.any() and np.all(slices == 1j)  # cropped, phase kept
    with pytest.raises(InvalidInputError, match="exceed"):
        extra_training_slices([{**item, "slices": [0, 13]}], (24, 16))
    with pytest.raises(EmptyDatasetError):
        extra_training_slices([{**item, "slices": [4, 6]}], (24, 16))


def test_magnitude_flags_give_flagged_slices_a_phase_and_keep_the_others() -> None:
    data = blobs(4).astype(np.complex64) * np.exp(1j * 0.7)  # slices 0-1: complex with a constant phase
    data[2:] = np.abs(data[2:])  # slices 2-3: magnitude stored as complex
    flags = np.array([False, False, True, True])
    ds = ImageArraySlices(data, magnitude=flags, augment=False, seed=2)
    kept = ds._image(0)
    np.testing.assert_allclose(np.angle(kept[np.abs(kept) > 0.5]), 0.7, atol=1e-5)
    phased = ds._image(2)
    np.testing.assert_allclose(np.abs(phased), np.abs(data[2]), rtol=1e-5, atol=1e-6)
    assert np.ptp(np.angle(phased[np.abs(phased) > 0.5])) > 0.05  # a smooth phase, not the stored zero phase
    with pytest.raises(InvalidInputError, match="one per slice"):
        ImageArraySlices(data, magnitude=flags[:3])
