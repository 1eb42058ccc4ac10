"""``recon-train``, the installed console script: every named error is one stderr line and exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script() -> str:
    path = Path(sys.executable).with_name("recon-train")
    if not path.exists():
        pytest.skip("recon-train is not installed in this environment")
    return str(path)


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        (["eval", "--data", "missing.npy"], "UnreadableImageError", "missing.npy does not exist"),
        (
            ["eval", "--data", str(ROOT / "sample_data" / "colin27_t1_axial.npz")],
            "UnreadableImageError",
            "neither a .npy array nor an HDF5 file",
        ),
        (["fit", "--config", "missing.toml"], "TrainingConfigError", "missing.toml"),
        (["fit", "--config", "bad.toml"], "TrainingConfigError", "bogus"),
        (["study", "--config", "bad.toml"], "TrainingConfigError", "bogus"),
        (["study", "--config", "broken.toml"], "TrainingConfigError", "not valid TOML"),
        (["sweep", "--config", "broken.toml", "--out", "sweep"], "TrainingConfigError", "not valid TOML"),
        (["copies", "--bundle", "nowhere", "--data", "missing.npy"], "InvalidInputError", "missing.npy"),
        (["copies", "--bundle", "nowhere", "--data", "images.npy"], "InvalidInputError", "--index 150 is out of range"),
        (["copies", "--bundle", "nowhere", "--data", "images.npy", "--index", "1"], "BundleError", "nowhere"),
        (["demo-bundle", "--out", "bundle"], "BundleError", "already holds a bundle"),
    ],
)
def test_named_error_is_one_line_and_exit_2(script: str, tmp_path: Path, args: list[str], error: str, text: str):
    (tmp_path / "bad.toml").write_text('[run]\nout = "run"\n[bogus]\na = 1\n')
    (tmp_path / "broken.toml").write_text("not = [toml\n  second line")
    np.save(tmp_path / "images.npy", np.ones((2, 8, 8), np.complex64))
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.json").write_text("{}")
    result = run(script, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "──" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{error}: ") and text in lines[0], lines[0]
    assert (tmp_path / "bundle" / "bundle.json").read_text() == "{}"  # demo-bundle left the folder alone
