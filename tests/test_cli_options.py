"""Numeric command-line options are checked before anything runs: a usage error naming the option, exit 2,
no traceback (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from recon_plugin import mrd_server
from recon_plugin.cli import app
from recon_plugin.cli_options import byte_size

ROOT = Path(__file__).resolve().parents[1]
RAW = str(ROOT / "sample_data" / "raw" / "brain2d_multislice.h5")
PROTOCOL = str(ROOT / "protocols" / "zero_filled_retro5x.xml")

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["replay", RAW, "--protocol", PROTOCOL, "--out", "o.h5", "--timeout", "0"], "--timeout"),
        (["replay", RAW, "--protocol", PROTOCOL, "--out", "o.h5", "--timeout", "-5"], "--timeout"),
        (["replay", RAW, "--protocol", PROTOCOL, "--out", "o.h5", "--timeout", "nan"], "--timeout"),
        (["replay", RAW, "--protocol", PROTOCOL, "--out", "o.h5", "--timeout", "inf"], "--timeout"),
        (["serve", "--port", "99999"], "--port"),
        (["serve", "--port", "-1"], "--port"),
        (["serve", "--idle-timeout", "0"], "--idle-timeout"),
        (["serve", "--handshake-timeout", "-1"], "--handshake-timeout"),
        (["serve", "--max-concurrent", "0"], "--max-concurrent"),
        (["serve", "--max-per-peer", "0"], "--max-per-peer"),
        (["serve", "--max-exams", "0"], "--max-exams"),
        (["serve", "--max-exam-bytes", "0"], "--max-exam-bytes"),
        (["serve", "--max-exam-bytes", "lots"], "--max-exam-bytes"),
        (["client", RAW, "-c", "x", "--port", "0"], "--port"),
        (["client", RAW, "-c", "x", "--port", "70000"], "--port"),
        (["client", RAW, "-c", "x", "--timeout", "0"], "--timeout"),
        (["bench", "--slices", "0"], "--slices"),
        (["bench", "--repeats", "-2"], "--repeats"),
        (["bench", "--batch", "4", "--batch", "0"], "--batch"),
        (["demo", "--acceleration", "0.5"], "--acceleration"),
        (["demo", "--acceleration", "nan"], "--acceleration"),
        (["reference-exam", "x.h5", "--seed", "-1"], "--seed"),
        (["mask", "--out", "m", "--seed", "-1"], "--seed"),
    ],
)
def test_out_of_domain_option_is_a_usage_error(tmp_path, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert f"Invalid value for '{option}'" in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_serve_passes_its_settings(monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(mrd_server, "serve", lambda *args, **kwargs: seen.update(args=args, **kwargs))
    result = runner.invoke(
        app,
        ["serve", "--port", "0", "--handshake-timeout", "2.5", "--max-per-peer", "3", "--max-exam-bytes", "512M"],
    )
    assert result.exit_code == 0, result.output
    assert seen["args"][1] == 0 and seen["handshake_timeout"] == 2.5 and seen["max_per_peer"] == 3
    assert seen["max_exam_bytes"] == 512 * 2**20 and seen["max_exams"] == mrd_server.DEFAULT_MAX_EXAMS


def test_byte_sizes():
    assert byte_size("8G") == byte_size("8GiB") == byte_size("8 gb") == 8 * 2**30
    assert byte_size("1000000") == 1_000_000 and byte_size("1.5K") == 1536 and byte_size(42) == 42
    for bad in ("", "G", "-1", "0", "1e9", "8 GB extra", "9" * 400):
        with pytest.raises(typer.BadParameter):
            byte_size(bad)


@pytest.mark.parametrize(
    "settings",
    [
        {"port": 99999},
        {"idle_timeout": 0},
        {"handshake_timeout": float("nan")},
        {"max_per_peer": 0},
        {"max_exams": 1.5},
        {"max_exam_bytes": -1},
    ],
)
def test_server_settings_are_checked(settings):
    with pytest.raises(ValueError):
        mrd_server.MrdServer(**settings)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["review", "serve", "STUDY", "--port", "99999"], "--port"),
        (["review", "new", "S", "--from", "x.h5", "--readers", "a", "--slices", "0"], "--slices"),
        (["review", "new", "S", "--from", "x.h5", "--readers", "a", "--seed", "-1"], "--seed"),
    ],
)
def test_review_options_are_checked(args: list[str], option: str) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and option in res.output and "Traceback" not in res.output
