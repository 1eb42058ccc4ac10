"""`recon-plugin bench`: figures on a tiny run, FLOP count, Markdown update, the CLI in quick form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon_plugin import cpu_features
from recon_plugin.bench import (
    MARK_END,
    MARK_START,
    Case,
    bench_problems,
    flops_per_slice,
    markdown,
    run_bench,
    write_json,
    write_markdown,
)
from recon_plugin.coils import bart_available
from recon_plugin.errors import FastPathError
from recon_plugin.model import ModelConfig
from recon_plugin.reconstructors.fast_paths import default_fast_path
from recon_plugin.sample_data import DEMO_BUNDLE


@pytest.fixture(scope="module")
def report():
    return run_bench(
        DEMO_BUNDLE,
        device="cpu",
        cases=[Case(64, 48, 1), Case(64, 48, 4)],
        batches=[1, 3],
        paths=["bf16", "channels_last"],
        slices=2,
        repeats=2,
        bart=bart_available(),
        cold=False,
    )


def test_problems_share_masks_and_have_references() -> None:
    a, b = bench_problems(Case(64, 48, 4), 2), bench_problems(Case(64, 48, 4), 2)
    assert len(a) == 2 and a[0].coils == 4 and a[0].shape == (64, 48)
    assert (a[0].mask == b[0].mask).all() and (a[0].kspace == b[0].kspace).all()  # seeded: same slices every run
    assert not (a[0].mask == a[1].mask).all()  # one mask per slice
    assert a[0].maps is not None and a[0].reference is not None


def test_every_method_and_path_is_timed_on_every_case(report) -> None:
    for case in ("64x48, 1 coil", "64x48, 4 coils"):
        rows = {(r.method, r.path): r for r in report.rows if r.case == case}
        for path in ("fp32", "bf16", "channels_last"):
            row = rows[("rgancs", path)]
            assert 0 < row.p50_ms <= row.p95_ms
            assert set(row.throughput) == {1, 3} and all(v > 0 for v in row.throughput.values())
            assert row.peak_mb and row.peak_mb > 0 and row.snr_db > 10
        assert rows[("rgancs", "bf16")].dsnr_db <= 0.05 and rows[("rgancs", "channels_last")].dsnr_db <= 0.05
        assert rows[("rgancs", "fp32")].dsnr_db is None  # the baseline itself
        assert rows[("zero_filled", "cpu")].p50_ms < rows[("rgancs", "fp32")].p50_ms  # A^H y vs ten network copies
        if bart_available():  # BART's latency runs on as many threads as torch: the same cores
            bart = f"bart ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
            assert rows[("cs_wavelet", bart)].p50_ms > 0 and rows[("cs_tv", bart)].snr_db > 10
    if bart_available():
        assert any("CS-WV / RGANCS latency" in k for k in report.ratios)


def test_flops_per_slice_by_hand() -> None:
    flops = flops_per_slice(ModelConfig(copies=10, blocks=1, features=128), Case(200, 100, 1))
    macs_per_pixel = 2 * 128 + 2 * 9 * 128 * 128 + 128 * 128 * 2 + 128 * 2
    assert flops["conv_gflop"] == pytest.approx(2 * macs_per_pixel * 20000 * 10 / 1e9)
    assert 130 < flops["total_gflop"] < 133  # about 131 GFLOP per 200x100 slice


def test_markdown_block_is_replaced_in_place(report, tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nintro\n\n{MARK_START}\nold figures\n{MARK_END}\n\nanalysis kept\n")
    write_markdown(report, doc)
    text = doc.read_text()
    assert "old figures" not in text and "intro" in text and "analysis kept" in text
    assert text.count(MARK_START) == 1 and "| 64x48, 4 coils | rgancs | bf16 |" in text
    assert markdown(report) in text
    data = json.loads(write_json(report, tmp_path / "b.json").read_text())
    assert {r["path"] for r in data["rows"] if r["method"] == "rgancs"} == {"fp32", "bf16", "channels_last"}
    assert data["hardware"]["device"] == "cpu"


def test_bad_fast_path_fails_before_anything_runs() -> None:
    with pytest.raises(FastPathError):
        run_bench(DEMO_BUNDLE, device="cpu", paths=["warp"], cold=False, bart=False)


def test_quick_cli_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recon_plugin.cli import app

    out = tmp_path / "bench.json"
    doc = tmp_path / "performance.md"
    args = ["bench", "--quick", "--case", "64x48x4", "--bundle", str(DEMO_BUNDLE), "--device", "cpu", "--no-bart"]
    res = CliRunner().invoke(app, [*args, "--json", str(out), "--markdown", str(doc)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["settings"]["quick"] is True and data["settings"]["batches"] == [1, 4]
    default = default_fast_path(torch.device("cpu")).name
    assert {r["path"] for r in data["rows"] if r["method"] == "rgancs"} == {"fp32", default}
    assert data["cold_start_s"]["fp32"] > 0  # a fresh process really reconstructed a slice
    cpu_class = "native bf16" if cpu_features.native_bf16() else "no native bf16"
    assert f"bench: {DEMO_BUNDLE.name} (10x1x32) on cpu, {cpu_class}" in res.output
    assert data["hardware"]["cpu_native_bf16"] is cpu_features.native_bf16() and MARK_START in doc.read_text()


def test_quick_mode_times_the_256x256_8_coil_case_and_the_default_path() -> None:
    from recon_plugin import bench

    assert (Case(256, 256, 8),) == bench.QUICK_CASES
    cpu = torch.device("cpu")
    assert bench.default_paths(cpu, quick=True) == list(dict.fromkeys(["fp32", default_fast_path(cpu).name]))


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_paths_only_where_the_cpu_has_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """bf16 is emulated (tens of times slower) on CPUs without AVX512-BF16/AMX: never timed or defaulted there."""
    from recon_plugin import bench, cpu_features

    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    cpu = torch.device("cpu")
    full = bench.default_paths(cpu, quick=False)
    assert any("bf16" in p for p in full) == native
    assert ("bf16" in bench.default_fast_path(cpu).name) == native
    assert all("bf16" not in p for p in bench.default_paths(cpu, quick=True)) or native
    assert ("mkldnn" in full) == torch.backends.mkldnn.is_available()  # the AVX2 default is timed in full runs


def test_cli_rejects_a_bad_case() -> None:
    from typer.testing import CliRunner

    from recon_plugin.cli import app

    res = CliRunner().invoke(app, ["bench", "--case", "200by100", "--bundle", str(DEMO_BUNDLE)])
    assert res.exit_code != 0 and "NYxNXxCOILS" in res.output


@pytest.mark.skipif(not bart_available(), reason="BART is not installed")
def test_bart_over_its_time_limit_keeps_the_other_figures_and_exits_2(tmp_path: Path) -> None:
    """A BART slice over --bart-time-limit: its rows name the timeout, RGANCS's figures are printed and saved,
    and the exit status is 2 (before: a hard-coded 60 s limit and a run that threw everything away)."""
    from typer.testing import CliRunner

    from recon_plugin.cli import app

    out = tmp_path / "bench.json"
    args = ["bench", "--case", "64x48x4", "--batch", "1", "--path", "fp32", "--slices", "1", "--repeats", "1"]
    args += ["--bundle", str(DEMO_BUNDLE), "--device", "cpu", "--no-cold", "--bart-time-limit", "0.001"]
    res = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "BartTimeoutError" in res.output
    data = json.loads(out.read_text())
    rgancs = [r for r in data["rows"] if r["method"] == "rgancs"]
    assert rgancs and rgancs[0]["p50_ms"] > 0  # measured and kept
    assert {r["method"] for r in data["rows"] if "BartTimeoutError" in (r["note"] or "")} == {"cs_wavelet", "cs_tv"}
    assert len(data["failures"]) == 2


def test_bart_time_limit_must_be_positive() -> None:
    from typer.testing import CliRunner

    from recon_plugin.cli import app

    res = CliRunner().invoke(app, ["bench", "--bart-time-limit", "0", "--bundle", str(DEMO_BUNDLE)])
    assert res.exit_code == 2 and "--bart-time-limit" in res.output
