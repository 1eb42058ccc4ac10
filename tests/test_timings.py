"""Per-exam stage timings: the timer, the gadget's image meta, replay's client-side intervals and
``replay --timings``, and the speed target's reference exam generator (at a tiny size)."""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from raw_helpers import tiny_3d
from rich.console import Console
from typer.testing import CliRunner

from recon_plugin import sample_raw as sr
from recon_plugin.cli import app
from recon_plugin.errors import InvalidInputError
from recon_plugin.kspace import Assembler, RetroSettings
from recon_plugin.pipeline import GadgetSettings, assemble, build_reconstructor, reconstruct_exam, stamp_timings
from recon_plugin.replay import exam_timings, format_timings, read_images, replay_file
from recon_plugin.replay.external import ExternalRun
from recon_plugin.replay.streams import StreamRun
from recon_plugin.replay.timing import STREAMING_ROW, UNACCOUNTED_ROW, final_stages
from recon_plugin.timings import STAGE_META, StageTimer, is_stage_meta, meta_name, stage_seconds

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "protocols"
runner = CliRunner()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- the timer


def test_stages_accumulate_in_pipeline_order() -> None:
    clock = FakeClock()
    timer = StageTimer("rgancs", clock=clock)
    with timer.stage("encode"):
        clock.now += 0.5
    with timer.stage("my_extra"):
        clock.now += 0.25
    with timer.stage("coil_maps"):
        clock.now += 2.0
    with timer.stage("encode"):
        clock.now += 0.25
    timer.add("receive", 3.0)
    assert list(timer.stages) == ["receive", "coil_maps", "encode", "my_extra"]  # known order first
    assert timer.seconds("encode") == pytest.approx(0.75) and timer.seconds("network") == 0.0
    assert timer.total() == pytest.approx(3.0)  # after the last acquisition: receive excluded
    assert timer.total(["receive", "encode"]) == pytest.approx(3.75)


def test_a_failing_stage_still_counts_and_negative_durations_are_refused() -> None:
    clock = FakeClock()
    timer = StageTimer(clock=clock)
    with pytest.raises(RuntimeError), timer.stage("network"):
        clock.now += 1.5
        raise RuntimeError("boom")
    assert timer.seconds("network") == pytest.approx(1.5)
    with pytest.raises(ValueError, match="negative"):
        timer.add("bart", -0.1)


def test_marks() -> None:
    clock = FakeClock()
    timer = StageTimer(clock=clock)
    assert timer.between("first_acquisition", "last_acquisition") is None and timer.since("x") is None
    timer.mark("first_acquisition")
    clock.now += 1.0
    timer.mark("last_acquisition")
    clock.now += 1.0
    timer.mark("last_acquisition")  # a later mark replaces the earlier
    clock.now += 0.5
    assert timer.between("first_acquisition", "last_acquisition") == pytest.approx(2.0)
    assert timer.since("last_acquisition") == pytest.approx(0.5)
    timer.add("coil_maps", 0.25)
    line = timer.summary()
    assert "coil maps 0.250 s" in line and "last acquisition -> now 0.500 s" in line


def test_meta_round_trip() -> None:
    assert meta_name("coil_maps") == STAGE_META["coil_maps"] == "StageCoilMapsSeconds"
    assert STAGE_META["network"] == "StageNetworkSeconds" and STAGE_META["bart"] == "StageBartSeconds"
    timer = StageTimer()
    timer.add("metrics", 0.125)
    timer.add("assembly", 1.0)
    timer.add("my_extra", 2.0)
    meta = timer.meta()
    assert all(is_stage_meta(name) for name in meta) and not is_stage_meta("ReconSeconds")
    meta["Method"] = "rgancs"
    meta["StageBrokenSeconds"] = "n/a"  # not a number: skipped
    meta["StageEncodeSeconds"] = ["0.5"]  # ISMRMRD meta values may be one-element lists
    assert stage_seconds(meta) == {"assembly": 1.0, "metrics": 0.125, "encode": 0.5, "my_extra": 2.0}


# --------------------------------------------------------------------------- the pipeline


def test_deferred_reference_and_maps_equal_the_plain_assembly() -> None:
    """Timing the coil maps apart must not change the problems, references or images."""
    scan = sr.build_raw(tiny_3d())
    retro = RetroSettings(acceleration=4, calib=8)
    plain = Assembler(scan.header, retro=retro)
    for acq in scan.acquisitions:
        plain.add(acq)
    expected = plain.problems()
    settings = GadgetSettings(method="zero_filled", retro=retro)
    timer = StageTimer("zero_filled")
    got = assemble(scan.header, scan.acquisitions, settings, timer)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.full_kspace is None and a.problem.maps_source == "espirit"
        np.testing.assert_array_equal(a.problem.reference, b.problem.reference)
        np.testing.assert_array_equal(a.problem.maps, b.problem.maps)
    images = reconstruct_exam(got, build_reconstructor(settings), settings, timer)
    stamp_timings(images, timer)
    assert list(timer.stages) == [
        "receive",
        "assembly_add",
        "assembly",
        "coil_maps",
        "reference",
        "zero_filled",
        "metrics",
        "encode",
    ]
    assert all(s >= 0 for s in timer.stages.values()) and timer.seconds("coil_maps") > 0
    for image in images:
        assert stage_seconds(dict(image.meta)) == pytest.approx(timer.stages, abs=1e-6)
        assert float(image.meta["SNR_dB"]) > 0


# --------------------------------------------------------------------------- the reference exam


@pytest.fixture(scope="module")
def small_exam(tmp_path_factory) -> Path:
    """The reference exam at 4 planes of 48 x 24 with 2 coils, written by the CLI."""
    out = tmp_path_factory.mktemp("exam") / "ref.h5"
    res = runner.invoke(app, ["reference-exam", str(out), "--planes", "4", "--plane", "48", "24", "--coils", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_reference_exam_has_the_requested_planes(small_exam: Path) -> None:
    from recon_plugin.replay import read_raw

    raw = read_raw(small_exam)
    assembler = Assembler(raw.header_xml)
    for acq in raw.acquisitions:
        assembler.add(acq)
    assert assembler.encoding.encoded == (8, 48, 24) and assembler.encoding.recon == (4, 48, 24)
    items = assembler.problems()
    assert len(items) == 4  # one ky-kz plane per readout position after oversampling removal
    assert all(i.problem.shape == (48, 24) and i.problem.coils == 2 and i.problem.mask.all() for i in items)
    assert assembler.acquisitions == 48 * 24


def test_reference_exam_images_the_bundled_anatomy() -> None:
    recipe = sr.ReferenceExamRecipe(planes=8, plane=(40, 20), coils=2, noise_std=0.0)
    scan = sr.make_reference_exam(recipe)
    truth = np.abs(scan.truth)  # [kz, ky, x]
    assert truth.shape == (20, 40, 8)
    assert truth.max() > 0.3 and (truth < 1e-3).mean() > 0.05  # a head with air around it, not a blank or a block
    assert scan.simulation.coils == 2 and scan.simulation.geometry.voxel_mm == pytest.approx((154 / 8, 5.5, 4.5))


@pytest.mark.parametrize("kwargs", [{"planes": 3}, {"planes": 0}, {"plane": (1, 20)}, {"coils": 0}])
def test_reference_exam_refuses_impossible_sizes(kwargs) -> None:
    with pytest.raises(InvalidInputError, match="reference exam"):
        sr.make_reference_exam(sr.ReferenceExamRecipe(**kwargs))


# --------------------------------------------------------------------------- replay


def test_replay_reports_stage_meta_and_client_intervals(small_exam: Path, tmp_path: Path) -> None:
    summary = replay_file(small_exam, PROTOCOLS / "zero_filled_retro5x.xml", tmp_path / "out.h5", progress=False)
    images = read_images(tmp_path / "out.h5")[1]
    assert len(images) == 4
    for image in images:
        stages = stage_seconds(dict(image.meta))
        for stage in ("setup", "receive", "assembly_add", "assembly", "coil_maps", "zero_filled", "metrics", "encode"):
            assert stages[stage] >= 0, stage
        assert "send" not in stages and "network" not in stages  # sending is logged, not known before it
    (timing,) = summary.timings
    assert timing.series == (1,) and timing.images == 4 and "zero_filled" in timing.source
    # streamed one plane per batch (CPU): the exam's totals are on the last image, not the first
    first_stages, last_stages = (stage_seconds(dict(images[i].meta)) for i in (0, -1))
    assert timing.stages == last_stages != first_stages
    assert last_stages["zero_filled"] > first_stages["zero_filled"]
    assert last_stages["coil_maps"] == first_stages["coil_maps"]  # complete before the first batch
    first, spread = timing.acquisition_to_first_image, timing.first_to_last_image
    headline = timing.acquisition_to_last_image
    assert first is not None and spread is not None and headline is not None
    assert 0 <= first <= headline and spread >= 0
    assert first + spread == pytest.approx(headline)
    assert headline <= timing.run_seconds <= summary.seconds
    assert timing.unaccounted == pytest.approx(headline - timing.post_acquisition_stages)


def test_replay_command_prints_timings_only_when_asked(small_exam: Path, tmp_path: Path) -> None:
    protocol = str(PROTOCOLS / "zero_filled_retro5x.xml")
    args = ["replay", str(small_exam), "--protocol", protocol, "--no-progress"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "a.h5")], terminal_width=200)
    timed = runner.invoke(app, [*args, "--out", str(tmp_path / "b.h5"), "--timings"], terminal_width=200)
    assert plain.exit_code == 0 and timed.exit_code == 0, timed.output
    assert "last acquisition -> last image" not in plain.output
    for row in (
        "coil maps",
        "zero filled",
        "last acquisition -> first image",
        STREAMING_ROW,
        "last acquisition -> last image",
        "unaccounted",
    ):
        assert row in timed.output


# --------------------------------------------------------------------------- streamed stage totals


def streamed_image(index: int, stages: dict[str, float] | None) -> ismrmrd.Image:
    image = ismrmrd.Image.from_array(np.zeros((4, 4), np.float32))
    image.image_index = index
    image.image_series_index = 2
    image.meta["Method"] = "rgancs"
    if stages is not None:
        timer = StageTimer()
        for name, seconds in stages.items():
            timer.add(name, seconds)
        stamp_timings([image], timer)
    return image


BEFORE = {"setup": 2.0, "receive": 5.0, "assembly_add": 0.5, "assembly": 0.25, "coil_maps": 1.0}


def batch_stages(batches: int) -> dict[str, float]:
    """A gadget's stages just before it sends batch ``batches`` (1-based): the recon stages accumulate."""
    return {**BEFORE, "network": 0.5 * batches, "metrics": 0.125 * batches, "encode": 0.0625 * batches}


def streamed_run(images: list[ismrmrd.Image]) -> StreamRun:
    run = ExternalRun(step=None, images=images, seconds=20.0)  # type: ignore[arg-type]
    run.last_acquisition_sent_at, run.first_image_at, run.last_image_at = 100.0, 102.5, 104.0
    return StreamRun(key="rgancs", runs=[run])


def test_exam_timing_takes_the_totals_from_the_last_image_sent() -> None:
    # three batches of two slices; every image carries the stages known just before its batch was sent
    images = [streamed_image(2 * b + s + 1, batch_stages(b + 1)) for b in range(3) for s in range(2)]
    (timing,) = exam_timings(streamed_run(images))
    assert timing.source == "rgancs" and timing.series == (2,) and timing.images == 6
    assert timing.stages == pytest.approx(batch_stages(3))  # the first image would say network 0.5
    assert timing.stages["network"] == pytest.approx(1.5)
    totals = 0.25 + 1.0 + 1.5 + 0.375 + 0.1875  # assembly, coil maps, network, metrics, encode
    assert timing.post_acquisition_stages == pytest.approx(totals)
    assert timing.acquisition_to_first_image == pytest.approx(2.5)
    assert timing.first_to_last_image == pytest.approx(1.5)
    assert timing.acquisition_to_last_image == pytest.approx(4.0)
    # the totals already hold the later batches' reconstruction: the streaming interval is not subtracted again
    assert timing.unaccounted == pytest.approx(4.0 - totals)
    assert timing.post_acquisition_stages + timing.unaccounted == pytest.approx(timing.acquisition_to_last_image)


def test_final_stages_picks_the_largest_cumulative_total() -> None:
    first, last = batch_stages(1), batch_stages(2)
    assert final_stages([]) == {}
    assert final_stages([streamed_image(1, None)]) == {}  # no stage meta at all
    # an image without stage meta arriving last does not hide the totals
    assert final_stages([streamed_image(1, first), streamed_image(2, last), streamed_image(3, None)]) == pytest.approx(
        last
    )
    # the largest total wins even when it is not the last arrival; on a tie the later arrival
    assert final_stages([streamed_image(1, last), streamed_image(2, first)]) == pytest.approx(last)
    tied = {**first, "network": first["network"] + 0.0625, "metrics": first["metrics"] - 0.0625}
    assert final_stages([streamed_image(1, first), streamed_image(2, tied)]) == pytest.approx(tied)


def test_timing_table_labels_the_streaming_interval() -> None:
    images = [streamed_image(b + 1, batch_stages(b + 1)) for b in range(3)]
    table = format_timings(exam_timings(streamed_run(images)))
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 2}
    assert STREAMING_ROW.startswith("streaming: first -> last image") and STREAMING_ROW in lines
    assert "first -> last image (send + transfer)" not in text
    assert "1.500" in lines["network"]  # the totals, not the first batch's 0.500
    assert "3.312" in lines["stages after last acquisition (sum)"]  # 3.3125
    assert "0.688" in lines[UNACCOUNTED_ROW]  # 4.0 - 3.3125
