"""Output an operator can read: unbroken tables off a terminal, labelled series, quiet logs, readable files.

Issue 13 items A (tables, series labels, replay --json), B (log level), D (demo-bundle), E (file modes) and F
(demo checks its bundle first, protocol typos).
"""

from __future__ import annotations

import inspect
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ellipse_slices
from rich.table import Table
from typer.testing import CliRunner

from recon_plugin.cli import app
from recon_plugin.console import PIPE_WIDTH, default_file_mode, error_line, make_console
from recon_plugin.errors import ProtocolError
from recon_plugin.model import ModelConfig, RecurrentProximalNet, save_bundle
from recon_plugin.replay import load_protocol
from training import cli as train_cli

ROOT = Path(__file__).resolve().parents[1]
RAW_2D = ROOT / "sample_data" / "raw" / "brain2d_multislice.h5"
runner = CliRunner()


def _tiny_bundle(folder: Path) -> Path:
    save_bundle(RecurrentProximalNet(ModelConfig(copies=1, features=4)), folder, mask={}, training_data={})
    return folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- A: tables


def test_console_never_cuts_a_table_off_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    console = make_console(file=out)
    table = Table(title="methods")
    for column in ("method", "source", "SNR dB"):
        table.add_column(column)
    long = "recon_plugin.gadgets.zero_filled_with_a_long_suffix"
    table.add_row("zero_filled", long + "_" + long, "14.7489")
    console.print(table)
    assert console.width == PIPE_WIDTH
    text = out.getvalue()
    assert f"{long}_{long}" in text and "14.7489" in text and "…" not in text
    assert error_line(ValueError("two\n  lines")) == "ValueError: two lines"


@pytest.fixture(scope="module")
def zero_filled_with_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zero-filled 5x protocol that also sends the fully sampled reference (series 9)."""
    text = (ROOT / "protocols" / "zero_filled_retro5x.xml").read_text()
    marker = '<property name="retro_acceleration" value="5"/>'
    assert marker in text
    path = tmp_path_factory.mktemp("protocol") / "zero_filled_reference.xml"
    path.write_text(text.replace(marker, marker + '<property name="reference" value="true"/>'))
    return path


def test_replay_summary_labels_series_and_is_not_cut(zero_filled_with_reference, tmp_path, umask_022):
    out, summary = tmp_path / "out.h5", tmp_path / "summary.json"
    args = ["replay", str(RAW_2D), "--protocol", str(zero_filled_with_reference), "--out", str(out)]
    res = runner.invoke(
        app, [*args, "--no-progress", "--timings", "--json", str(summary), "--dicom", str(tmp_path / "dicom")]
    )
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[2].strip(): line for line in res.stdout.splitlines() if line.count("│") >= 9}
    assert set(rows) == {"zero_filled", "reference"}, res.stdout
    assert "recon_plugin.gadgets.zero_filled" in rows["zero_filled"]  # the source, unbroken
    assert "recon_plugin.gadgets.zero_filled" in rows["reference"]
    data = json.loads(summary.read_text())
    by_method = {s["method"]: s for s in data["series"]}
    zf, ref = by_method["zero_filled"], by_method["reference"]
    assert (zf["series"], zf["reference"], zf["images"], ref["series"], ref["reference"]) == (1, False, 4, 9, True)
    assert ref["seconds"] is None and zf["seconds"] > 0
    assert ref["recon_seconds"] is None and 0 < zf["recon_seconds"] < zf["seconds"]  # recon, not the stream's wall
    assert f"{zf['snr_db']:.2f}" in rows["zero_filled"] and f"{zf['ssim']:.3f}" in rows["zero_filled"]
    assert abs(float(rows["zero_filled"].split("│")[7]) - zf["recon_seconds"]) <= 0.006
    assert abs(float(rows["zero_filled"].split("│")[8]) - zf["seconds"]) <= 0.006
    assert rows["reference"].split("│")[7].strip() == rows["reference"].split("│")[8].strip() == "-"  # not a recon
    assert "recon s" in res.stdout and "stream s" in res.stdout and "gadget start to exit" in res.stdout
    assert "…" not in res.stdout
    # E: the image file and the DICOM files are readable by group and others under umask 022
    assert _mode(out) == 0o644
    dicoms = list((tmp_path / "dicom").rglob("*.dcm"))
    assert dicoms and all(_mode(p) == 0o644 for p in dicoms)


# ---------------------------------------------------------------- B: log level


def _script(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    if not script.exists():
        pytest.skip(f"{name} is not installed in this environment")
    return str(script)


def test_no_info_lines_by_default_and_with_verbose(tmp_path):
    bundle = str(_tiny_bundle(tmp_path / "b"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in (
        [_script("recon-plugin"), "bundle-info", bundle],
        [_script("recon-train"), "copies", "--bundle", bundle, "--data", str(tmp_path / "images.npy"), "--index", "1"],
    ):
        if "copies" in command:
            np.save(tmp_path / "images.npy", ellipse_slices(2, 32).astype(np.complex64))
            command += ["--out", str(tmp_path / "c.png")]
        quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert quiet.returncode == 0, quiet.stderr
        assert "INFO" not in quiet.stdout + quiet.stderr
        loud = subprocess.run([command[0], "-v", *command[1:]], capture_output=True, text=True, env=env, timeout=120)
        assert loud.returncode == 0, loud.stderr
        assert "INFO recon_plugin.model.bundle: loaded bundle" in loud.stderr
        assert "DEBUG" not in loud.stderr
        assert quiet.stdout.splitlines()[-1] == loud.stdout.splitlines()[-1]  # the results are printed either way


# ---------------------------------------------------------------- D: demo-bundle


def test_demo_bundle_defaults_to_a_run_folder_and_never_overwrites(tmp_path, umask_022):
    default = inspect.signature(train_cli.demo_bundle).parameters["out"].default
    assert Path(default) == Path("runs/rgancs_demo_cpu")
    existing = _tiny_bundle(tmp_path / "bundle")
    before = (existing / "weights.safetensors").read_bytes()
    res = CliRunner().invoke(train_cli.app, ["demo-bundle", "--out", str(existing), "--steps", "1"])
    assert res.exit_code != 0 and "already holds a bundle" in str(res.exception)
    assert (existing / "weights.safetensors").read_bytes() == before
    tiny = ["--steps", "1", "--features", "4", "--copies", "1", "--batch-size", "1"]
    ok = CliRunner().invoke(train_cli.app, ["demo-bundle", "--out", str(existing), "--overwrite", *tiny])
    assert ok.exit_code == 0, ok.output
    assert (existing / "weights.safetensors").read_bytes() != before
    # E: a trained bundle's weights are readable by a service account
    assert _mode(existing / "weights.safetensors") == 0o644 == default_file_mode()
    assert _mode(existing / "bundle.json") == 0o644


# ---------------------------------------------------------------- E: file modes


def test_saved_bundle_and_written_images_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        folder = _tiny_bundle(tmp_path / "b")
        assert _mode(folder / "weights.safetensors") == 0o640
    finally:
        os.umask(old)


# ---------------------------------------------------------------- F: demo bundle check, protocol typos


def test_demo_with_a_bad_bundle_writes_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bundle.json").write_text("{}")
    out = tmp_path / "out"
    res = runner.invoke(app, ["demo", "--out", str(out), "--bundle", str(bad), "--device", "cpu", "--no-raw"])
    assert res.exit_code == 2 and "BundleError" in res.output
    assert not out.exists()


def test_typo_in_a_reader_is_a_did_you_mean(tmp_path):
    text = (ROOT / "protocols" / "zero_filled.xml").read_text()
    assert "<classname>AcquisitionReader</classname>" in text
    typo = tmp_path / "typo.xml"
    typo.write_text(text.replace("<classname>AcquisitionReader</classname>", "<classname>AcquisitonReader</classname>"))
    with pytest.raises(ProtocolError, match=r"did you mean AcquisitionReader\?") as info:
        load_protocol(typo)
    assert "C++" not in str(info.value)
    res = runner.invoke(app, ["replay", str(RAW_2D), "--protocol", str(typo), "--out", str(tmp_path / "o.h5")])
    assert res.exit_code == 2 and "did you mean AcquisitionReader?" in res.output
    writer = tmp_path / "writer.xml"
    writer.write_text(text.replace("<classname>ImageWriter</classname>", "<classname>ImageWritter</classname>"))
    with pytest.raises(ProtocolError, match=r"did you mean ImageWriter\?"):
        load_protocol(writer)
    real = tmp_path / "real.xml"  # a real Gadgetron reader replay does not run: the server message, no typo hint
    real.write_text(
        text.replace("<classname>AcquisitionReader</classname>", "<classname>AcquisitionBucketReader</classname>")
    )
    with pytest.raises(ProtocolError, match="C\\+\\+ runtime") as info:
        load_protocol(real)
    assert "did you mean" not in str(info.value)


def test_readme_says_the_weights_terms_where_users_install() -> None:
    """The wheel ships SIAT-derived weights: the README's licence section says so and names the exception."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Data and licences", 1)[1]
    assert "non-commercial" in section and "MODEL_CARD.md" in section and "rgancs_demo_cpu" in section
