"""MRD server under hostile or broken clients (issue 14): message and exam size limits checked before
anything is allocated, the handshake timeout, per-address and exam-slot limits, and gadgets stopped when
their client is gone. Every server runs in this process, so its memory is this process's memory."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import quoteattr

import ismrmrd
import pytest
import server_gadgets

from recon_plugin.errors import MessageTooLargeError
from recon_plugin.kspace import parse_header
from recon_plugin.mrd_client import (
    ClientResult,
    config_name_message,
    config_text_message,
    header_message,
    receive_replies,
    stream,
    stream_file,
)
from recon_plugin.mrd_server import (
    DEFAULT_MAX_CHANNELS,
    MAX_CHANNELS,
    MessageLimits,
    MrdServer,
)
from recon_plugin.replay import read_raw
from recon_plugin.replay.external import encode_message

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "sample_data" / "raw" / "brain2d_multislice.h5"  # 224 samples, 4 channels, receiverChannels 4
PROTOCOL = "zero_filled_retro5x"
TIMEOUT = 60.0
READERS = (
    "<readers><reader><dll>gadgetron_core_readers</dll><classname>AcquisitionReader</classname></reader></readers>"
)
WRITERS = "<writers><writer><dll>gadgetron_core_writers</dll><classname>ImageWriter</classname></writer></writers>"


def sleepy_protocol(per_item: float = 0.0, after: float = 0.0) -> str:
    props = {"per_item": str(per_item), "after": str(after)}
    body = "".join(f'<property name="{k}" value={quoteattr(v)}/>' for k, v in props.items())
    return (
        f"<configuration><version>2</version>{READERS}{WRITERS}<stream><external>"
        f'<execute name="server_gadgets" target="sleepy" type="python"/><configuration>{body}</configuration>'
        "</external></stream></configuration>"
    )


@pytest.fixture(scope="module")
def raw():
    return read_raw(RAW)


@contextlib.contextmanager
def running(**settings) -> Iterator[tuple[str, int]]:
    """An :class:`MrdServer` on an ephemeral loopback port in a thread; stopped (and checked stopped) at the end."""
    settings.setdefault("allowed_modules", ("server_gadgets",))
    server = MrdServer(port=0, **settings)
    address = server.bind()
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield address
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "server did not stop"


def replies(sock: socket.socket, timeout: float = 10.0) -> ClientResult:
    result = ClientResult()
    sock.settimeout(timeout)
    receive_replies(sock, result)
    return result


def acquisition_head(samples: int, channels: int, trajectory: int = 0) -> bytes:
    """Message id 1008 and a 340-byte acquisition header declaring this much data (none follows)."""
    head = ismrmrd.AcquisitionHeader()
    head.version = 1
    head.number_of_samples, head.active_channels, head.available_channels = samples, channels, channels
    head.trajectory_dimensions = trajectory
    return struct.pack("<H", 1008) + bytes(head)


def waveform_head(samples: int, channels: int) -> bytes:
    head = ismrmrd.WaveformHeader()
    head.number_of_samples, head.channels = samples, channels
    return struct.pack("<H", 1026) + bytes(head)


def status_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0); False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def gadget_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mrd-gadget-")]


def wait_until(condition, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def assert_valid_exam(address: tuple[str, int]) -> None:
    start = time.monotonic()
    result = stream_file(RAW, *address, config_name=PROTOCOL, timeout=TIMEOUT)
    assert result.ok and len(result.images) == 4, (result.errors, result.problem)
    assert time.monotonic() - start < 30.0


# ------------------------------------------------------------------------------------------ message limits


def test_limits_follow_the_header(raw):
    header = parse_header(raw.header_xml)
    limits = MessageLimits.from_header(header)
    assert (limits.samples, limits.channels) == (2 * 224, 4)
    assert "receiverChannels 4" in limits.channels_basis
    assert limits.acquisition_bytes(acquisition_head(224, 4)[2:], "a") == 224 * 4 * 8
    with pytest.raises(MessageTooLargeError, match=r"8 channels \(at most 4: the header's receiverChannels 4\)"):
        limits.acquisition_bytes(acquisition_head(224, 8)[2:], "acquisition 3")
    with pytest.raises(MessageTooLargeError, match=r"449 samples \(at most 448"):
        limits.acquisition_bytes(acquisition_head(449, 4)[2:], "acquisition 3")

    header.acquisitionSystemInformation.receiverChannels = None
    assert MessageLimits.from_header(header).channels == DEFAULT_MAX_CHANNELS
    header.acquisitionSystemInformation.receiverChannels = 100_000
    assert MessageLimits.from_header(header).channels == MAX_CHANNELS
    header.encoding[0].encodedSpace.matrixSize.x = header.encoding[0].reconSpace.matrixSize.x = 16
    assert MessageLimits.from_header(header).samples == 256  # the floor: noise scans, odd matrices


@pytest.mark.parametrize(
    ("samples", "channels", "trajectory", "named"),
    [
        (65535, 4096, 0, "65535 samples"),  # 2 GiB declared in a 342-byte message
        (65535, 65535, 0, "65535 channels"),  # 32 GiB
        (224, 4096, 0, "4096 channels"),
        # 56 MiB: large enough that growth in resident memory measures an allocation, not allocator noise
        (224, 4, 65535, "65535 trajectory dimensions"),
    ],
)
def test_oversized_acquisition_is_refused_before_allocating(raw, samples, channels, trajectory, named):
    declared = samples * (channels * 8 + trajectory * 4)
    with running(idle_timeout=30.0) as address:
        measured = reset_peak_rss()
        before = status_kib("VmRSS")
        start = time.monotonic()
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(
                config_name_message(PROTOCOL)
                + header_message(raw.header_xml)
                + encode_message(raw.acquisitions[0])
                + acquisition_head(samples, channels, trajectory)
            )
            result = replies(sock)
        elapsed = time.monotonic() - start
        grown = (status_kib("VmHWM" if measured else "VmRSS") - before) * 1024
        assert result.closed and not result.images
        assert len(result.errors) == 1 and result.errors[0].startswith("MessageTooLargeError: acquisition 1 declares")
        assert named in result.errors[0] and "refused before reading it" in result.errors[0]
        assert elapsed < 5.0
        assert grown < min(declared // 8, 64 * 2**20), (grown, declared)
        assert wait_until(lambda: not gadget_threads(), 10.0), gadget_threads()
        assert_valid_exam(address)


def test_oversized_waveform_is_refused(raw):
    with running(idle_timeout=30.0) as address, socket.create_connection(address, timeout=10) as sock:
        sock.sendall(config_name_message(PROTOCOL) + header_message(raw.header_xml) + waveform_head(65535, 65535))
        result = replies(sock)
    assert result.closed and len(result.errors) == 1
    assert result.errors[0].startswith("MessageTooLargeError: waveform 0 declares 65535 channels (at most 64)")


def test_exam_bytes_are_capped(raw, caplog):
    """Past --max-exam-bytes: ExamTooLargeError, the gadget is stopped; a smaller exam still works."""
    per_message = 2 + 340 + 224 * 4 * 8
    with running(idle_timeout=30.0, max_exam_bytes=10 * per_message) as address:
        result = stream_file(RAW, *address, config_name=PROTOCOL, timeout=TIMEOUT)
        assert result.closed and not result.images
        assert len(result.errors) == 1 and result.errors[0].startswith("ExamTooLargeError: acquisition 10 would")
        assert "--max-exam-bytes" in result.errors[0]
        assert wait_until(lambda: not gadget_threads(), 10.0), gadget_threads()
        small = stream(raw.header_xml, raw.acquisitions[:10], *address, config_xml=sleepy_protocol(), timeout=TIMEOUT)
        assert small.ok and len(small.images) == 1, (small.errors, small.problem)


# ------------------------------------------------------------------------------------------ connections


def idle_sockets(address: tuple[str, int], count: int) -> list[socket.socket]:
    return [socket.create_connection(address, timeout=10) for _ in range(count)]


def silent(sock: socket.socket) -> bool:
    """True when the server has sent nothing on ``sock`` (and not closed it)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def test_valid_exam_while_idle_connections_are_open():
    """Six clients (more than the old limit of 4 connections) that connect and say nothing do not hold up an exam."""
    with running(idle_timeout=300.0, handshake_timeout=60.0) as address:
        idle = idle_sockets(address, 6)
        try:
            assert_valid_exam(address)
            assert all(silent(sock) for sock in idle)  # still open: served beside them, not after them
        finally:
            for sock in idle:
                sock.close()


def test_idle_and_dribbling_clients_are_dropped_after_the_handshake_timeout(raw):
    with running(idle_timeout=300.0, handshake_timeout=1.0) as address:
        start = time.monotonic()
        idle = idle_sockets(address, 5)
        slow = socket.create_connection(address, timeout=10)
        message = config_name_message(PROTOCOL)
        try:
            for index in range(12):  # one byte every 0.25 s: each wait is short, their sum is not
                slow.sendall(message[index : index + 1])
                time.sleep(0.25)
            for sock in [*idle, slow]:
                result = replies(sock)
                assert result.closed and len(result.errors) == 1, result.errors
                assert result.errors[0].startswith("StreamTimeoutError: the client did not send its configuration")
                assert "handshake timeout of 1 s" in result.errors[0]
        finally:
            for sock in [*idle, slow]:
                sock.close()
        assert time.monotonic() - start < 10.0
        assert_valid_exam(address)


def test_connections_per_address_are_limited():
    with running(idle_timeout=300.0, handshake_timeout=60.0, max_per_peer=2) as address:
        idle = idle_sockets(address, 2)
        try:
            start = time.monotonic()
            with socket.create_connection(address, timeout=10) as third:
                result = replies(third)
            assert time.monotonic() - start < 3.0
            assert result.closed and len(result.errors) == 1
            assert result.errors[0].startswith("TooManyConnectionsError: 127.0.0.1 already has 2 connections")
            idle.pop().close()
            assert wait_until(lambda: stream_file(RAW, *address, config_name=PROTOCOL, timeout=TIMEOUT).ok, 10.0)
        finally:
            for sock in idle:
                sock.close()


def send_exam(address, raw, protocol: str, count: int, out: list[ClientResult]) -> threading.Thread:
    def run() -> None:
        out.append(stream(raw.header_xml, raw.acquisitions[:count], *address, config_xml=protocol, timeout=TIMEOUT))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_exams_wait_for_a_slot_then_get_server_busy(raw):
    """One exam slot: a second exam waits while the first reconstructs, and is served after it; a third
    that would wait longer than the idle timeout gets ServerBusyError."""
    server_gadgets.EVENTS.clear()
    with running(idle_timeout=3.0, max_exams=1) as address:
        first: list[ClientResult] = []
        holder = send_exam(address, raw, sleepy_protocol(after=2.0), 4, first)
        assert wait_until(lambda: "reconstructing" in server_gadgets.EVENTS, 10.0)
        start = time.monotonic()
        second = stream(raw.header_xml, raw.acquisitions[:4], *address, config_xml=sleepy_protocol(), timeout=TIMEOUT)
        assert second.ok and len(second.images) == 1, (second.errors, second.problem)
        assert 1.0 < time.monotonic() - start < 10.0  # it waited for the first exam's slot
        holder.join(10)
        assert first and first[0].ok

        server_gadgets.EVENTS.clear()
        holder = send_exam(address, raw, sleepy_protocol(after=8.0), 4, first)
        assert wait_until(lambda: "reconstructing" in server_gadgets.EVENTS, 10.0)
        start = time.monotonic()
        busy = stream(raw.header_xml, raw.acquisitions[:4], *address, config_xml=sleepy_protocol(), timeout=TIMEOUT)
        assert busy.closed and not busy.images and len(busy.errors) == 1
        assert busy.errors[0].startswith("ServerBusyError: all 1 exam slots") and "--max-exams" in busy.errors[0]
        assert time.monotonic() - start < 7.0
        holder.join(15)


# ------------------------------------------------------------------------------------------ client gone


@pytest.mark.parametrize("how", ["disconnect", "oversized"])
def test_gadgets_stop_when_the_stream_ends_without_close(raw, caplog, how):
    """A client that vanishes (or is dropped) mid-exam: its gadget is stopped at its next read, never
    reconstructs the half exam, and nothing is sent to the dead socket."""
    server_gadgets.EVENTS.clear()
    with running(idle_timeout=30.0) as address:
        payload = config_text_message(sleepy_protocol(per_item=0.05, after=60.0)) + header_message(raw.header_xml)
        payload += b"".join(encode_message(a) for a in raw.acquisitions[:100])
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(payload)
        time.sleep(0.5)  # the gadget is busy with the first few of its 100 queued acquisitions
        start = time.monotonic()
        if how == "disconnect":
            sock.close()
        else:
            sock.sendall(acquisition_head(224, 4096))
            result = replies(sock)
            sock.close()
            assert result.errors and result.errors[0].startswith("MessageTooLargeError")
        assert wait_until(lambda: not gadget_threads(), 5.0), gadget_threads()
        assert time.monotonic() - start < 5.0  # not 100 x 0.05 s of reading, nor the 60 s "reconstruction"
        (event,) = server_gadgets.EVENTS
        stopped = re.fullmatch(r"stopped after (\d+): PeerGoneError", event)
        assert stopped and int(stopped.group(1)) < 100, event
        if how == "disconnect":
            assert "ClientDisconnectedError" in caplog.text
        assert "cannot write" not in caplog.text
        assert_valid_exam(address)
