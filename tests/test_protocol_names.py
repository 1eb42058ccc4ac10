"""A packaged protocol's name is accepted wherever a protocol path is (issue: `--protocol side_by_side` failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recon_plugin.cli import app
from recon_plugin.errors import ProtocolError
from recon_plugin.protocols_cli import resolve_protocol
from recon_plugin.sample_data import PROTOCOLS_DIR

RAW = Path(__file__).resolve().parents[1] / "sample_data" / "raw" / "brain2d_multislice.h5"


def test_names_files_and_typos(tmp_path: Path) -> None:
    assert resolve_protocol("side_by_side") == PROTOCOLS_DIR / "side_by_side.xml"
    assert resolve_protocol("side_by_side.xml") == PROTOCOLS_DIR / "side_by_side.xml"
    own = tmp_path / "mine.xml"
    own.write_text("<configuration/>")
    assert resolve_protocol(own) == own  # a file wins
    with pytest.raises(ProtocolError, match="did you mean side_by_side"):
        resolve_protocol("side_by_sid")
    with pytest.raises(ProtocolError, match="packaged: "):
        resolve_protocol(tmp_path / "missing.xml")


def test_replay_takes_a_packaged_name_and_names_a_typo(tmp_path: Path) -> None:
    args = ["replay", str(RAW), "--out", str(tmp_path / "o.h5"), "--no-progress"]
    bad = CliRunner().invoke(app, [*args, "--protocol", "side_by_sid"])
    assert bad.exit_code == 2 and "did you mean side_by_side" in bad.output
    assert not (tmp_path / "o.h5").exists()
    good = CliRunner().invoke(app, [*args, "--protocol", "zero_filled_retro5x"])
    assert good.exit_code == 0, good.output
    assert (tmp_path / "o.h5").is_file()


def test_list_names_the_default_bundle_of_every_device_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """`protocols list` reads the device-class defaults from the table the gadgets use, not from its own words."""
    from recon_plugin import sample_data

    table = {"cuda": Path("gpu_model"), "cpu_bf16": Path("bf16_model"), "cpu": Path("gpu_model")}
    monkeypatch.setattr("recon_plugin.protocols_cli.DEFAULT_BUNDLES", table)
    out = CliRunner().invoke(app, ["protocols", "list"]).output
    assert "gpu_model on a GPU or other CPUs, bf16_model on a CPU with native bf16" in out
    assert set(sample_data.DEVICE_CLASSES) == set(sample_data.DEFAULT_BUNDLES)
