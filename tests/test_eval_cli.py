"""`recon-train eval`: images, multi-coil k-space, k-space folders and ISMRMRD raw through one mask and one set of
coil maps per slice; named errors exit 2 with one line on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ellipse_slices
from raw_helpers import tiny_2d

from recon_plugin import sample_raw as sr
from recon_plugin.adaptation import AdaptSettings
from recon_plugin.coils import bart_available
from recon_plugin.evaluation import mask_digest
from recon_plugin.masks import make_mask
from recon_plugin.model import ModelConfig, RecurrentProximalNet, load_bundle, save_bundle
from recon_plugin.physics import fft2c
from recon_plugin.simulate import birdcage_coil_maps, with_smooth_phase
from training.cli import main

SIZE = 48
ALL = "zero_filled,cs_wavelet,cs_tv,rgancs"
needs_bart = pytest.mark.skipif(not bart_available(), reason="BART not installed")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 complex 48x48 phantom slices, the same as 4-coil k-space, a tiny bundle."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(3)
    images = np.stack([with_smooth_phase(m, rng) for m in ellipse_slices(8, SIZE, seed=2)])
    np.save(root / "images.npy", images)
    maps = birdcage_coil_maps((SIZE, SIZE), 4)
    np.save(root / "kspace.npy", fft2c(maps[None] * images[:, None]).astype(np.complex64))
    save_bundle(RecurrentProximalNet(ModelConfig(copies=2, features=8)), root / "bundle", mask={}, training_data={})
    return {"root": root, "images": root / "images.npy", "kspace": root / "kspace.npy", "bundle": root / "bundle"}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``recon-train ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def evaluate(files: dict[str, Path], tmp_path: Path, capsys, *args: str) -> dict:
    out = tmp_path / "r.json"
    argv = ["eval", "--bundle", str(files["bundle"]), "--device", "cpu", "--iterations", "20", "--json", str(out)]
    code, stdout, stderr = run([*argv, *args], capsys)
    assert code == 0, stdout + stderr
    return json.loads(out.read_text())


def check_report(report: dict, methods: list[str], slices: int, distinct_masks: bool = True) -> None:
    """Rows per method and slice, means = mean of the rows, one mask per slice shared by every method (and, for
    seeded random families, a different one per slice)."""
    assert set(report) == {"rows", "means", "settings"}
    rows = report["rows"]
    assert len(rows) == len(methods) * slices
    for row in rows:
        assert {"method", "slice", "snr_db", "ssim", "seconds"} <= set(row)
        assert np.isfinite(row["snr_db"]) and -1 <= row["ssim"] <= 1 and row["seconds"] >= 0
    assert [m["method"] for m in report["means"]] == methods
    for mean in report["means"]:
        sel = [r for r in rows if r["method"] == mean["method"]]
        assert mean["slices"] == len(sel) == slices
        for key in ("snr_db", "ssim", "seconds"):
            assert mean[key] == pytest.approx(np.mean([r[key] for r in sel]))
    by_slice: dict[str, set[str]] = {}
    for row in rows:
        by_slice.setdefault(row["slice"], set()).add(row["mask"])
    assert all(len(d) == 1 for d in by_slice.values())  # every method saw the same mask
    if distinct_masks:
        assert len({d.pop() for d in by_slice.values()}) == slices  # and each slice its own (seed + i)


@needs_bart
def test_images_all_methods(files, tmp_path, capsys):
    out_md = tmp_path / "t.md"
    report = evaluate(
        files, tmp_path, capsys, "--data", str(files["images"]), "--slices", "2:5", "--methods", ALL,
        "--out", str(out_md), "--calib", "8",
    )  # fmt: skip
    check_report(report, ALL.split(","), 3)
    s = report["settings"]
    assert s["kind"] == "images" and s["slices"] == ["slice_2", "slice_3", "slice_4"]
    assert s["family"] == "radial" and s["acceleration"] == 5.0 and s["seed"] == 200 and s["calib"] == 8
    assert s["coils"] == [1] and not s["coils_simulated"]
    assert Path(s["bundle"]).resolve() == files["bundle"].resolve() and not Path(s["bundle"]).is_absolute()
    assert s["bundle_sha256"] == load_bundle(files["bundle"]).sha256
    # The masks are make_mask(family, shape, R, seed=seed + i, calib=calib) for the i-th selected slice.
    expected = [make_mask("radial", (SIZE, SIZE), 5.0, seed=200 + i, calib=8) for i in range(3)]
    zf = [r for r in report["rows"] if r["method"] == "zero_filled"]
    assert [r["mask"] for r in zf] == [mask_digest(m.mask) for m in expected]
    assert s["acceleration_achieved"] == pytest.approx(np.mean([m.acceleration for m in expected]))
    cs = {r["slice"]: r["snr_db"] for r in report["rows"] if r["method"] == "cs_wavelet"}
    assert all(cs[r["slice"]] > r["snr_db"] for r in zf)  # the baseline does its job on these slices
    table = out_md.read_text()
    assert "mean of 3" in table and f"{report['means'][0]['snr_db']:.2f}" in table


def test_simulated_coils_change_the_problem(files, tmp_path, capsys):
    common = ["--data", str(files["images"]), "--slices", "0:3", "--methods", "zero_filled", "--calib", "12"]
    one = evaluate(files, tmp_path, capsys, *common)
    four = evaluate(files, tmp_path, capsys, *common, "--coils", "4")
    check_report(four, ["zero_filled"], 3)
    assert four["settings"]["coils"] == [4] and four["settings"]["coils_simulated"]
    assert four["settings"]["bundle"] is None
    assert [r["mask"] for r in one["rows"]] == [r["mask"] for r in four["rows"]]  # same masks ...
    snr1, snr4 = (np.array([r["snr_db"] for r in rep["rows"]]) for rep in (one, four))
    assert np.all(np.abs(snr1 - snr4) > 0.05)  # ... different acquisitions (coil-weighted, ESPIRiT-combined)


def test_rank4_kspace_matches_simulated_coils(files, tmp_path, capsys):
    """The rank-4 k-space holds exactly what --coils 4 simulates: identical zero-filled images, and a reference
    (full k-space combined with the ESPIRiT maps) close to the true image."""
    common = ["--slices", "0:3", "--methods", "zero_filled,rgancs", "--calib", "12"]
    sim = evaluate(files, tmp_path, capsys, "--data", str(files["images"]), "--coils", "4", *common)
    ks = evaluate(files, tmp_path, capsys, "--data", str(files["kspace"]), *common)
    check_report(ks, ["zero_filled", "rgancs"], 3)
    assert ks["settings"]["kind"] == "kspace" and ks["settings"]["coils"] == [4]
    assert not ks["settings"]["coils_simulated"]
    for a, b in zip(sim["rows"], ks["rows"], strict=True):
        assert a["mask"] == b["mask"] and a["snr_db"] == pytest.approx(b["snr_db"], abs=0.25)  # measured 0.05


def test_kspace_folder_names_and_legacy_layout(files, tmp_path, capsys):
    folder = tmp_path / "data" / "multicoil_kspace"
    folder.mkdir(parents=True)
    full = np.load(files["kspace"])
    np.save(folder / "head_kspace.npy", full[0])
    np.save(folder / "knee_kspace.npy", full[1:3])  # rank 4 in a folder: two slices
    under = full[3] * make_mask("poisson", (SIZE, SIZE), 3, seed=0).mask
    np.save(folder / "under_kspace.npy", under)
    np.save(folder / "maps.npy", full[0])  # not *_kspace: ignored
    code, _, err = run(["eval", "--data", str(folder), "--methods", "zero_filled", "--calib", "12"], capsys)
    assert code == 2 and err.startswith("NotFullySampledError:") and "under" in err
    picked = ["--names", "knee,head", "--methods", "zero_filled", "--calib", "12", "--mask-family", "poisson"]
    report = evaluate(files, tmp_path, capsys, "--data", str(folder), *picked)
    check_report(report, ["zero_filled"], 3)
    assert report["settings"]["kind"] == "kspace_folder"
    assert report["settings"]["slices"] == ["knee[0]", "knee[1]", "head"]
    legacy = evaluate(files, tmp_path, capsys, "--data", str(folder.parent), *picked, "--slices", "2:3")
    assert legacy["settings"]["slices"] == ["head"]
    assert legacy["rows"][0]["snr_db"] != report["rows"][2]["snr_db"]  # seed + 0 now, seed + 2 before


def test_ismrmrd_folder(files, tmp_path, capsys):
    folder = tmp_path / "raw"
    scan = sr.build_raw(tiny_2d())
    sr.write_ismrmrd(folder / "scan.h5", scan.header, scan.acquisitions)
    (folder / "notes.txt").write_text("not raw data")
    args = ["--data", str(folder), "--methods", "zero_filled,rgancs", "--mask-family", "lines", "--calib", "8"]
    report = evaluate(files, tmp_path, capsys, *args, "--acceleration", "2")
    check_report(report, ["zero_filled", "rgancs"], 3)  # three 2D slices of 24 x 32, 4 coils, prewhitened
    s = report["settings"]
    assert s["kind"] == "ismrmrd" and s["slices"] == ["scan/0", "scan/1", "scan/2"] and s["coils"] == [4]
    assert s["acceleration_achieved"] == pytest.approx(2.0)
    zf = [r["snr_db"] for r in report["rows"] if r["method"] == "zero_filled"]
    assert all(5 < v < 40 for v in zf)


@needs_bart
def test_uniform_family_defaults_to_24_acs_lines(files, tmp_path, capsys):
    args = ["--data", str(files["kspace"]), "--slices", "0:2", "--mask-family", "uniform", "--acceleration", "3"]
    report = evaluate(files, tmp_path, capsys, *args, "--methods", "zero_filled,cs_tv")
    check_report(report, ["zero_filled", "cs_tv"], 2, distinct_masks=False)  # R = 3 has only 3 lattice phases
    assert report["settings"]["calib"] == 24 and report["settings"]["family"] == "uniform"
    expected = make_mask("uniform", (SIZE, SIZE), 3, seed=200, calib=24)
    assert report["rows"][0]["mask"] == mask_digest(expected.mask)


def bad_inputs(root: Path) -> list[tuple[str, list[str]]]:
    """(error name, eval arguments) for each kind of bad input; writes the files it needs under ``root``."""
    rng = np.random.default_rng(0)
    img = (rng.standard_normal((2, 32, 32)) + 1j * rng.standard_normal((2, 32, 32))).astype(np.complex64)
    np.save(root / "rank2.npy", img[0])
    nan = img.copy()
    nan[1, 3, 4] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "tiny.npy", img[:, :12, :12])
    np.save(root / "small.npy", img[:, :20, :20])
    np.save(root / "real_kspace.npy", np.abs(img)[:, None])  # rank 4, real
    (root / "junk.npy").write_bytes(b"not an array")
    (root / "empty").mkdir(exist_ok=True)
    images = str(root / "images.npy")
    zf = ["--methods", "zero_filled"]
    return [
        ("UnreadableImageError", ["--data", str(root / "missing.npy")]),
        ("UnreadableImageError", ["--data", str(root / "junk.npy")]),
        ("UnreadableImageError", ["--data", str(root / "empty")]),
        ("ShapeMismatchError", ["--data", str(root / "rank2.npy")]),
        ("NonFiniteDataError", ["--data", str(root / "nan.npy"), *zf]),
        ("ImageTooSmallError", ["--data", str(root / "tiny.npy"), *zf]),
        ("ImageTooSmallError", ["--data", str(root / "small.npy"), "--calib", "24", *zf]),
        ("InvalidInputError", ["--data", str(root / "real_kspace.npy"), *zf]),
        ("EmptyDatasetError", ["--data", images, "--slices", "3:3"]),
        ("InvalidInputError", ["--data", images, "--slices", "1-3"]),
        ("InvalidInputError", ["--data", images, "--slices", "140:160"]),
        ("InvalidInputError", ["--data", images, "--methods", "zero_filled,nufft"]),
        ("InvalidInputError", ["--data", str(root / "kspace.npy"), "--coils", "4", *zf]),
        ("MaskSpecError", ["--data", images, "--mask-family", "spiral", *zf]),
        ("MaskSpecError", ["--data", images, "--acceleration", "0.5", *zf]),
        ("MaskSpecError", ["--data", images, "--mask-family", "uniform", "--acceleration", "2.5", *zf]),
        ("CoilMapError", ["--data", images, "--coils", "4", "--calib", "4", *zf]),
        ("BundleError", ["--data", images, "--bundle", str(root / "no_bundle"), "--methods", "rgancs"]),
    ]


def test_bad_inputs_exit_2_with_one_named_line(files, capsys):
    for name, args in bad_inputs(files["root"]):
        code, out, err = run(["eval", "--device", "cpu", "--iterations", "20", *args], capsys)
        assert code == 2, (name, args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{name}: "), (name, args, err)
        assert "Traceback" not in out + err


def test_missing_bart_is_named_unless_excluded(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOOLBOX_PATH", str(tmp_path))  # holds no bart
    args = ["eval", "--data", str(files["images"]), "--slices", "0:1", "--calib", "8", "--device", "cpu"]
    code, _, err = run([*args, "--bundle", str(files["bundle"])], capsys)
    assert code == 2 and err.startswith("BartNotFoundError: ")
    code, out, err = run([*args, "--bundle", str(files["bundle"]), "--methods", "zero_filled,rgancs"], capsys)
    assert code == 0 and "rgancs" in out and "mean of 1" in out, err


def test_default_bundle_is_the_gadgets_one(files, tmp_path, capsys):
    from recon_plugin.pipeline import default_weights

    out = tmp_path / "r.json"
    args = ["eval", "--data", str(files["images"]), "--slices", "0:1", "--methods", "rgancs", "--device", "cpu"]
    code, stdout, stderr = run([*args, "--json", str(out)], capsys)
    assert code == 0, stdout + stderr
    settings = json.loads(out.read_text())["settings"]
    assert Path(settings["bundle"]).resolve() == default_weights("cpu").resolve()
    assert settings["bundle_sha256"] == load_bundle(default_weights("cpu")).sha256


def test_table_is_not_cut_when_piped(files):
    """The real console script: full rows on a pipe, and a named error as one stderr line, no traceback."""
    script = Path(sys.executable).with_name("recon-train")
    if not script.exists():
        pytest.skip("recon-train is not installed in this environment")
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    args = [str(script), "eval", "--data", str(files["images"]), "--slices", "0:2", "--methods", "zero_filled"]
    ok = subprocess.run([*args, "--calib", "8"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert any(len(line) > 80 for line in ok.stdout.splitlines())  # the settings line is not wrapped
    assert sum("zero_filled" in line and "slice_" in line for line in ok.stdout.splitlines()) == 2
    bad = subprocess.run([*args, "--slices", "x"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("InvalidInputError: ")


def test_other_commands_get_named_errors(files, tmp_path, capsys):
    args = ["copies", "--bundle", str(tmp_path / "none"), "--data", str(files["images"]), "--index", "0"]
    code, out, err = run(args, capsys)
    assert code == 2 and err.startswith("BundleError: ") and "Traceback" not in out + err


def test_rank3_kspace_is_read_as_images_with_a_warning(files, tmp_path, capsys, caplog):
    """Rank decides (rank 3 = images), but one slice of multi-coil k-space passed as a file is flagged."""
    np.save(tmp_path / "one_kspace.npy", np.load(files["kspace"])[0])
    args = ["--data", str(tmp_path / "one_kspace.npy"), "--methods", "zero_filled", "--calib", "8"]
    with caplog.at_level("WARNING", logger="training.evaluate"):
        report = evaluate(files, tmp_path, capsys, *args)
    assert report["settings"]["kind"] == "images" and len(report["rows"]) == 4  # the 4 coils as 4 "images"
    assert "looks like k-space" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="training.evaluate"):
        evaluate(files, tmp_path, capsys, "--data", str(files["images"]), "--slices", "0:1", *args[2:])
    assert "looks like k-space" not in caplog.text


def test_slices_take_an_optional_step() -> None:
    from recon_plugin.errors import InvalidInputError
    from training.evaluate import EmptyDatasetError, parse_slices

    assert list(parse_slices("140:160:4", 160)) == [140, 144, 148, 152, 156]
    assert list(parse_slices("2:5", 10)) == [2, 3, 4] and list(parse_slices(":3:", 10)) == [0, 1, 2]
    for bad in ("1:2:0", "1:2:3:4", "a:b", "1:20"):
        with pytest.raises(InvalidInputError):
            parse_slices(bad, 10)
    with pytest.raises(EmptyDatasetError):
        parse_slices("5:5", 10)


def test_adapted_rgancs_is_recorded_and_differs_from_the_plain_one(files, tmp_path, capsys):
    common = ["--data", str(files["kspace"]), "--slices", "0:2", "--methods", "rgancs", "--calib", "12"]
    plain = evaluate(files, tmp_path, capsys, *common)
    adapted = evaluate(files, tmp_path, capsys, *common, "--adapt-steps", "3", "--adapt-lr", "1e-3")
    two = evaluate(
        files, tmp_path, capsys, *common, "--adapt-steps", "3", "--adapt-split", "points", "--adapt-splits", "2"
    )
    assert two["settings"]["adapt"] == {"steps": 3, "lr": AdaptSettings().lr, "split": "points", "splits": 2}
    assert "adapt" not in plain["settings"]
    assert adapted["settings"]["adapt"] == {"steps": 3, "lr": 1e-3, "split": "auto", "splits": 1}
    for a, b in zip(plain["rows"], adapted["rows"], strict=True):
        assert a["mask"] == b["mask"] and a["snr_db"] != b["snr_db"]
    code, _, stderr = run(["eval", "--data", str(files["kspace"]), "--adapt-steps", "-1"], capsys)
    assert code == 2 and "adapt-steps" in stderr
    code, _, stderr = run(
        ["eval", "--data", str(files["kspace"]), "--adapt-steps", "1", "--adapt-split", "rows"], capsys
    )
    assert code == 2 and "adaptation split must be one of points, lines, mixed" in stderr
