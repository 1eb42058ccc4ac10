"""Slow senders cannot starve the MRD server: a message must arrive whole within ``message_timeout`` of its first
byte (ClientTooSlowError), and one address holds at most ``max_exams_per_peer`` exam slots. Loopback load tests,
bounded in time: a valid exam is served while trickling clients are connected (before: ServerBusyError)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from test_server_limits import PROTOCOL, RAW, TIMEOUT, replies, running

from recon_plugin.mrd_client import ClientResult, close_message, config_name_message, header_message, stream_file
from recon_plugin.replay import read_raw
from recon_plugin.replay.external import encode_message


@pytest.fixture(scope="module")
def raw():
    return read_raw(RAW)


class SlowSender:
    """Completes the handshake, then sends one acquisition a byte every ``pause`` seconds (never silent)."""

    def __init__(self, address: tuple[str, int], raw, source: str = "127.0.0.1", pause: float = 0.25) -> None:
        self.sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
        self.sock.sendall(config_name_message(PROTOCOL) + header_message(raw.header_xml))
        self.payload = encode_message(raw.acquisitions[0]) * 50
        self.pause = pause
        self.result = ClientResult()
        self.dropped_after: float | None = None
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._trickle, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer.start()
        self._reader.start()

    def _trickle(self) -> None:
        for byte in self.payload:
            if self._stop.wait(self.pause):
                return
            try:
                self.sock.send(bytes([byte]))
            except OSError:
                return

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            self.result = replies(self.sock, timeout=120)
        self.dropped_after = time.monotonic() - self._start

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def slow_senders(address, raw, count: int, source: str = "127.0.0.1") -> Iterator[list[SlowSender]]:
    senders = [SlowSender(address, raw, source) for _ in range(count)]
    try:
        yield senders
    finally:
        for sender in senders:
            sender.close()


def valid_exam_from(address: tuple[str, int], raw, source: str) -> ClientResult:
    """The whole sample exam from ``source`` (another loopback address), replies read until CLOSE."""
    with socket.create_connection(address, timeout=10, source_address=(source, 0)) as sock:
        messages = b"".join(encode_message(a) for a in raw.acquisitions)
        sock.sendall(config_name_message(PROTOCOL) + header_message(raw.header_xml) + messages + close_message())
        return replies(sock, timeout=TIMEOUT)


def test_trickling_clients_are_dropped_and_a_valid_exam_is_served(raw):
    """Four clients trickling a byte every 0.25 s hold all four exam slots; each is dropped with
    ClientTooSlowError once a message took longer than message_timeout, and the valid exam then gets a slot."""
    settings = {"idle_timeout": 20.0, "max_exams": 4, "max_exams_per_peer": 4, "message_timeout": 3.0}
    with running(**settings) as address, slow_senders(address, raw, 4) as senders:
        time.sleep(1.0)  # all four past their handshake, holding the slots
        start = time.monotonic()
        result = stream_file(RAW, *address, config_name=PROTOCOL, timeout=TIMEOUT)
        served = time.monotonic() - start
        assert result.ok and len(result.images) == 4, (result.errors, result.problem)
        assert served < 15.0, served
        for sender in senders:
            sender._reader.join(10)
            assert sender.result.errors and sender.result.errors[0].startswith("ClientTooSlowError"), sender.result
            assert "--message-timeout" in sender.result.errors[0]
            assert sender.dropped_after is not None and sender.dropped_after < 8.0
    print(f"valid exam served {served:.1f} s after 4 slow senders took every slot (message_timeout 3 s)")


def test_one_address_holds_at_most_max_exams_per_peer_slots(raw):
    """With a long message timeout, four trickling clients from one address hold only two of four slots: an
    exam from another address is served at once."""
    settings = {"idle_timeout": 20.0, "max_exams": 4, "max_exams_per_peer": 2, "message_timeout": 120.0}
    with running(**settings) as address, slow_senders(address, raw, 4):
        time.sleep(1.0)
        start = time.monotonic()
        result = valid_exam_from(address, raw, "127.0.0.2")
        served = time.monotonic() - start
    assert result.closed and not result.errors and len(result.images) == 4, (result.errors, result.problem)
    assert served < 10.0, served
    print(f"exam from another address served in {served:.1f} s beside 4 slow senders (2 slots per address)")


def test_a_patient_sender_between_messages_is_not_too_slow(raw):
    """Pauses between whole messages (a scanner streaming as it acquires) are governed by the idle timeout only."""
    with (
        running(idle_timeout=20.0, message_timeout=1.0) as address,
        socket.create_connection(address, timeout=10) as sock,
    ):
        sock.sendall(config_name_message(PROTOCOL) + header_message(raw.header_xml))
        for index, acquisition in enumerate(raw.acquisitions):
            if index in (10, 200):
                time.sleep(1.5)  # longer than message_timeout, but between messages
            sock.sendall(encode_message(acquisition))
        sock.sendall(close_message())
        result = replies(sock, timeout=TIMEOUT)
    assert result.closed and not result.errors and len(result.images) == 4, result.errors


def test_serve_cli_passes_the_slow_sender_settings(monkeypatch):
    from typer.testing import CliRunner

    from recon_plugin import mrd_server
    from recon_plugin.cli import app

    seen: dict = {}
    monkeypatch.setattr(mrd_server, "serve", lambda *args, **kwargs: seen.update(kwargs))
    runner = CliRunner()
    assert runner.invoke(app, ["serve", "--port", "0"]).exit_code == 0
    assert seen["message_timeout"] == mrd_server.DEFAULT_MESSAGE_TIMEOUT
    assert seen["max_exams_per_peer"] == mrd_server.DEFAULT_MAX_EXAMS_PER_PEER
    args = ["serve", "--port", "0", "--message-timeout", "5", "--max-exams-per-peer", "1"]
    assert runner.invoke(app, args).exit_code == 0
    assert seen["message_timeout"] == 5.0 and seen["max_exams_per_peer"] == 1
    bad = runner.invoke(app, ["serve", "--message-timeout", "0"])
    assert bad.exit_code == 2 and "--message-timeout" in bad.output
