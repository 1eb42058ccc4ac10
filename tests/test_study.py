"""`recon-train study`: parsing with named errors, the front and the pick, and a tiny end-to-end study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ellipse_slices

from recon_plugin.coils import bart_available
from recon_plugin.simulate import with_smooth_phase
from training.errors import TrainingConfigError
from training.study import load_study, markdown_table, pareto_front, parse_study, pick, run_study, variant_config

SIZE = 48


def slices(n: int, size: int = SIZE) -> np.ndarray:
    """Complex phantom slices (ellipses with a smooth phase), as the eval tests use."""
    rng = np.random.default_rng(2)
    return np.stack([with_smooth_phase(m, rng) for m in ellipse_slices(n, size, seed=2)]).astype(np.complex64)


BASE = """
[model]
copies = 2
blocks = 1
features = 6
data_consistency = "cg"
cg_iterations = 2
init = "cg_sense"
init_iterations = 3
global_skip = true
norm = "none"

[data]
path = "s.npy"
train_range = [0, 8]
val_range = [8, 10]
simulation = "scanner"
mask_mixture = ["poisson:4-5"]
coil_range = [4, 4]
noise_range = [0.002, 0.004]
seed = 1

[loss]
eta = 1.0

[optim]
lr = 3e-3
batch_size = 2
steps = 1000
schedule = "cosine"

[run]
out = "never_used"
checkpoint_every = 0
validate_every = 0
progress = false
device = "cpu"
"""

STUDY = """
base = "base.toml"
out = "study"
steps = {steps}
primary = "sim 4 coils"
time_budget_ms = 60000

[overrides]
run = {{ checkpoint_every = 2 }}

[timing]
case = "48x48x4"
repeats = 1

[[variant]]
name = "cg_2x1x6"

[[variant]]
name = "gradient_2x1x6"
model = {{ data_consistency = "gradient" }}

[[eval]]
name = "sim 4 coils"
data = "s.npy"
slices = "8:10"
coils = 4
family = "poisson"
acceleration = 4
"""


def write_study(folder: Path, steps: int = 4) -> Path:
    np.save(folder / "s.npy", slices(10))
    (folder / "base.toml").write_text(BASE)
    path = folder / "study.toml"
    path.write_text(STUDY.format(steps=steps))
    return path


def test_variant_configs_share_the_budget_and_data(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, steps=7))
    a, b = (variant_config(study, v) for v in study.variants)
    assert a.optim.steps == b.optim.steps == 7  # the study's budget, not the base's 1000
    assert a.data == b.data and a.optim == b.optim and a.run.checkpoint_every == 2
    assert (a.model.data_consistency, b.model.data_consistency) == ("cg", "gradient")
    assert Path(a.run.out).name == "cg_2x1x6" and Path(a.run.out).parent == (tmp_path / "study").resolve()
    assert study.evals[0].data == str(tmp_path / "s.npy") and study.primary == "sim 4 coils"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown key colour"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"primary": "nowhere"}, "primary 'nowhere' is not one of the evals"),
        ({"variant": [{"name": "a"}, {"name": "a"}]}, "variant names must be unique"),
        ({"variant": [{"name": "a b"}]}, "usable as a folder name"),
        ({"variant": [{"name": "a", "modle": {"features": 8}}]}, "unknown section modle"),
        ({"eval": [{"name": "x", "data": "d", "accel": 4}]}, "unknown key accel"),
        ({"timing": {"case": "256x256x8", "repeat": 3}}, r"\[timing\] takes case"),
    ],
)
def test_bad_study_files_are_named(tmp_path: Path, change: dict, message: str) -> None:
    raw = {
        "base": "b.toml",
        "out": "o",
        "steps": 3,
        "variant": [{"name": "a"}],
        "eval": [{"name": "x", "data": "d"}],
        **change,
    }
    with pytest.raises(TrainingConfigError, match=message):
        parse_study(raw, tmp_path)


def test_missing_base_and_study_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TrainingConfigError, match="no study file"):
        load_study(tmp_path / "none.toml")
    study = parse_study(
        {"base": "none.toml", "out": "o", "steps": 1, "variant": [{"name": "a"}], "eval": [{"name": "x", "data": "d"}]},
        tmp_path,
    )
    with pytest.raises(TrainingConfigError, match=r"base configuration .* does not exist"):
        variant_config(study, study.variants[0])


def _row(name: str, ms: float | None, snr: float | None) -> dict:
    evals = {} if snr is None else {"p": {"snr_db": snr, "ssim": 0.9, "seconds": 1.0}}
    return {"name": name, "ms_per_slice": ms, "evals": evals}


def test_front_and_pick() -> None:
    rows = [_row("fast", 100, 20.0), _row("good", 900, 25.0), _row("worse", 950, 24.0), _row("slow", 5000, 26.0)]
    assert pareto_front(rows, "p") == ["fast", "good", "slow"]
    assert pick(rows, "p", None) == "slow"
    assert pick(rows, "p", 1000) == "good"  # the best within the time budget
    assert pick(rows, "p", 50) is None
    assert pick([_row("broken", 10, None)], "p", None) is None


@pytest.mark.skipif(not bart_available(), reason="BART is not installed (the CS baselines need it)")
def test_tiny_study_end_to_end(tmp_path: Path) -> None:
    """Two variants at an equal budget, evaluated beside zero-filled/CS-WV/CS-TV and timed; a rerun trains nothing."""
    study = load_study(write_study(tmp_path))
    result = run_study(study)
    out = tmp_path / "study"
    names = [r["name"] for r in result["variants"]]
    assert names == ["cg_2x1x6", "gradient_2x1x6"]
    for r in result["variants"]:
        entry = r["evals"]["sim 4 coils"]
        assert np.isfinite(entry["snr_db"]) and 0 < entry["ssim"] <= 1
        assert r["steps"] == 4 and r["ms_per_slice"] > 0 and r["parameters"] > 0
    base = result["evals"][0]["baselines"]
    assert set(base) == {"zero_filled", "cs_wavelet", "cs_tv"}
    assert base["cs_wavelet"]["snr_db"] > base["zero_filled"]["snr_db"]
    assert result["pick"] in result["front"] and set(result["front"]) <= set(names)
    table = (out / "study.md").read_text()
    assert table == markdown_table(result) + "\n"
    for name in ("zero_filled", "cs_wavelet", "cs_tv", "cg_2x1x6", "gradient_2x1x6", "**"):
        assert name in table
    assert (out / "study_front.png").stat().st_size > 1000
    assert json.loads((out / "study.json").read_text())["pick"] == result["pick"]
    assert len(list((out / "baselines").glob("*.json"))) == 1
    bundle = out / "cg_2x1x6" / "bundle" / "weights.safetensors"
    stamp = bundle.stat().st_mtime_ns
    again = run_study(load_study(tmp_path / "study.toml"))
    assert again["variants"] == result["variants"] and bundle.stat().st_mtime_ns == stamp
    retimed = run_study(load_study(tmp_path / "study.toml"), retime=True)  # timings again, nothing trained
    assert bundle.stat().st_mtime_ns == stamp and all(r["ms_per_slice"] > 0 for r in retimed["variants"])
    assert [r["evals"] for r in retimed["variants"]] == [r["evals"] for r in result["variants"]]
