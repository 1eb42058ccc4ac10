"""Command line: mask files, named errors with exit code 2, bundle-info, the demo on a tiny bundle."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from recon_plugin.cli import app
from recon_plugin.coils import bart_available
from recon_plugin.model import ModelConfig, RecurrentProximalNet, save_bundle

runner = CliRunner()


def test_mask_command_writes_files(tmp_path):
    stem = tmp_path / "m"
    res = runner.invoke(app, ["mask", "--out", str(stem), "--shape", "200", "100", "--acceleration", "5"])
    assert res.exit_code == 0, res.output
    mask = np.load(tmp_path / "m.npy")
    assert mask.shape == (200, 100) and mask.dtype == bool
    assert abs(mask.size / mask.sum() - 5) / 5 < 0.02
    with open(tmp_path / "m_view_order.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == mask.sum()
    visited = {(int(r["ky"]), int(r["kz"])) for r in rows}
    assert visited == set(zip(*np.nonzero(mask), strict=True))
    assert Image.open(tmp_path / "m.png").getextrema() != (0, 0)
    assert "acceleration" in res.output


def test_impossible_mask_is_a_named_error(tmp_path):
    res = runner.invoke(app, ["mask", "--out", str(tmp_path / "m"), "--acceleration", "0.5"])
    assert res.exit_code == 2
    assert "MaskSpecError" in res.output
    assert not (tmp_path / "m.npy").exists()


def test_bundle_info_detects_tampering(tmp_path):
    folder = tmp_path / "b"
    save_bundle(RecurrentProximalNet(ModelConfig(copies=1, features=4)), folder, mask={}, training_data={})
    ok = runner.invoke(app, ["bundle-info", str(folder)])
    assert ok.exit_code == 0 and "sha256 verified" in ok.output
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    bad = runner.invoke(app, ["bundle-info", str(folder)])
    assert bad.exit_code == 2 and "BundleIntegrityError" in bad.output


def test_demo_runs_on_a_tiny_bundle(tmp_path):
    folder = tmp_path / "tiny"
    save_bundle(RecurrentProximalNet(ModelConfig(copies=2, features=4)), folder, mask={}, training_data={})
    out = tmp_path / "out"
    res = runner.invoke(app, ["demo", "--out", str(out), "--bundle", str(folder), "--device", "cpu", "--no-raw"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "demo.json").read_text())
    methods = {r["method"] for r in summary["rows"]}
    expected = {"zero_filled", "rgancs"} | ({"cs_wavelet", "cs_tv"} if bart_available() else set())
    assert methods == expected
    assert abs(summary["mask"]["acceleration"] - 5) / 5 < 0.02
    zf = [r["snr_db"] for r in summary["rows"] if r["method"] == "zero_filled"]
    assert all(5 < s < 40 for s in zf)  # a real, imperfect reconstruction of real anatomy
    if bart_available():  # the tuned CS baselines beat zero-filled on every slice
        cs = [r["snr_db"] for r in summary["rows"] if r["method"] == "cs_wavelet"]
        assert all(c > z for c, z in zip(cs, zf, strict=True))
    png = Image.open(out / "demo.png")
    assert png.size[0] > 4 * 176 and png.getextrema()[1] > 0


def test_replay_command_fails_with_a_named_error(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("not an ISMRMRD file")
    out = tmp_path / "out.h5"
    protocol = Path(__file__).resolve().parents[1] / "protocols" / "zero_filled.xml"
    res = runner.invoke(app, ["replay", str(bad), "--protocol", str(protocol), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "IsmrmrdFormatError" in res.output
    assert not out.exists()


def test_replay_command_refuses_cpp_protocols(tmp_path):
    protocol = tmp_path / "cpp.xml"
    protocol.write_text(
        "<configuration><version>2</version><readers/><writers/><stream><gadget><dll>gadgetron_mricore</dll>"
        "<classname>NoiseAdjustGadget</classname></gadget></stream></configuration>"
    )
    raw = Path(__file__).resolve().parents[1] / "sample_data" / "raw" / "brain2d_multislice.h5"
    res = runner.invoke(app, ["replay", str(raw), "--protocol", str(protocol), "--out", str(tmp_path / "o.h5")])
    assert res.exit_code == 2 and "ProtocolError" in res.output and "Gadgetron" in res.output
