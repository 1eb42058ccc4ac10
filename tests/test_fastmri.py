"""fastMRI HDF5 files (top-level ``kspace``, optional ``ismrmrd_header``) in ``recon-train eval`` and training:
lazy per-slice reads, layout from the header, labels and slice selection, a tiny fit, named errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ellipse_slices
from raw_helpers import tiny_2d

from recon_plugin import sample_raw as sr
from recon_plugin.errors import InvalidInputError, NonFiniteDataError, ShapeMismatchError
from recon_plugin.model import load_bundle
from recon_plugin.physics import fft2c, fftc, ifftc
from recon_plugin.sample_data import DEMO_BUNDLE
from recon_plugin.simulate import birdcage_coil_maps, with_smooth_phase
from training.cli import main
from training.config import config_from_dict
from training.datasets import FastMRIFile, FastMRISlices, hdf5_kind
from training.datasets.base import EmptyDatasetError, NotFullySampledError, UnreadableImageError
from training.errors import TrainingConfigError
from training.loop import Trainer

N = 32
COILS = 4
METHODS = "zero_filled,rgancs"


def header_xml(readout: int, phase: int, recon_readout: int) -> str:
    """A minimal fastMRI-like ISMRMRD header: encoded readout ``readout`` (x), ``phase`` lines (y)."""
    space = "<matrixSize><x>{}</x><y>{}</y><z>1</z></matrixSize><fieldOfView_mm><x>{}</x><y>200</y><z>5</z>"
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        "<experimentalConditions><H1resonanceFrequency_Hz>127000000</H1resonanceFrequency_Hz>"
        "</experimentalConditions><encoding>"
        f"<encodedSpace>{space.format(readout, phase, 200 * readout / recon_readout)}</fieldOfView_mm></encodedSpace>"
        f"<reconSpace>{space.format(recon_readout, phase, 200)}</fieldOfView_mm></reconSpace>"
        "<trajectory>cartesian</trajectory><encodingLimits><kspace_encoding_step_1><minimum>0</minimum>"
        f"<maximum>{phase - 1}</maximum><center>{phase // 2}</center></kspace_encoding_step_1></encodingLimits>"
        "</encoding></ismrmrdHeader>"
    )


def images(n: int, seed: int = 0) -> np.ndarray:
    """Complex smooth phantoms [n, N, N] (rows = phase encode, columns = readout)."""
    rng = np.random.default_rng(seed)
    return np.stack([with_smooth_phase(m, rng) for m in ellipse_slices(n, N, seed=seed)]).astype(np.complex64)


def multicoil(n: int, seed: int = 0) -> np.ndarray:
    """Fully sampled k-space [n, COILS, N, N] of :func:`images`."""
    return fft2c(birdcage_coil_maps((N, N), COILS)[None] * images(n, seed)[:, None]).astype(np.complex64)


def write(path: Path, kspace: np.ndarray | None, header: str | None = None, **extra: np.ndarray) -> Path:
    """A file in fastMRI layout: ``kspace``, optional ``ismrmrd_header`` and any other datasets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if kspace is not None:
            f.create_dataset("kspace", data=kspace)
        if header is not None:
            f.create_dataset("ismrmrd_header", data=header)
        for name, value in extra.items():
            f.create_dataset(name, data=value)
        f.attrs["acquisition"] = "AXT2"
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """brain.h5: 3 slices x 4 coils x 32 x 32 with a header and reconstruction_rss; a folder of two files."""
    root = tmp_path_factory.mktemp("fastmri")
    k = multicoil(3)
    rss = np.sqrt((np.abs(np.fft.ifft2(k)) ** 2).sum(1)).astype(np.float32)
    brain = write(root / "brain.h5", k, header_xml(N, N, N), reconstruction_rss=rss)
    write(root / "folder" / "a.h5", multicoil(2, seed=1), header_xml(N, N, N))
    write(root / "folder" / "b.h5", multicoil(3, seed=2))  # no header: taken as [ky, kx]
    (root / "folder" / "notes.txt").write_text("not data")
    return {"root": root, "brain": brain, "folder": root / "folder"}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``recon-train ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    out = tmp_path / "r.json"
    argv = ["eval", "--bundle", str(DEMO_BUNDLE), "--device", "cpu", "--methods", METHODS, "--json", str(out)]
    code, stdout, stderr = run([*argv, *args], capsys)
    assert code == 0, stdout + stderr
    return json.loads(out.read_text())


def check_rows(report: dict, slices: list[str]) -> None:
    assert report["settings"]["kind"] == "fastmri" and report["settings"]["slices"] == slices
    assert len(report["rows"]) == 2 * len(slices)
    assert all(np.isfinite(r["snr_db"]) and -1 <= r["ssim"] <= 1 for r in report["rows"])
    assert [m["method"] for m in report["means"]] == ["zero_filled", "rgancs"]


def test_eval_on_a_file_and_a_folder(data, tmp_path, capsys):
    report = evaluate(
        tmp_path, capsys, "--data", str(data["brain"]), "--mask-family", "lines", "--acceleration", "2", "--calib", "12"
    )
    check_rows(report, ["brain/slice_00", "brain/slice_01", "brain/slice_02"])
    assert report["settings"]["coils"] == [COILS]
    zf = [r["snr_db"] for r in report["rows"] if r["method"] == "zero_filled"]
    assert all(3 < v < 60 for v in zf)

    report = evaluate(tmp_path, capsys, "--data", str(data["folder"]), "--slices", "1:5:2", "--calib", "12")
    check_rows(report, ["a/slice_01", "b/slice_01"])  # 5 slices: a/00 a/01 b/00 b/01 b/02


def test_single_coil_file(data, tmp_path, capsys):
    path = write(tmp_path / "knee_sc.h5", fft2c(images(2)), header_xml(N, N, N))  # [slices, ky, kx]
    assert FastMRIFile.open(path).coils == 1
    report = evaluate(tmp_path, capsys, "--data", str(path), "--slices", "1:2", "--calib", "12")
    check_rows(report, ["knee_sc/slice_01"])
    assert report["settings"]["coils"] == [1]


def test_layout_follows_the_header(tmp_path):
    """fastMRI stores the readout along the rows, oversampled: read() returns [coils, ky, kx] without it."""
    img = images(1)[0]  # [ky, kx] object, readout along the columns
    maps = birdcage_coil_maps((N, N), COILS)
    wide = np.zeros((COILS, N, 2 * N), np.complex64)  # twice the field of view along the readout
    wide[..., N // 2 : N // 2 + N] = maps * img
    stored = np.swapaxes(fft2c(wide), -1, -2)[None]  # [1, coils, readout 64, phase 32], as fastMRI stores it
    # Zero-padded phase encodes at both ends (as fastMRI knee has) stay allowed.
    stored[..., :2] = 0
    stored[..., -1:] = 0
    path = write(tmp_path / "knee.h5", stored, header_xml(2 * N, N, N))
    f = FastMRIFile.open(path)
    assert f.transpose and f.readout == N and f.shape == (N, N) and f.coils == COILS
    expected = fftc(ifftc(fft2c(maps * img), axes=(-2,)), axes=(-2,))
    expected[:, :2] = 0
    expected[:, -1:] = 0
    np.testing.assert_allclose(f.read(0), expected, atol=1e-4 * np.abs(expected).max())
    # Without the header the same data are taken as given.
    plain = FastMRIFile.open(write(tmp_path / "plain.h5", stored))
    assert not plain.transpose and plain.readout is None and plain.shape == (2 * N, N)


def test_content_tells_fastmri_from_ismrmrd(data, tmp_path, capsys):
    scan = sr.build_raw(tiny_2d())
    raw = sr.write_ismrmrd(tmp_path / "mixed" / "scan.h5", scan.header, scan.acquisitions)
    assert hdf5_kind(raw) == "ismrmrd" and hdf5_kind(data["brain"]) == "fastmri"
    assert hdf5_kind(write(tmp_path / "other.h5", None, other=np.zeros(3))) is None
    write(tmp_path / "mixed" / "brain.h5", multicoil(1))
    code, _, err = run(["eval", "--data", str(tmp_path / "mixed"), "--methods", "zero_filled"], capsys)
    assert code == 2 and err.startswith("InvalidInputError: ") and "mixes fastMRI and ISMRMRD" in err


def bad_files(root: Path) -> list[tuple[type[Exception], Path]]:
    """(expected error, file) for each kind of bad fastMRI input."""
    k = multicoil(2)
    nan, holes = k.copy(), k.copy()
    nan[1, 0, 3, 4] = np.nan
    holes[:, :, 10, 5] = 0
    (root / "zero_bytes.h5").write_bytes(b"")
    return [
        (UnreadableImageError, write(root / "no_kspace.h5", None, reconstruction_rss=np.ones((2, N, N), np.float32))),
        (ShapeMismatchError, write(root / "rank5.h5", k[None])),
        (ShapeMismatchError, write(root / "rank2.h5", k[0, 0])),
        (InvalidInputError, write(root / "real.h5", np.abs(k))),
        (NonFiniteDataError, write(root / "nan.h5", nan)),
        (NotFullySampledError, write(root / "holes.h5", holes)),
        (EmptyDatasetError, write(root / "empty.h5", np.zeros((0, COILS, N, N), np.complex64))),
        (UnreadableImageError, root / "zero_bytes.h5"),
    ]


def test_bad_inputs_are_named(tmp_path, capsys):
    for error, path in bad_files(tmp_path):
        code, out, err = run(["eval", "--data", str(path), "--methods", "zero_filled", "--device", "cpu"], capsys)
        assert code == 2, (path.name, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{error.__name__}: "), (path.name, err)
        with pytest.raises(error):  # training reads the same way
            FastMRISlices(path, per_sample_masks=False).batch([1])


def fit_config(out: Path, **data: object) -> dict:
    return {
        "model": {"copies": 2, "blocks": 1, "features": 8},
        "data": {"kind": "fastmri", "acceleration": 2.0, "mask_family": "lines", **data},
        "optim": {"lr": 1e-3, "steps": 2, "batch_size": 2},
        "run": {"out": str(out), "checkpoint_every": 0, "validate_every": 0, "log_every": 1, "progress": False,
                "device": "cpu", "seed": 1},
    }  # fmt: skip


def test_training_on_fastmri_files(data, tmp_path):
    config = config_from_dict(
        fit_config(tmp_path / "run", path=str(data["brain"]), train_range=[0, 2], val_range=[2, 3])
    )
    trainer = Trainer(config)
    metrics = trainer.fit()
    assert np.isfinite(metrics["snr_db"])
    summary = load_bundle(tmp_path / "run" / "bundle").sidecar["training_data"]
    assert summary["kind"] == "fastmri" and summary["coils"] == COILS and summary["matrix"] == [N, N]
    assert summary["train_slices"] == 2 and summary["validation_slices"] == 1 and summary["source"] == ["brain.h5"]
    # Split by files: every slice of path trains, val_path validates.
    by_files = Trainer(
        config_from_dict(fit_config(tmp_path / "b", path=str(data["folder"]), val_path=str(data["brain"])))
    )
    assert by_files.data_summary["train_slices"] == 5 and by_files.data_summary["validation_slices"] == 3
    assert by_files.data_summary["validation_source"] == ["brain.h5"]
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.val_path"):
        config_from_dict(fit_config(tmp_path / "c", kind="raw", path="x.h5", val_path="y.h5"))
    with pytest.raises(TrainingConfigError, match=r"\[data\]\.path: .*no 'kspace' dataset"):
        Trainer(config_from_dict(fit_config(tmp_path / "d", path=str(bad_files(tmp_path)[0][1]))))
