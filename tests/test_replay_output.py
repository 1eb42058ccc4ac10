"""Replay output (issue 14): an existing OUT is refused without --overwrite, an unwritable OUT is refused before
any gadget starts, a failed replay never leaves a complete-looking OUT, and the written file has the usual mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import recon_plugin.replay as replay_module
from recon_plugin.cli import app
from recon_plugin.errors import GadgetFailedError, OutputExistsError, OutputPathError
from recon_plugin.replay import check_output_path, read_images, replay_file

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "sample_data" / "raw" / "brain2d_multislice.h5"
PROTOCOL = ROOT / "protocols" / "zero_filled_retro5x.xml"
TESTS = Path(__file__).resolve().parent
runner = CliRunner()


@pytest.fixture
def no_gadgets(monkeypatch):
    """Fail the test if replay gets as far as starting gadgets."""

    def refuse(*args, **kwargs):
        raise AssertionError("a gadget was started")

    monkeypatch.setattr(replay_module, "run_stream", refuse)


def broken_protocol(tmp_path: Path) -> Path:
    """A protocol whose gadget module fails to import in the gadget process (tests/broken_gadgets.py): the targets
    check passes, so the replay fails only once its gadget started."""
    path = tmp_path / "broken.xml"
    text = PROTOCOL.read_text().replace('name="recon_plugin.gadgets"', 'name="broken_gadgets"')
    path.write_text(text.replace('target="zero_filled"', 'target="echo_images"'))
    assert path.read_text() != PROTOCOL.read_text()
    return path


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_existing_output_is_refused_without_overwrite(tmp_path, no_gadgets):
    out = tmp_path / "out.h5"
    out.write_bytes(b"an earlier result")
    args = ["replay", str(RAW), "--protocol", str(PROTOCOL), "--out", str(out), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "OutputExistsError" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert out.read_bytes() == b"an earlier result"


@pytest.mark.parametrize("case", ["missing folder", "folder is a file", "out is a folder", "out is the input"])
def test_unwritable_output_is_refused_before_any_gadget(tmp_path, no_gadgets, case):
    if case == "missing folder":
        out = tmp_path / "no_such_folder" / "out.h5"
    elif case == "folder is a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out.h5"
    elif case == "out is a folder":
        out = tmp_path
    else:
        out = tmp_path / "raw.h5"
        out.write_bytes(RAW.read_bytes())
    raw = out if case == "out is the input" else RAW
    with pytest.raises(OutputPathError) as info:
        replay_file(raw, PROTOCOL, out, progress=False, overwrite=True)
    assert not isinstance(info.value, OutputExistsError)
    if case == "out is the input":
        assert out.read_bytes() == RAW.read_bytes()  # overwrite does not delete the input


def test_unwritable_folder_is_refused(tmp_path, no_gadgets, monkeypatch):
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the folder's temporary file fail as it would for a user

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("recon_plugin.replay.dataset.tempfile.mkstemp", denied)
    else:
        folder.chmod(0o500)
    try:
        args = ["replay", str(RAW), "--protocol", str(PROTOCOL), "--out", str(folder / "out.h5"), "--no-progress"]
        result = runner.invoke(app, args)
    finally:
        folder.chmod(0o700)
    assert result.exit_code == 2, result.output
    assert "OutputPathError" in result.output and "not writable" in result.output
    assert list(folder.iterdir()) == []


def test_failed_replay_with_overwrite_leaves_no_older_file(tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"an earlier, complete-looking result")
    with pytest.raises(GadgetFailedError):
        replay_file(
            RAW, broken_protocol(tmp_path), out, progress=False, timeout=30, overwrite=True, extra_pythonpath=[TESTS]
        )
    assert not out.exists() and temporaries(tmp_path) == []


def test_overwrite_replaces_the_file_atomically_with_the_usual_mode(tmp_path, umask_022):
    out = tmp_path / "out.h5"
    out.write_bytes(b"an earlier result")
    args = ["replay", str(RAW), "--protocol", str(PROTOCOL), "--out", str(out), "--no-progress", "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(read_images(out)[1]) == 4
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # 0666 less the umask, not the temporary file's 0600
    assert temporaries(tmp_path) == []


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "new.h5") == tmp_path / "new.h5"
    (tmp_path / "old.h5").write_text("x")
    with pytest.raises(OutputExistsError, match="exists already"):
        check_output_path(tmp_path / "old.h5")
    assert check_output_path(tmp_path / "old.h5", overwrite=True) == tmp_path / "old.h5"
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "new.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]  # the probe is gone
