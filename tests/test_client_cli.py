"""``recon-plugin client`` against our MRD server on loopback: output groups, summary and JSON, configuration
by name and by text, named errors (exit 2, one line), and ``--version`` of both command lines."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from recon_plugin import __version__
from recon_plugin.cli import app
from recon_plugin.replay import read_images
from training.cli import app as train_app

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "sample_data" / "raw" / "brain2d_multislice.h5"  # 4 slices; zero-filled at 5x takes about a second
PROTOCOL = "zero_filled_retro5x"
TIMEOUT = "30"

runner = CliRunner()


def client(server: tuple[str, int] | None, *args: str, port: int | None = None):
    host, server_port = server or ("127.0.0.1", port)
    return runner.invoke(
        app, ["client", str(RAW), "--host", host, "--port", str(server_port), "--timeout", TIMEOUT, *args]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def error_line(result) -> str:
    """The single line on stderr of a failed run (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_images_summary_json_and_groups(server, tmp_path):
    """By name into a date/time group, then by text into a named group of the same file: identical images."""
    out, report = tmp_path / "out.h5", tmp_path / "summary.json"
    first = client(server, "--config", PROTOCOL, "--out", str(out), "--json", str(report))
    assert first.exit_code == 0, first.output
    assert "series 1 (zero_filled): 4 images, matrix 112x128x1, float32" in first.stdout
    assert f"(configuration {PROTOCOL})" in first.stdout and "4 images back in" in first.stdout
    summary = json.loads(report.read_text())
    assert summary["ok"] and summary["error"] is None and summary["images"] == 4 and summary["sent"] > 0
    assert summary["series"] == [
        {"series": 1, "images": 4, "matrix": [112, 128, 1], "channels": 1, "dtype": "float32", "method": "zero_filled"}
    ]
    assert 0 < summary["seconds"] < 30 and summary["config"] == PROTOCOL and summary["output"] == str(out)
    group = summary["out_group"]
    datetime.datetime.fromisoformat(group)  # named by date and time, as the reference clients do
    assert f"wrote {out}, group '{group}'" in first.stdout

    protocol_file = ROOT / "protocols" / f"{PROTOCOL}.xml"
    second = client(server, "--config-file", str(protocol_file), "--out", str(out), "--out-group", "dataset")
    assert second.exit_code == 0, second.output
    assert f"(configuration text {protocol_file})" in second.stdout

    with h5py.File(out, "r") as h5:
        assert sorted(h5) == sorted([group, "dataset"])
        assert sorted(h5[group]) == ["image_1", "xml"]
    by_name, by_text = read_images(out, group)[1], read_images(out, "dataset")[1]
    assert len(by_name) == len(by_text) == 4
    for a, b in zip(by_name, by_text, strict=True):
        assert a.matrix_size[:] == (112, 128, 1) and np.array_equal(a.data, b.data)

    again = client(server, "--config", PROTOCOL, "--out", str(out), "--out-group", "dataset")
    assert (
        error_line(again)
        == f"FileExistsError: {out} already holds group 'dataset': choose another output group or file"
    )
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == sorted([group, "dataset"])


def test_no_server_listening(tmp_path):
    port = free_port()
    report = tmp_path / "summary.json"
    result = client(None, "--config", PROTOCOL, "--out", str(tmp_path / "out.h5"), "--json", str(report), port=port)
    line = error_line(result)
    assert line.startswith("ConnectionRefusedError: ") and f"127.0.0.1:{port}" in line
    assert json.loads(report.read_text())["error"] == "ConnectionRefusedError"
    assert not (tmp_path / "out.h5").exists()


def test_unknown_configuration_reaches_the_client(server, tmp_path):
    report = tmp_path / "summary.json"
    result = client(server, "--config", "no_such_protocol", "--out", str(tmp_path / "out.h5"), "--json", str(report))
    line = error_line(result)
    assert line.startswith("ServerError: the MRD server reported: UnknownConfigurationError: ")
    assert "no_such_protocol" in line
    summary = json.loads(report.read_text())
    assert not summary["ok"] and summary["images"] == 0 and summary["error"] == "ServerError"
    assert summary["errors"][0].startswith("UnknownConfigurationError")
    assert not (tmp_path / "out.h5").exists()


def test_silent_server_times_out(tmp_path):
    """A socket that listens but never answers: StreamTimeoutError after --timeout seconds of silence."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        start = time.monotonic()
        result = runner.invoke(
            app,
            ["client", str(RAW), "-c", PROTOCOL, "-p", str(port), "--timeout", "1", "-o", str(tmp_path / "o.h5")],
        )
    assert time.monotonic() - start < 15
    assert error_line(result).startswith(f"StreamTimeoutError: 127.0.0.1:{port}: the server sent nothing")


def test_unreadable_input_and_configuration(tmp_path):
    port = str(free_port())  # never reached: the inputs are checked first
    text = tmp_path / "not_raw.h5"
    text.write_text("not HDF5")
    result = runner.invoke(app, ["client", str(text), "-c", PROTOCOL, "-p", port, "-o", str(tmp_path / "o.h5")])
    assert error_line(result).startswith("IsmrmrdFormatError: ")
    missing = tmp_path / "missing.xml"
    result = runner.invoke(app, ["client", str(RAW), "-C", str(missing), "-p", port, "-o", str(tmp_path / "o.h5")])
    assert error_line(result).startswith("FileNotFoundError: cannot read the configuration file")
    for config in ([], ["-c", PROTOCOL, "-C", str(missing)]):  # neither or both: a usage error
        result = runner.invoke(app, ["client", str(RAW), "-p", port, *config])
        assert result.exit_code == 2 and "exactly one of --config NAME and --config-file PATH" in result.output


def test_entry_point_error_is_one_line(tmp_path):
    """The installed command (logging configured by main()) prints one line on stderr, nothing else."""
    exe = Path(sys.executable).with_name("recon-plugin")
    if not exe.exists():
        pytest.skip(f"{exe} not installed")
    port = str(free_port())
    proc = subprocess.run(
        [str(exe), "client", str(RAW), "--config", PROTOCOL, "--port", port, "--out", "unused.h5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ConnectionRefusedError: "), proc.stderr


@pytest.mark.parametrize(("cli", "name"), [(app, "recon-plugin"), (train_app, "recon-train")])
def test_version(cli, name):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"{name} {__version__} (rgancs-recon-plugin)\n"
