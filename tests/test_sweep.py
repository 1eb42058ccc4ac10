"""Architecture sweep: a tiny copies x shared/independent grid on CPU, its table, results and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from conftest import ellipse_slices
from PIL import Image

from training.errors import TrainingConfigError
from training.sweep import make_grid, point_config, run_sweep, sweep

SIZE, N_SLICES = 32, 6


@pytest.fixture(scope="module")
def slices_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic 32x32 magnitude slices (ellipses with a small bright spot)."""
    path = tmp_path_factory.mktemp("data") / "slices.npy"
    np.save(path, ellipse_slices(N_SLICES, SIZE))
    return path


def base_raw(data: str) -> dict[str, Any]:
    return {
        "model": {"copies": 10, "blocks": 1, "features": 8},
        "data": {"path": data, "train_range": [0, 4], "val_range": [4, 6], "augment": False},
        "loss": {"lambda_gan": 0.0},
        "optim": {"lr": 1e-3, "batch_size": 2, "steps": 50},
        "run": {
            "out": "ignored",
            "checkpoint_every": 0,
            "validate_every": 0,
            "log_every": 1,
            "progress": False,
            "device": "cpu",
        },
    }


@pytest.fixture(scope="module")
def swept(slices_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("sweep")
    results = run_sweep(base_raw(str(slices_path)), copies=(1, 2), shared=(True, False), out_dir=out, steps=4)
    return out, results


def test_grid_and_overrides_leave_base_untouched(tmp_path: Path) -> None:
    assert make_grid((1, 2), (1,), (True, False)) == [(1, 1, True), (1, 1, False), (2, 1, True), (2, 1, False)]
    base = base_raw("x.npy")
    raw = point_config(base, (5, 2, False), tmp_path, steps=7)
    assert raw["model"] == {"copies": 5, "blocks": 2, "features": 8, "shared": False}
    assert raw["run"]["out"] == str(tmp_path / "5x2_independent") and raw["optim"]["steps"] == 7
    assert base["model"]["copies"] == 10 and base["optim"]["steps"] == 50 and base["run"]["out"] == "ignored"


def test_sweep_results_cover_the_grid(swept: tuple[Path, list[dict[str, Any]]]) -> None:
    out, results = swept
    saved = json.loads((out / "results.json").read_text())
    assert {(r["copies"], r["blocks"], r["shared"]) for r in saved} == set(make_grid((1, 2), (1,), (True, False)))
    for r in saved:
        assert np.isfinite([r["snr_db"], r["ssim"], r["zero_filled_snr_db"], r["train_seconds"]]).all()
        assert r["steps"] == 4
        run = out / r["name"]
        assert (run / "log.csv").is_file() and (run / "bundle").is_dir()
    assert saved == json.loads(json.dumps(results))
    # Same data, masks and seeds: every run sees the same zero-filled baseline.
    assert len({round(r["zero_filled_snr_db"], 6) for r in saved}) == 1


def test_independent_weights_have_more_parameters(swept: tuple[Path, list[dict[str, Any]]]) -> None:
    _, results = swept
    params = {(r["copies"], r["shared"]): r["parameters"] for r in results}
    assert params[(1, True)] == params[(1, False)]
    assert params[(2, False)] > params[(2, True)]
    assert params[(2, True)] - params[(1, True)] < 10  # shared: only per-copy step sizes are added


def test_table_has_one_row_per_copies_x_blocks(swept: tuple[Path, list[dict[str, Any]]]) -> None:
    out, results = swept
    lines = (out / "table.md").read_text().splitlines()
    assert "shared SNR (dB)" in lines[0] and "independent SSIM" in lines[0] and "parameters" in lines[0]
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == {"1x1", "2x1", "zero-filled"}
    by = {(r["copies"], r["shared"]): r for r in results}
    cells = [c.strip() for c in rows["2x1"].split("|")[2:-1]]
    assert cells[0] == f"{by[(2, True)]['snr_db']:.2f}" and cells[2] == f"{by[(2, False)]['snr_db']:.2f}"
    assert cells[5] == f"{by[(2, False)]['parameters']:,}"


def test_plots_exist_and_are_not_blank(swept: tuple[Path, list[dict[str, Any]]]) -> None:
    out, _ = swept
    for name in ("snr_vs_copies.png", "ssim_vs_copies.png"):
        img = np.asarray(Image.open(out / name).convert("L"), dtype=np.float32)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 5 and (img < 128).mean() > 0.005  # lines, text and axes drawn on white


def test_bad_grid_fails_before_training(slices_path: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingConfigError, match=r"\[model\]"):
        run_sweep(base_raw(str(slices_path)), [(0, 1, True)], out_dir=tmp_path / "s")
    with pytest.raises(TrainingConfigError, match="empty"):
        run_sweep(base_raw(str(slices_path)), [], out_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_cli_function_resolves_relative_paths(slices_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "slices.npy").write_bytes(slices_path.read_bytes())
    (folder / "base.toml").write_text(
        '[model]\nfeatures = 8\n[data]\npath = "slices.npy"\ntrain_range = [0, 4]\nval_range = [4, 6]\n'
        "[loss]\nlambda_gan = 0.0\n[optim]\nlr = 1e-3\nsteps = 100\n"
        '[run]\ncheckpoint_every = 0\nvalidate_every = 0\nprogress = false\ndevice = "cpu"\n'
    )
    out = tmp_path / "sweep"
    sweep(config=folder / "base.toml", out=out, copies="1", blocks="1", shared="true", steps=1)
    (result,) = json.loads((out / "results.json").read_text())
    assert result["name"] == "1x1_shared" and result["steps"] == 1
    with pytest.raises(typer.Exit):
        sweep(config=folder / "base.toml", out=out, copies="1", blocks="1", shared="maybe", steps=1)
    with pytest.raises(typer.Exit):
        sweep(config=folder / "missing.toml", out=out, copies="1", blocks="1", shared="true", steps=1)
