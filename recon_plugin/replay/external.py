"""Run one external Python gadget exactly as Gadgetron does, over a loopback socket.

``run_external`` listens on ``127.0.0.1`` (ephemeral port), starts
``python -m gadgetron PORT MODULE TARGET`` (the ``gadgetron`` package's own
entry point), waits for it to connect, and speaks the server side of the
external-gadget protocol: CONFIG (2), HEADER (3), the messages (1008
acquisitions, 1026 waveforms, 1022 images), CLOSE (4). A reader runs while
the writer thread is still sending, and takes 1022 images, 1008/1026 (kept
for a following step), 8 ERROR and 4 CLOSE from the gadget; any other id
ends the run as a :class:`GadgetFailedError`.

Failures never raise out of ``run_external``: they are recorded on the
returned :class:`ExternalRun` (``failure``, ``errors``) next to the images that
did arrive, and ``raise_for_errors()`` turns them into the exception.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import ismrmrd

from ..errors import GadgetFailedError, ReconError, StreamTimeoutError
from .protocol import ExternalStep

logger = logging.getLogger(__name__)

#: Seconds to wait for the started gadget to connect back.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Seconds without any progress on the socket (nothing received, or a send not accepted) before giving up.
DEFAULT_TIMEOUT = 120.0
#: Seconds a gadget may take to exit after it sent CLOSE (or closed its socket) before it is killed.
EXIT_GRACE = 10.0
#: Seconds a gadget gets to close by itself once another gadget of the stream reported an error.
CANCEL_GRACE = 2.0

MSG_CONFIG = 2
MSG_HEADER = 3
MSG_CLOSE = 4
MSG_ERROR = 8
MSG_ACQUISITION = 1008
MSG_IMAGE = 1022
MSG_WAVEFORM = 1026
_VALID_BUT_UNSUPPORTED = {1023: "ReconData", 1024: "ImageArray", 1050: "AcquisitionBucket"}
_MAX_ERROR_TEXT = 16 * 1024 * 1024

#: A WARNING/ERROR/CRITICAL record in the log format of the ``gadgetron`` package's ``__main__``.
_GADGET_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) \[ext\. \d+ [^\]]*\] (.*)$")
_MAX_LOG_SCAN = 4 * 1024 * 1024
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_ID = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

Message = ismrmrd.Acquisition | ismrmrd.Waveform | ismrmrd.Image


@dataclass
class ExternalRun:
    """What one external gadget did.

    Attributes:
        step: the step that ran.
        images: images the gadget sent, in arrival order (also those sent before a failure).
        outputs: every message it sent (images, acquisitions, waveforms), in order; the input of a next step.
        errors: texts of the ERROR (id 8) messages the gadget sent.
        failure: the named error that ended the run badly, or None when it succeeded.
        stderr_tail: the last lines of the gadget process's stderr/stdout.
        seconds: wall time from start to the process's exit.
        returncode: the process's exit status (negative: killed by a signal; None: unknown).
        sent: number of data messages sent to the gadget.
        started_at: when the run started (``time.monotonic()`` of the replay process, as the three below).
        last_acquisition_sent_at: when the last acquisition was handed to the socket (None: none sent).
        first_image_at, last_image_at: when the first and the last image had arrived (None: no image).
        log_messages: the gadget's WARNING, ERROR and CRITICAL log records (``LEVEL: text``), also on success.
        cancelled: the run was stopped because another gadget of the stream reported an error.
    """

    step: ExternalStep
    images: list[ismrmrd.Image] = field(default_factory=list)
    outputs: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failure: ReconError | None = None
    stderr_tail: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    sent: int = 0
    started_at: float = 0.0
    last_acquisition_sent_at: float | None = None
    first_image_at: float | None = None
    last_image_at: float | None = None
    log_messages: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """True when the gadget closed its stream normally and reported no error."""
        return self.failure is None

    def raise_for_errors(self) -> None:
        """Raise ``failure`` (with ``.images`` and ``.run`` attached) if the run failed."""
        if self.failure is not None:
            raise attach_results(self.failure, self.images, self)


def attach_results(exc: ReconError, images: list[ismrmrd.Image], run: object) -> ReconError:
    """Attach the images that did arrive (``exc.images``) and the run object (``exc.run``) to an error."""
    exc.images = list(images)  # type: ignore[attr-defined]
    exc.run = run  # type: ignore[attr-defined]
    return exc


@dataclass
class _Outcome:
    """Raw facts gathered during the exchange; turned into a failure once the process has exited."""

    closed: bool = False
    peer_eof: bool = False
    read_timeout: bool = False
    bad_message: str | None = None
    write_error: BaseException | None = None
    connect_error: ReconError | None = None
    writer_crash: BaseException | None = None
    cancelled: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


class _PeerClosedError(Exception):
    """The gadget closed its socket (EOF or reset) in the middle of, or instead of, a message."""


def run_external(
    step: ExternalStep,
    header_xml: bytes,
    acquisitions: Iterable[Message],
    waveforms: Iterable[ismrmrd.Waveform] = (),
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    on_image: Callable[[ismrmrd.Image], None] | None = None,
    on_sent: Callable[[Message], None] | None = None,
    extra_pythonpath: Sequence[str | Path] = (),
    python: str | None = None,
    cancel: threading.Event | None = None,
) -> ExternalRun:
    """Start the gadget, stream ``acquisitions`` then ``waveforms`` into it and collect what it sends back.

    ``acquisitions`` may hold any ISMRMRD messages (acquisitions, waveforms, images); they are sent
    in order, each with its own message id. ``timeout`` bounds every wait on the socket (inactivity),
    ``connect_timeout`` the wait for the gadget to connect. ``on_image`` is called (in the calling
    thread) for each image as it arrives, ``on_sent`` (in the sending thread) after each message sent.
    ``extra_pythonpath`` entries are put on the child's PYTHONPATH after the repository root.
    ``cancel`` is shared by the gadgets of one stream: an ERROR from any of them sets it (Gadgetron fails the
    whole stream on an ERROR), and then every gadget stops receiving data (it gets CLOSE) and, unless it closes
    within :data:`CANCEL_GRACE` seconds, is stopped. The gadget's WARNING and ERROR log records are logged here
    (WARNING) and kept in :attr:`ExternalRun.log_messages`.

    Never raises for gadget failures: see :attr:`ExternalRun.failure` and :meth:`ExternalRun.raise_for_errors`.
    """
    start = time.monotonic()
    run = ExternalRun(step=step, started_at=start)
    outcome = _Outcome()
    messages = list(itertools.chain(acquisitions, waveforms))
    for message in messages:
        if not isinstance(message, ismrmrd.Acquisition | ismrmrd.Waveform | ismrmrd.Image):
            raise TypeError(f"replay cannot send {type(message).__name__} to a gadget")
    with tempfile.TemporaryFile(prefix="replay-gadget-") as log, _loopback_listener() as listener:
        port = listener.getsockname()[1]
        command = [python or sys.executable, "-m", "gadgetron", str(port), step.module, step.target]
        logger.debug("starting %s (port %d)", " ".join(command), port)
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_environment(extra_pythonpath)
        )
        _register(process)
        try:
            try:
                conn = _accept(listener, process, connect_timeout, step)
            except ReconError as exc:
                outcome.connect_error = exc
            else:
                with conn:
                    _exchange(conn, step, header_xml, messages, run, outcome, timeout, on_image, on_sent, cancel)
        finally:
            graceful = (outcome.closed or outcome.peer_eof) and outcome.writer_crash is None and not outcome.cancelled
            run.returncode = _finish_process(process, graceful=graceful)
            _unregister(process)
            run.stderr_tail = _tail(log)
            run.log_messages = _log_records(log)
            run.cancelled = outcome.cancelled
    if outcome.writer_crash is not None:  # a bug in on_sent or in a message's serialisation: not the gadget's fault
        raise outcome.writer_crash
    run.seconds = time.monotonic() - start
    run.failure = _failure(run, outcome, timeout)
    for record in run.log_messages:
        logger.warning("gadget %s: %s", step.name, record)
    if run.stderr_tail:
        logger.debug("gadget %s output (tail):\n%s", step.name, run.stderr_tail)
    if run.failure is not None:
        logger.warning("gadget %s failed: %s", step.name, str(run.failure).splitlines()[0])
    else:
        logger.info("gadget %s: %d images in %.2f s", step.name, len(run.images), run.seconds)
    return run


def child_environment(extra_pythonpath: Sequence[str | Path] = ()) -> dict[str, str]:
    """The gadget's environment: ours, with the repository root (then ``extra_pythonpath``) first on PYTHONPATH.

    The root goes there only for a checkout (or editable install): a package installed from a wheel is imported
    by the child as by us, and its site-packages folder on PYTHONPATH would come before the standard library."""
    import site
    import sysconfig

    env = dict(os.environ)
    paths = sysconfig.get_paths()
    installed = {paths["purelib"], paths["platlib"], *site.getsitepackages(), site.getusersitepackages()}
    root = [] if _REPO_ROOT in {Path(p).resolve() for p in installed} else [str(_REPO_ROOT)]
    parts = [*root, *(str(p) for p in extra_pythonpath)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


@contextlib.contextmanager
def _loopback_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield listener
    finally:
        listener.close()


def _accept(listener: socket.socket, process: subprocess.Popen, limit: float, step: ExternalStep) -> socket.socket:
    """Wait for the child to connect; fail early if it exits first."""
    deadline = time.monotonic() + limit
    listener.settimeout(0.1)
    while True:
        if process.poll() is not None:
            raise GadgetFailedError(
                f"gadget {step.name} exited with status {process.returncode} before connecting "
                "(is the gadgetron package installed for this Python, and does localhost reach 127.0.0.1?)"
            )
        if time.monotonic() > deadline:
            raise StreamTimeoutError(
                f"gadget {step.name} did not connect within {limit:g} s; it was stopped "
                "(a slow start? raise the connect timeout)"
            )
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        return conn


def _exchange(
    conn: socket.socket,
    step: ExternalStep,
    header_xml: bytes,
    messages: Iterable[Message],
    run: ExternalRun,
    outcome: _Outcome,
    timeout: float,
    on_image: Callable[[ismrmrd.Image], None] | None,
    on_sent: Callable[[Message], None] | None,
    cancel: threading.Event | None = None,
) -> None:
    conn.settimeout(timeout)
    writer = threading.Thread(
        target=_send_all,
        args=(conn, step, header_xml, messages, run, outcome, on_sent, cancel),
        name=f"replay-send-{step.target}",
        daemon=True,
    )
    writer.start()
    done = threading.Event()
    if cancel is not None:
        threading.Thread(
            target=_watch_cancel, args=(conn, outcome, cancel, done), name=f"replay-cancel-{step.target}", daemon=True
        ).start()
    try:
        _receive_all(conn, run, outcome, on_image, cancel)
    finally:
        done.set()
        if not outcome.closed:
            # Reader gave up (timeout, bad message, EOF): unblock the writer and let the process go.
            outcome.stop.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        writer.join(timeout + 5.0)
        if writer.is_alive():
            outcome.stop.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            writer.join(5.0)


def _send_all(
    conn: socket.socket,
    step: ExternalStep,
    header_xml: bytes,
    messages: Iterable[Message],
    run: ExternalRun,
    outcome: _Outcome,
    on_sent: Callable[[Message], None] | None,
    cancel: threading.Event | None = None,
) -> None:
    try:
        conn.sendall(_ID.pack(MSG_CONFIG) + _U32.pack(len(step.config_xml)) + step.config_xml)
        conn.sendall(_ID.pack(MSG_HEADER) + _U32.pack(len(header_xml)) + header_xml)
        for message in messages:
            if outcome.stop.is_set():
                return
            if cancel is not None and cancel.is_set():
                break  # the stream failed elsewhere: no more data, just CLOSE
            conn.sendall(encode_message(message))
            if isinstance(message, ismrmrd.Acquisition):
                run.last_acquisition_sent_at = time.monotonic()
            run.sent += 1
            if on_sent is not None:
                on_sent(message)
        conn.sendall(_ID.pack(MSG_CLOSE))
    except OSError as exc:  # TimeoutError, BrokenPipeError, ConnectionResetError, or our own shutdown
        if not outcome.stop.is_set():
            outcome.write_error = exc
    except Exception as exc:
        outcome.writer_crash = exc
        outcome.stop.set()
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)


def _watch_cancel(conn: socket.socket, outcome: _Outcome, cancel: threading.Event, done: threading.Event) -> None:
    """Once ``cancel`` is set, give the gadget :data:`CANCEL_GRACE` seconds to close, then cut its connection."""
    while not done.is_set():
        if cancel.wait(0.2):
            if done.wait(CANCEL_GRACE):
                return
            outcome.cancelled = True
            outcome.stop.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            return


def encode_message(message: Message) -> bytes:
    """One message as Gadgetron frames it: uint16 id, then the ISMRMRD serialisation."""
    if isinstance(message, ismrmrd.Acquisition):
        mid = MSG_ACQUISITION
    elif isinstance(message, ismrmrd.Waveform):
        mid = MSG_WAVEFORM
    elif isinstance(message, ismrmrd.Image):
        mid = MSG_IMAGE
    else:
        raise TypeError(f"replay cannot send {type(message).__name__} to a gadget")
    buffer = io.BytesIO()
    buffer.write(_ID.pack(mid))
    message.serialize_into(buffer.write)
    return buffer.getvalue()


def _read_exactly(conn: socket.socket, nbytes: int) -> bytes:
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    got = 0
    while got < nbytes:
        try:
            count = conn.recv_into(view[got:], nbytes - got)
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            raise _PeerClosedError from exc
        if count == 0:
            raise _PeerClosedError
        got += count
    return bytes(buffer)


def _receive_all(
    conn: socket.socket,
    run: ExternalRun,
    outcome: _Outcome,
    on_image: Callable[[ismrmrd.Image], None] | None,
    cancel: threading.Event | None = None,
) -> None:
    def read(nbytes: int) -> bytes:
        return _read_exactly(conn, nbytes)

    try:
        while True:
            (mid,) = _ID.unpack(read(_ID.size))
            if mid == MSG_CLOSE:
                outcome.closed = True
                return
            if mid == MSG_ERROR:
                (length,) = _U64.unpack(read(_U64.size))
                if length > _MAX_ERROR_TEXT:
                    outcome.bad_message = f"an ERROR message of {length} bytes (corrupt stream)"
                    return
                text = read(length).decode("utf-8", errors="replace").strip()
                logger.warning("gadget %s reported an error: %s", run.step.name, text)
                run.errors.append(text)
                if cancel is not None:
                    cancel.set()
                continue
            if mid in (MSG_IMAGE, MSG_ACQUISITION, MSG_WAVEFORM):
                item = _deserialize(mid, read)
                if item is None:
                    outcome.bad_message = f"a malformed message with id {mid}"
                    return
                run.outputs.append(item)
                if isinstance(item, ismrmrd.Image):
                    run.last_image_at = time.monotonic()
                    if run.first_image_at is None:
                        run.first_image_at = run.last_image_at
                    run.images.append(item)
                    if on_image is not None:
                        on_image(item)
                continue
            if mid in _VALID_BUT_UNSUPPORTED:
                outcome.bad_message = (
                    f"message id {mid} ({_VALID_BUT_UNSUPPORTED[mid]}), which Gadgetron accepts but replay "
                    "does not read (replay reads images, acquisitions and waveforms)"
                )
            else:
                outcome.bad_message = f"illegal message id {mid}"
            return
    except _PeerClosedError:
        outcome.peer_eof = True
    except TimeoutError:
        outcome.read_timeout = True
    except OSError as exc:
        logger.debug("read from gadget %s failed: %s", run.step.name, exc)
        outcome.peer_eof = True


def _deserialize(mid: int, read: Callable[[int], bytes]) -> Message | None:
    kind = {MSG_IMAGE: ismrmrd.Image, MSG_ACQUISITION: ismrmrd.Acquisition, MSG_WAVEFORM: ismrmrd.Waveform}[mid]
    try:
        return kind.deserialize_from(read)
    except (_PeerClosedError, OSError):
        raise
    except Exception as exc:  # malformed sizes or attribute XML: anything the ismrmrd parsers raise
        logger.debug("cannot deserialise message %d: %r", mid, exc)
        return None


_live_lock = threading.Lock()
_live: set[subprocess.Popen] = set()


def _register(process: subprocess.Popen) -> None:
    with _live_lock:
        _live.add(process)


def _unregister(process: subprocess.Popen) -> None:
    with _live_lock:
        _live.discard(process)


def stop_all_gadgets() -> None:
    """Kill every gadget process replay started that is still running (on interrupt and at exit).

    A gadget left behind would otherwise spin: the ``gadgetron`` package's socket reader loops on EOF.
    """
    with _live_lock:
        processes = list(_live)
        _live.clear()
    for process in processes:
        if process.poll() is None:
            logger.warning("stopping gadget process %d", process.pid)
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(3.0)


atexit.register(stop_all_gadgets)


def _finish_process(process: subprocess.Popen, *, graceful: bool) -> int | None:
    """Let the gadget exit (a grace period when it closed its stream), else stop it."""
    if graceful:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(EXIT_GRACE)
        logger.warning("gadget process %d did not exit %g s after closing; stopping it", process.pid, EXIT_GRACE)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(3.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _log_records(log: IO[bytes]) -> list[str]:
    """``LEVEL: text`` of every WARNING/ERROR/CRITICAL record in the gadget's output (its last 4 MiB)."""
    log.flush()
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - _MAX_LOG_SCAN))
    records = []
    for line in log.read().decode("utf-8", errors="replace").splitlines():
        match = _GADGET_LOG_LINE.match(line)
        if match:
            records.append(f"{match.group(1)}: {match.group(2)}")
    return records


def _tail(log: IO[bytes], max_lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    log.flush()
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - max_bytes))
    lines = log.read().decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])


def _with_tail(message: str, tail: str) -> str:
    """The message, with the gadget's last output lines only when logging is verbose (``-v``): the named error
    already ends with the traceback's last line."""
    if not tail:
        return message
    if logger.isEnabledFor(logging.INFO):
        return f"{message}\n--- gadget output (last lines) ---\n{tail}"
    return f"{message} (-v shows the gadget's output)"


def _exception_line(tail: str) -> str:
    """The last ``SomeError: text`` line of a Python traceback in the gadget's output, as ``: SomeError: text``."""
    for line in reversed(tail.splitlines()):
        if _EXCEPTION_LINE.match(line.strip()):
            return f": {line.strip()}"
    return ""


def _failure(run: ExternalRun, outcome: _Outcome, timeout: float) -> ReconError | None:
    """The one named error that best explains what went wrong, or None."""
    name = run.step.name
    status = run.returncode
    if outcome.connect_error is not None:
        if isinstance(outcome.connect_error, GadgetFailedError):
            message = f"{outcome.connect_error}{_exception_line(run.stderr_tail)}"
            return GadgetFailedError(_with_tail(message, run.stderr_tail))
        return outcome.connect_error
    if run.errors:
        return GadgetFailedError(f"gadget {name} reported: " + "; ".join(run.errors))
    if outcome.cancelled:
        return GadgetFailedError(f"gadget {name} was stopped: another gadget of the stream reported an error")
    if outcome.bad_message is not None:
        return GadgetFailedError(
            f"gadget {name} sent {outcome.bad_message}; it was stopped after {len(run.images)} images"
        )
    if outcome.read_timeout:
        return StreamTimeoutError(
            f"gadget {name} sent nothing for {timeout:g} s (after {len(run.images)} images, "
            f"{run.sent} messages sent to it); it was stopped. If the reconstruction is just slow, raise the timeout."
        )
    if outcome.peer_eof:
        return GadgetFailedError(
            _with_tail(
                f"gadget {name} closed its connection without CLOSE (process exit status {status}) "
                f"after {len(run.images)} images{_exception_line(run.stderr_tail)}",
                run.stderr_tail,
            )
        )
    if status is not None and status > 0:
        # The gadgetron package sends CLOSE even when the target raised, then exits non-zero:
        # Gadgetron itself would report success. Replay does not.
        return GadgetFailedError(
            _with_tail(
                f"gadget {name} closed its stream but its process exited with status {status} "
                "(an uncaught exception in the gadget; Gadgetron would have reported success "
                f"with the {len(run.images)} images that arrived){_exception_line(run.stderr_tail)}",
                run.stderr_tail,
            )
        )
    if outcome.write_error is not None:
        if isinstance(outcome.write_error, TimeoutError):
            return StreamTimeoutError(
                f"gadget {name} accepted no data for {timeout:g} s (after {run.sent} messages); it was stopped"
            )
        return GadgetFailedError(
            _with_tail(
                f"gadget {name} stopped reading its input after {run.sent} messages "
                f"({type(outcome.write_error).__name__}) without reporting an error{_exception_line(run.stderr_tail)}",
                run.stderr_tail,
            )
        )
    return None
