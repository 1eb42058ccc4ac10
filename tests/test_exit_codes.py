"""One exit-code rule for every command: a named error or an unusable path is one line and exit 2."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recon_plugin import dicom_export
from recon_plugin.cli import USAGE_EXIT, app

RAW = Path(__file__).resolve().parents[1] / "sample_data" / "raw" / "brain2d_multislice.h5"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exit") / "images.h5"
    res = CliRunner().invoke(
        app, ["replay", str(RAW), "--protocol", "zero_filled_retro5x", "--out", str(out), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    return out


def test_bench_with_an_unknown_path_exits_2() -> None:
    res = CliRunner().invoke(app, ["bench", "--quick", "--path", "warp9", "--no-bart", "--no-cold"])
    assert res.exit_code == USAGE_EXIT == 2 and "FastPathError" in res.output


def test_export_into_a_file_or_an_unwritable_place_exits_2(images: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    res = CliRunner().invoke(app, ["export", str(images), "--dicom", str(a_file)])
    assert res.exit_code == 2, res.output
    res = CliRunner().invoke(app, ["export", str(images), "--dicom", "/proc/no_such_place/dicom"])
    assert res.exit_code == 2 and "Error" in res.output


def test_disk_full_during_export_exits_2(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dicom_export, "export_file", full)
    res = CliRunner().invoke(app, ["export", str(images), "--dicom", str(tmp_path / "d")])
    assert res.exit_code == 2 and "No space left" in res.output


def test_unknown_device_is_named_not_a_traceback() -> None:
    res = CliRunner().invoke(app, ["bench", "--quick", "--device", "tpu", "--no-bart", "--no-cold"])
    assert res.exit_code == 2 and "DeviceError: unsupported device 'tpu'" in res.output
    assert "Traceback" not in res.output and "privateuseone" not in res.output


def test_mask_into_an_unwritable_place_is_one_line() -> None:
    res = CliRunner().invoke(app, ["mask", "--out", "/proc/no_such_place/m"])
    assert res.exit_code == 2 and "cannot write the mask files" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("option", ["--png", "--dicom"])
def test_replay_checks_its_output_folders_before_any_gadget(tmp_path: Path, option: str) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = tmp_path / "o.h5"
    for where in (a_file, Path("/proc/no_such_place/x")):
        res = CliRunner().invoke(
            app, ["replay", str(RAW), "--protocol", "zero_filled_retro5x", "--out", str(out), option, str(where)]
        )
        assert res.exit_code == 2 and "OutputPathError" in res.output and option in res.output
        assert not out.exists() and "series" not in res.output  # refused before the gadgets ran
