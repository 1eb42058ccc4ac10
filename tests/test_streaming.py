"""Scanner path: images leave the gadget batch by batch as they are reconstructed, and the torch thread cap."""

from __future__ import annotations

import itertools
import struct
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

import ismrmrd
import numpy as np
import pytest
import torch
from raw_helpers import tiny_3d

from recon_plugin import gadgets
from recon_plugin import sample_raw as sr
from recon_plugin.errors import ProtocolError
from recon_plugin.pipeline import (
    GadgetSettings,
    apply_threads,
    assemble,
    default_threads,
    reconstruct_exam,
    stream_batch_size,
    stream_exam,
)
from recon_plugin.reconstructors import ZeroFilled
from recon_plugin.timings import STAGE_META, is_stage_meta, stage_seconds

PAUSE = 0.05  # seconds the stub spends per batch


class RecordingReconstructor(ZeroFilled):
    """Zero-filled, but slow and recording when each batch is reconstructed (and torch's thread count)."""

    def __init__(self, events: list[tuple[str, Any, float]], batch_size: int = 1, fail_at: int | None = None) -> None:
        self.events = events
        self.batch_size = batch_size
        self.fail_at = fail_at
        self.calls = 0
        self.threads_seen: list[int] = []

    def reconstruct_batch(self, problems):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.threads_seen.append(torch.get_num_threads())
        self.events.append(("recon_start", len(problems), time.perf_counter()))
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("stub failure")
        time.sleep(PAUSE)
        results = super().reconstruct_batch(problems)
        self.events.append(("recon_end", len(problems), time.perf_counter()))
        return results


class FakeConnection:
    """What the gadgets use of ``gadgetron.external.Connection``, recording every send."""

    def __init__(self, scan: sr.SimulatedScan, props: dict[str, str], events: list[tuple[str, Any, float]]) -> None:
        root = ET.Element("configuration")
        for name, value in props.items():
            ET.SubElement(root, "property", name=name, value=value)
        self.config = root
        self.header = scan.header
        self._items = list(scan.acquisitions)
        self.events = events
        self.sent: list[ismrmrd.Image] = []
        self.errors: list[str] = []
        self.socket = self

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from self._items

    def send(self, image: ismrmrd.Image) -> None:
        self.events.append(("send", int(image.image_index), time.perf_counter()))
        self.sent.append(image)

    def write(self, data: bytes) -> None:  # connection.socket.write: the ERROR message
        msg_id, length = struct.unpack_from("<HQ", data)
        assert msg_id == gadgets.GADGET_MESSAGE_ERROR and len(data) == 10 + length
        self.errors.append(data[10:].decode())


PROPS = {"retro_acceleration": "4", "calib": "8", "reference": "true"}


@pytest.fixture(scope="module")
def scan() -> sr.SimulatedScan:
    return sr.build_raw(tiny_3d())  # 8 ky-kz planes


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run_gadget(monkeypatch, scan, stub: RecordingReconstructor, props: dict[str, str]) -> FakeConnection:
    monkeypatch.setattr(gadgets, "build_reconstructor", lambda settings: stub)
    connection = FakeConnection(scan, props, stub.events)
    gadgets.zero_filled(connection)
    return connection


def test_first_image_is_sent_before_the_last_slice_is_reconstructed(monkeypatch, scan) -> None:
    stub = RecordingReconstructor([], batch_size=3)
    connection = run_gadget(monkeypatch, scan, stub, PROPS)
    assert not connection.errors
    kinds = [kind for kind, _, _ in stub.events]
    assert [n for kind, n, _ in stub.events if kind == "recon_start"] == [3, 3, 2]  # 8 planes, batches of 3
    first_send = kinds.index("send")
    last_recon = len(kinds) - 1 - kinds[::-1].index("recon_start")
    assert first_send < last_recon
    assert stub.events[first_send][2] < stub.events[last_recon][2]  # and in time, not just in the record
    # each batch's images (image + reference per plane) go out right after that batch, before the next starts
    expected = []
    for count in (3, 3, 2):
        expected += ["recon_start", "recon_end"] + ["send"] * (2 * count)
    assert kinds == expected
    assert [i for kind, i, _ in stub.events if kind == "send"] == [i for i in range(1, 9) for _ in range(2)]


def plain_meta(image: ismrmrd.Image) -> dict[str, Any]:
    """Meta without what differs between two runs (stage seconds, the reconstruction's own seconds)."""
    return {k: v for k, v in dict(image.meta).items() if not is_stage_meta(k) and k != "ReconSeconds"}


def test_streamed_images_equal_the_whole_exam(monkeypatch, scan) -> None:
    stub = RecordingReconstructor([], batch_size=1)
    connection = run_gadget(monkeypatch, scan, stub, PROPS)
    settings = GadgetSettings.from_properties("zero_filled", PROPS)
    whole = reconstruct_exam(assemble(scan.header, scan.acquisitions, settings), ZeroFilled(), settings)
    assert len(connection.sent) == len(whole) == 16
    for got, want in zip(connection.sent, whole, strict=True):
        assert (got.image_series_index, got.image_index) == (want.image_series_index, want.image_index)
        np.testing.assert_array_equal(got.data, want.data)
        assert tuple(got.position) == tuple(want.position)
        assert plain_meta(got) == plain_meta(want)


def test_each_image_carries_only_the_stages_known_before_it_was_sent(monkeypatch, scan) -> None:
    stub = RecordingReconstructor([], batch_size=2)
    connection = run_gadget(monkeypatch, scan, stub, PROPS)
    stages = [stage_seconds(dict(image.meta)) for image in connection.sent]
    for s in stages:
        assert "send" not in s and STAGE_META["send"] not in s
        assert {"setup", "receive", "assembly", "coil_maps", "reference", "zero_filled", "metrics", "encode"} <= set(s)
    recon = [s["zero_filled"] for s in stages]
    assert recon == sorted(recon)  # cumulative over the batches sent so far
    by_batch = recon[::4]  # 2 planes x (image + reference) per batch
    assert all(b - a >= PAUSE * 0.9 for a, b in itertools.pairwise(by_batch))
    assert recon[0] < recon[-1] - 2 * PAUSE  # the first images did not see the later batches
    assert stages[0]["coil_maps"] == stages[-1]["coil_maps"]  # stages before the reconstruction are complete


def test_a_failure_after_some_batches_still_sends_an_error(monkeypatch, scan) -> None:
    stub = RecordingReconstructor([], batch_size=2, fail_at=3)
    connection = run_gadget(monkeypatch, scan, stub, PROPS)
    assert [int(i.image_index) for i in connection.sent] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert len(connection.errors) == 1 and "stub failure" in connection.errors[0]


def test_stream_batch_sizes(scan) -> None:
    assert stream_batch_size(ZeroFilled()) == 1
    assert stream_batch_size(RecordingReconstructor([], batch_size=16)) == 16
    settings = GadgetSettings(method="zero_filled")
    problems = assemble(scan.header, scan.acquisitions, settings)
    batches = list(stream_exam(problems, ZeroFilled(), settings, batch_size=5))
    assert [[int(i.image_index) for i in b] for b in batches] == [[1, 2, 3, 4, 5], [6, 7, 8]]


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize(("text", "expected"), [("3", 3), ("1", 1), ("0", 0), ("", 0), (" 2 ", 2)])
def test_threads_property_parses(text: str, expected: int) -> None:
    assert GadgetSettings.from_properties("rgancs", {"threads": text}).threads == expected
    assert GadgetSettings.from_properties("zero_filled", {}).threads == 0


@pytest.mark.parametrize("text", ["-1", "1.5", "two", "true"])
def test_bad_threads_property_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError, match="threads"):
        GadgetSettings.from_properties("rgancs", {"threads": text})


def test_apply_threads_sets_torch_threads(keep_threads) -> None:
    assert apply_threads(3) == torch.get_num_threads() == 3
    assert apply_threads(1) == torch.get_num_threads() == 1
    assert apply_threads(0) == torch.get_num_threads() == default_threads() >= 1
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ProtocolError, match="threads"):
            apply_threads(bad)  # type: ignore[arg-type]


def test_the_gadget_runs_its_model_with_the_threads_property(monkeypatch, scan, keep_threads) -> None:
    for threads in (3, 1):
        stub = RecordingReconstructor([], batch_size=4)
        worker = threading.Thread(target=run_gadget, args=(monkeypatch, scan, stub, {**PROPS, "threads": str(threads)}))
        worker.start()
        worker.join(120)
        assert stub.threads_seen == [threads, threads]


@pytest.mark.parametrize(("cores", "process", "expected"), [(16, 16, 4), (2, 2, 1), (7, 7, 1), (64, 8, 8), (32, 32, 8)])
def test_default_threads_share_the_cores_among_side_by_side_gadgets(monkeypatch, cores, process, expected) -> None:
    from recon_plugin import pipeline

    monkeypatch.setattr(pipeline, "available_cores", lambda: cores)
    monkeypatch.setattr(pipeline, "_PROCESS_THREADS", process)
    assert default_threads() == expected
    assert expected * pipeline.PARALLEL_GADGETS <= max(cores, pipeline.PARALLEL_GADGETS)  # four gadgets fit
