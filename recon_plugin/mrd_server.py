"""MRD server: the ISMRMRD streaming protocol that ``gadgetron_ismrmrd_client`` and scanner-side clients speak.

``recon-plugin serve`` (:func:`serve`, :class:`MrdServer`) runs a protocol's Python gadgets *in this
process*, with the very same handlers Gadgetron starts (``recon_plugin.gadgets.rgancs`` ...), so both
runtimes return identical images and RGANCS models stay resident between connections.

Client -> server (little-endian; each message = uint16 id + payload):

* ``1`` configuration *name*: char[1024], NUL-padded. Looked up in the protocols folder as ``NAME``
  or ``NAME.xml``; names with path separators or ``..`` are refused (UnknownConfigurationError).
* ``2`` configuration *text*: uint32 length + a protocol XML document (trailing NULs ignored).
* ``3`` header: uint32 length + ISMRMRD XML header (trailing NULs ignored).
* ``1008`` acquisitions and ``1026`` waveforms, then ``4`` CLOSE.

Server -> client:

* ``1022`` images, as the gadgets send them (other items a gadget sends are dropped: the protocols'
  only writer is ImageWriter).
* ``8`` ERROR: uint64 length + UTF-8 text, for every problem (the encoding Gadgetron uses and our
  gadgets send themselves). The text starts with the error's name, e.g.
  ``UnknownConfigurationError: ...``. TEXT (``5``) is never sent; :mod:`recon_plugin.mrd_client` reads both.
* ``4`` CLOSE, always last: after every gadget finished, or at once when the stream is aborted.

Protocols: one ``<external>`` step, or a ``<parallel>`` block (AcquisitionFanout / UnorderedMerge)
whose branches are one ``<external>`` step each; anything else is a ProtocolError. Each gadget runs
in its own thread on a :class:`ServerConnection` fed from a queue: every acquisition goes to every
branch (each gets its own copy), waveforms go to a single gadget when the protocol has a
WaveformReader and are dropped otherwise (AcquisitionFanout passes only acquisitions). Images from
all branches go to the client as they come, one whole message at a time under one lock.

Threading: one thread per connection (at most ``max_concurrent`` at once; more wait in the listen
backlog) reads the client's messages and feeds the gadget threads. Aborts (a client silent for
``idle_timeout``, an unexpected message, a bad header or configuration, a limit below) send ERROR +
CLOSE and drop the connection; gadget output after that is discarded. A client that disconnects is
logged as ClientDisconnectedError. After CLOSE each gadget's input is ended and the gadget finishes
its reconstruction. A gadget's ERROR fails the exam as a whole, as Gadgetron and replay fail the stream: the
ERROR goes to the client and every other gadget is stopped (``keep_partial``, ``serve --keep-partial``: they
run to their end and their images still go out); when the input did not end with CLOSE (disconnect, abort,
server stopping) the gadgets are *stopped*: their queued input is freed and their next read or ``send`` raises
``PeerGoneError`` (the gadgets' own "nobody to report to" error), so no half exam is reconstructed for
a client that is gone. A gadget whose client vanished after CLOSE is stopped at its next ``send``.

Limits (hostile or broken clients must not exhaust the server):

* Handshake: the configuration and the header must arrive within ``handshake_timeout`` seconds of
  waiting (StreamTimeoutError); after that a client may stay silent ``idle_timeout`` seconds.
* Connections: at most ``max_concurrent`` at once, at most ``max_per_peer`` from one address (more are
  answered TooManyConnectionsError + CLOSE at once), and at most ``max_exams`` exams past their
  handshake (reading data, reconstructing), ``max_exams_per_peer`` of them from one address; a connection
  waits up to ``idle_timeout`` for an exam slot, then gets ServerBusyError.
* Slow senders: once the first byte of an acquisition or waveform arrived, the whole message must arrive
  within ``message_timeout`` seconds (ClientTooSlowError + CLOSE), so a client trickling a byte at a time,
  never silent long enough for the idle timeout, cannot hold an exam slot. Between messages a client may
  pause up to ``idle_timeout`` (a scanner streams as it acquires).
* Messages: each acquisition's and waveform's 340- / 40-byte header is checked against
  :class:`MessageLimits` (from the exam's ISMRMRD header) *before* its data is read or allocated, and
  the bytes of one exam are capped at ``max_exam_bytes``: MessageTooLargeError / ExamTooLargeError,
  naming the limit. Reads grow their buffer as data arrives, so a declared length costs nothing
  until it is sent. Worst case: ``max_exams`` x branches x ``max_exam_bytes`` of queued data plus
  what the gadgets hold, and ``max_concurrent`` handshakes of at most 2 x 16 MiB.

Security: a configuration (name or text) may run only the project's gadget targets
(``recon_plugin.gadgets``: rgancs, zero_filled, cs_wavelet, cs_tv) and the targets of modules its operator
allows (``allowed_modules``, ``serve --allow-module NAME``); every ``<execute>`` is checked, and the project's
targets' properties parsed, before any gadget is imported or started (:mod:`recon_plugin.gadget_targets`).
The server binds 127.0.0.1 unless another host is given explicitly.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import inspect
import io
import ipaddress
import logging
import math
import queue
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ismrmrd

from .errors import (
    ClientDisconnectedError,
    ClientTooSlowError,
    ExamTooLargeError,
    GadgetFailedError,
    IsmrmrdFormatError,
    MessageTooLargeError,
    ProtocolError,
    ReconError,
    ServerBusyError,
    StreamTimeoutError,
    TooManyConnectionsError,
    UnknownConfigurationError,
)
from .gadget_targets import check_protocol
from .kspace import MAX_MATRIX, check_header_memory, parse_header
from .replay.external import encode_message
from .replay.protocol import ExternalStep, ParallelStep, Protocol, load_protocol
from .sample_data import PROTOCOLS_DIR

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9002
#: The packaged protocols (recon_plugin/protocols in a wheel install, protocols/ in a checkout).
DEFAULT_PROTOCOLS_DIR = PROTOCOLS_DIR
#: Seconds the client may stay silent (any socket read) before the connection is dropped.
DEFAULT_IDLE_TIMEOUT = 300.0
#: Seconds of waiting for the configuration and the header (in all) before the connection is dropped.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds the gadgets may take after the end of their input before the stream is failed.
DEFAULT_HANDLER_TIMEOUT = 3600.0
#: Connections open at the same time (handshakes included); further clients wait in the listen backlog.
DEFAULT_MAX_CONCURRENT = 32
#: Connections from one address at the same time; more are refused with TooManyConnectionsError.
DEFAULT_MAX_PER_PEER = 8
#: Exams past their handshake (reading data, reconstructing) at the same time; others wait for a slot.
DEFAULT_MAX_EXAMS = 4
#: Exams past their handshake from one address at the same time; its further exams wait for one of them to end.
DEFAULT_MAX_EXAMS_PER_PEER = 2
#: Seconds one acquisition or waveform may take from its first byte to its last (a trickling sender is dropped).
DEFAULT_MESSAGE_TIMEOUT = 30.0
#: Bytes of acquisitions and waveforms one exam may send (the 3D reference exam is about 330 MB).
DEFAULT_MAX_EXAM_BYTES = 8 * 2**30
#: Samples per readout may exceed the header's largest encoded (or recon) matrix x by this factor.
SAMPLES_SLACK = 2
#: Samples per readout always allowed, whatever the header's matrix.
MIN_SAMPLES_LIMIT = 256
#: Channels per acquisition when the header states no receiverChannels.
DEFAULT_MAX_CHANNELS = 256
#: Channels per acquisition at most, even when the header's receiverChannels says more.
MAX_CHANNELS = 1024
#: Trajectory dimensions per acquisition (0 for Cartesian data; 2 or 3 for k-space coordinates).
MAX_TRAJECTORY_DIMENSIONS = 4
#: Waveform (physiology) channels and samples per waveform message.
MAX_WAVEFORM_CHANNELS = 64
MAX_WAVEFORM_SAMPLES = 16384
#: Connections being refused (ERROR + CLOSE) at the same time; beyond, a refused socket is just closed.
MAX_REFUSING = 16
#: Seconds ``stop`` waits for running connections before aborting them.
SHUTDOWN_GRACE = 10.0
#: After an abort, unread client input is discarded for at most this long (so CLOSE is not lost to a reset).
DRAIN_LIMIT = 30.0

MSG_CONFIG_FILE = 1
MSG_CONFIG_TEXT = 2
MSG_HEADER = 3
MSG_CLOSE = 4
MSG_TEXT = 5
MSG_ERROR = 8
MSG_ACQUISITION = 1008
MSG_IMAGE = 1022
MSG_WAVEFORM = 1026
CONFIG_NAME_BYTES = 1024
#: Largest configuration or header text accepted (bytes).
MAX_TEXT_BYTES = 16 * 1024 * 1024

_ID = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_END = object()  # end-of-input sentinel on a gadget's queue
_CANCEL = object()  # stop sentinel: the client is gone or the stream was aborted
_POLL = 0.2
#: Reads up to this size get their whole buffer at once; larger ones grow it as the data arrives.
_READ_CHUNK = 1 << 20
_ACQUISITION_HEADER_BYTES = ctypes.sizeof(ismrmrd.AcquisitionHeader)
_WAVEFORM_HEADER_BYTES = ctypes.sizeof(ismrmrd.WaveformHeader)

Target = Callable[[Any], None]


def error_message(text: str) -> bytes:
    """ERROR (id 8): uint16 id, uint64 length, UTF-8 text."""
    payload = text.encode("utf-8")
    return _ID.pack(MSG_ERROR) + _U64.pack(len(payload)) + payload


def text_message(text: str) -> bytes:
    """TEXT (id 5): uint16 id, uint32 length, UTF-8 text."""
    payload = text.encode("utf-8")
    return _ID.pack(MSG_TEXT) + _U32.pack(len(payload)) + payload


def close_message() -> bytes:
    """CLOSE (id 4), no payload."""
    return _ID.pack(MSG_CLOSE)


def describe(exc: BaseException) -> str:
    """``Name: message``, the form every ERROR text takes."""
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------- configuration


def resolve_configuration(name: str, protocols_dir: str | Path = DEFAULT_PROTOCOLS_DIR) -> Path:
    """The protocol file for a configuration name: ``NAME`` or ``NAME.xml`` directly inside ``protocols_dir``.

    Raises:
        UnknownConfigurationError: empty name, a path separator or ``..`` in it, or no such protocol.
    """
    folder = Path(protocols_dir).resolve()
    if not name or "/" in name or "\\" in name or ".." in name or "\0" in name or ":" in name:
        raise UnknownConfigurationError(
            f"configuration name {name!r} refused: a name is a file name in the server's protocols folder "
            "(no path separators, no '..')"
        )
    candidates = [name] if name.endswith(".xml") else [name, f"{name}.xml"]
    for candidate in candidates:
        path = folder / candidate
        if path.is_file() and path.resolve().parent == folder:
            return path
    available = ", ".join(sorted(p.name for p in folder.glob("*.xml"))) or "none"
    raise UnknownConfigurationError(
        f"configuration {name!r} is not one of this server's protocols (in {folder}: {available})"
    )


@dataclass(frozen=True)
class Branch:
    """One gadget of a connection's protocol: its branch key ("" for a single step) and step."""

    key: str
    step: ExternalStep


def plan_branches(protocol: Protocol) -> list[Branch]:
    """The gadgets to run: one ``<external>``, or a ``<parallel>`` of single ``<external>`` branches.

    Raises:
        ProtocolError: other stream shapes, or no AcquisitionReader / ImageWriter.
    """
    where = str(protocol.path) if protocol.path else "the configuration"
    if "AcquisitionReader" not in protocol.readers:
        raise ProtocolError(f"{where} has no AcquisitionReader (gadgetron_core_readers): acquisitions would be refused")
    if "ImageWriter" not in protocol.writers:
        raise ProtocolError(f"{where} has no ImageWriter (gadgetron_core_writers): no image could be returned")
    unsupported = (
        f"{where}: the MRD server runs one <external> step, or a <parallel> block whose streams are one "
        "<external> step each; run multi-step streams with replay or on a Gadgetron server"
    )
    if len(protocol.steps) != 1:
        raise ProtocolError(unsupported)
    step = protocol.steps[0]
    if isinstance(step, ExternalStep):
        return [Branch("", step)]
    assert isinstance(step, ParallelStep)
    branches = []
    for key, steps in step.streams.items():
        if len(steps) != 1 or not isinstance(steps[0], ExternalStep):
            raise ProtocolError(f"{unsupported} (stream {key!r} is not)")
        branches.append(Branch(key, steps[0]))
    return branches


def load_target(step: ExternalStep) -> Target:
    """``step.target`` of module ``step.module``: a function taking the connection, or a class whose
    instance's ``handle(connection)`` is called (as the gadgetron package's ``load_target``).

    Raises:
        ProtocolError: the module cannot be imported or has no such callable.
    """
    try:
        module = importlib.import_module(step.module)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ProtocolError(f"gadget module {step.module!r} cannot be imported: {describe(exc)}") from exc
    target = getattr(module, step.target, None)
    if inspect.isclass(target):
        cls = target
        return lambda connection: cls().handle(connection)
    if callable(target):
        return target
    raise ProtocolError(f"gadget {step.name}: module {step.module!r} has no callable {step.target!r}")


# --------------------------------------------------------------------------------------------- message limits


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


@dataclass(frozen=True)
class MessageLimits:
    """The largest acquisition and waveform one exam may declare, derived from its ISMRMRD header.

    ``samples``: :data:`SAMPLES_SLACK` x the largest encoded (or recon) matrix x of the header's
    encodings (oversampling, asymmetric echo), at least :data:`MIN_SAMPLES_LIMIT`; ``channels``: the
    header's receiverChannels (at most :data:`MAX_CHANNELS`), else :data:`DEFAULT_MAX_CHANNELS`.
    ``samples_basis`` / ``channels_basis`` say where each came from (for the error message).
    """

    samples: int
    channels: int
    samples_basis: str = ""
    channels_basis: str = ""
    trajectory_dimensions: int = MAX_TRAJECTORY_DIMENSIONS
    waveform_channels: int = MAX_WAVEFORM_CHANNELS
    waveform_samples: int = MAX_WAVEFORM_SAMPLES

    @classmethod
    def from_header(cls, header: Any) -> MessageLimits:
        """Limits for an exam with this (parsed) ISMRMRD header."""
        widths = []
        for encoding in getattr(header, "encoding", None) or []:
            for space in (getattr(encoding, "encodedSpace", None), getattr(encoding, "reconSpace", None)):
                with contextlib.suppress(AttributeError, TypeError, ValueError):
                    widths.append(int(space.matrixSize.x))  # type: ignore[union-attr]
        widths = [w for w in widths if w > 0]
        if widths:
            width = min(max(widths), MAX_MATRIX[0])
            samples = max(SAMPLES_SLACK * width, MIN_SAMPLES_LIMIT)
            samples_basis = f"{SAMPLES_SLACK} x the header's encoded matrix x of {max(widths)}"
        else:
            samples = SAMPLES_SLACK * MAX_MATRIX[0]
            samples_basis = "the header states no encoded matrix"
        info = getattr(header, "acquisitionSystemInformation", None)
        receivers = getattr(info, "receiverChannels", None)
        try:
            receivers = int(receivers) if receivers is not None else 0
        except (TypeError, ValueError):
            receivers = 0
        if receivers > 0:
            channels = min(receivers, MAX_CHANNELS)
            channels_basis = f"the header's receiverChannels {receivers}" + (
                f", capped at {MAX_CHANNELS}" if receivers > MAX_CHANNELS else ""
            )
        else:
            channels = DEFAULT_MAX_CHANNELS
            channels_basis = "the header states no receiverChannels"
        return cls(samples, channels, samples_basis, channels_basis)

    def acquisition_bytes(self, head: bytes, what: str) -> int:
        """Bytes of trajectory and data that follow this 340-byte acquisition header.

        Raises:
            MessageTooLargeError: more samples, channels or trajectory dimensions than allowed.
        """
        acq = ismrmrd.AcquisitionHeader.from_buffer_copy(head)
        samples, channels, dims = int(acq.number_of_samples), int(acq.active_channels), int(acq.trajectory_dimensions)
        nbytes = samples * (dims * 4 + channels * 8)
        over = []
        if samples > self.samples:
            over.append(f"{samples} samples (at most {self.samples}: {self.samples_basis})")
        if channels > self.channels:
            over.append(f"{channels} channels (at most {self.channels}: {self.channels_basis})")
        if dims > self.trajectory_dimensions:
            over.append(f"{dims} trajectory dimensions (at most {self.trajectory_dimensions})")
        return _refused_if(over, what, nbytes)

    def waveform_bytes(self, head: bytes, what: str) -> int:
        """Bytes of data that follow this 40-byte waveform header.

        Raises:
            MessageTooLargeError: more channels or samples than allowed.
        """
        wav = ismrmrd.WaveformHeader.from_buffer_copy(head)
        channels, samples = int(wav.channels), int(wav.number_of_samples)
        nbytes = channels * samples * 4
        over = []
        if channels > self.waveform_channels:
            over.append(f"{channels} channels (at most {self.waveform_channels})")
        if samples > self.waveform_samples:
            over.append(f"{samples} samples (at most {self.waveform_samples})")
        return _refused_if(over, what, nbytes)


def _refused_if(over: list[str], what: str, nbytes: int) -> int:
    """``nbytes`` when no limit is exceeded; else MessageTooLargeError naming each limit ``over``."""
    if over:
        raise MessageTooLargeError(
            f"{what} declares {' and '.join(over)}, {_size(nbytes)} of data; refused before reading it"
        )
    return nbytes


# --------------------------------------------------------------------------------------------- client I/O


class _ClientChannel:
    """Everything written to the client: whole messages under one lock; a dead socket is tolerated."""

    def __init__(self, sock: socket.socket, label: str, on_gadget_error: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.label = label
        self.dead = False
        self.forwarding = True
        #: Called once, outside the lock, after the first ERROR from a gadget was written to the client.
        self._on_gadget_error = on_gadget_error
        self.gadget_failed = False
        self.images = 0
        self.errors = 0
        self.dropped: dict[str, int] = {}

    def write(self, data: bytes, *, from_gadget: bool = True) -> bool:
        """Send ``data``; False when the client is gone or gadget output is no longer forwarded."""
        with self._lock:
            if self.dead or (from_gadget and not self.forwarding):
                return False
            try:
                self._sock.sendall(data)
            except OSError as exc:  # reset, broken pipe, timeout: the client is gone (or stuck)
                self.dead = True
                logger.warning("client %s: cannot write (%s); further output is dropped", self.label, describe(exc))
                return False
            first_failure = False
            if len(data) >= _ID.size and _ID.unpack_from(data)[0] == MSG_ERROR:
                self.errors += 1
                first_failure = from_gadget and not self.gadget_failed
                self.gadget_failed = self.gadget_failed or from_gadget
        if first_failure and self._on_gadget_error is not None:
            self._on_gadget_error()
        return True

    def send_item(self, item: object) -> None:
        """A gadget's ``send``: images go to the client; acquisitions and waveforms are dropped."""
        if isinstance(item, ismrmrd.Image):
            if self.write(encode_message(item)):
                with self._lock:
                    self.images += 1
            return
        if isinstance(item, ismrmrd.Acquisition | ismrmrd.Waveform):
            name = type(item).__name__
            with self._lock:
                self.dropped[name] = self.dropped.get(name, 0) + 1
            return
        raise TypeError(f"No appropriate writer found for item of type '{type(item)}'")

    def send_error(self, text: str, *, from_gadget: bool = False) -> None:
        self.write(error_message(text), from_gadget=from_gadget)

    def close_stream(self) -> None:
        """Send CLOSE (once) and stop forwarding gadget output."""
        with self._lock:
            done, self.forwarding = not self.forwarding, False
        if not done:
            self.write(close_message(), from_gadget=False)

    def mark_dead(self) -> None:
        with self._lock:
            self.dead = True


class _SocketProxy:
    """``connection.socket`` for a gadget: ``write(bytes)`` of whole messages to the client."""

    def __init__(self, channel: _ClientChannel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> None:
        self._channel.write(bytes(data))


class ServerConnection:
    """In-process stand-in for ``gadgetron.external.Connection``: what the gadgets use, nothing more.

    ``config`` (the step's ``<configuration>`` parsed with ElementTree, None when empty or malformed),
    ``header`` (parsed ISMRMRD header), ``raw_bytes.config`` / ``raw_bytes.header``, iteration over the
    incoming items until the end of the input, ``send(item)`` and ``socket.write(bytes)``.
    """

    def __init__(
        self,
        step: ExternalStep,
        header: Any,
        header_xml: bytes,
        inbox: queue.Queue,
        channel: _ClientChannel,
        input_timeout: float,
        stopped: threading.Event | None = None,
    ) -> None:
        self.config = _parse_config(step.config_xml, step.name)
        self.header = header
        self.raw_bytes = SimpleNamespace(config=step.config_xml, header=header_xml)
        self.socket = _SocketProxy(channel)
        self._inbox = inbox
        self._channel = channel
        self._input_timeout = input_timeout
        self._stopped = stopped if stopped is not None else threading.Event()
        self._ended = False

    def __iter__(self) -> Iterator[Any]:
        """The incoming items until the end of the input; ``PeerGoneError`` once the gadget is stopped."""
        while not self._ended:
            try:
                item = self._inbox.get(timeout=self._input_timeout)
            except queue.Empty:
                logger.warning("no input for %g s; ending the gadget's input", self._input_timeout)
                item = _END
            if item is _END:
                self._ended = True
                return
            if item is _CANCEL:
                self._ended = True
                raise _peer_gone("the client is gone or its stream was aborted: the gadget's input was cut")
            yield item

    def send(self, item: object) -> None:
        """Send an image to the client (acquisitions and waveforms are dropped; other types: TypeError).

        Raises ``PeerGoneError`` once the gadget is stopped or the client's socket failed: nobody gets the images.
        """
        if self._stopped.is_set() or self._channel.dead:
            raise _peer_gone("the client is gone or its stream was aborted: nobody receives the images")
        self._channel.send_item(item)


def _peer_gone(text: str) -> ConnectionError:
    """The gadgets' PeerGoneError (they stop quietly on it); imported late, it pulls in the reconstruction stack."""
    from .gadgets import PeerGoneError

    return PeerGoneError(text)


def _parse_config(config_xml: bytes, name: str) -> ET.Element | None:
    if not config_xml.strip():
        return None
    try:
        return ET.fromstring(config_xml)
    except ET.ParseError as exc:
        logger.warning("gadget %s: configuration is not XML (%s); config is None", name, exc)
        return None


class _Inbound:
    """Reads from the client; every read is bounded by ``timeout`` seconds of silence, and during the
    handshake (:meth:`start_handshake`) by what is left of the handshake's time."""

    def __init__(self, sock: socket.socket, timeout: float, message_timeout: float = DEFAULT_MESSAGE_TIMEOUT) -> None:
        self._sock = sock
        self._timeout = timeout
        self._handshake: float | None = None  # the handshake's seconds in all, while it runs
        self._left = 0.0  # seconds of waiting the handshake has left
        self._message_timeout = message_timeout
        self._deadline: float | None = None  # when the message being read must be complete
        self._message_started = 0.0
        self.what = "the configuration"

    def start_handshake(self, seconds: float) -> None:
        """From now on, waits in all may last ``seconds`` (time spent on the server's side does not count)."""
        self._handshake, self._left = seconds, seconds

    def end_handshake(self) -> None:
        self._handshake = None
        self._sock.settimeout(self._timeout)

    def _timed_out(self) -> StreamTimeoutError:
        if self._handshake is not None and self._left <= 0.001:
            return StreamTimeoutError(
                f"the client did not send its configuration and header within the handshake timeout of "
                f"{self._handshake:g} s (the server was waiting for {self.what}); the connection was dropped"
            )
        return StreamTimeoutError(
            f"the client sent nothing for {self._timeout:g} s while the server waited for {self.what}; "
            "the connection was dropped"
        )

    def _too_slow(self) -> ClientTooSlowError:
        return ClientTooSlowError(
            f"the client took more than {self._message_timeout:g} s to send {self.what} (a message must arrive "
            "whole within that time once its first byte came; serve --message-timeout); the connection was dropped"
        )

    def _recv_into(self, view: memoryview) -> int:
        wait = self._timeout
        if self._handshake is not None:
            if self._left <= 0.001:
                raise self._timed_out()
            wait = min(wait, self._left)
        elif self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise self._too_slow()
            wait = min(wait, left)
        self._sock.settimeout(wait)
        began = time.monotonic()
        try:
            count = self._sock.recv_into(view)
        except TimeoutError:
            if self._handshake is not None:
                self._left -= time.monotonic() - began
            if self._deadline is not None and time.monotonic() >= self._deadline - 0.001:
                raise self._too_slow() from None
            raise self._timed_out() from None
        except OSError as exc:
            raise ClientDisconnectedError(f"the client connection failed while sending {self.what}: {exc}") from exc
        if self._handshake is not None:
            self._left -= time.monotonic() - began
        if count == 0:
            raise ClientDisconnectedError(f"the client closed the connection before the end of {self.what}")
        return count

    def read(self, nbytes: int) -> bytes:
        """Exactly ``nbytes``; beyond :data:`_READ_CHUNK` the buffer grows only as the data arrives."""
        buffer = bytearray(min(nbytes, _READ_CHUNK))
        got = 0
        while got < nbytes:
            if got == len(buffer):
                buffer.extend(bytes(min(nbytes - got, len(buffer))))  # at most twice what has arrived
            with memoryview(buffer) as whole, whole[got:] as view:
                got += self._recv_into(view)
        return bytes(buffer)

    def u16(self) -> int:
        return _ID.unpack(self.read(_ID.size))[0]

    def message_id(self) -> int:
        """The next message's id. The wait for its first byte may last the idle timeout; from that byte on, the
        whole message (id, header, data) must arrive within the message timeout (:meth:`end_message`)."""
        first = self.read(1)
        self._deadline = time.monotonic() + self._message_timeout
        return _ID.unpack(first + self.read(1))[0]

    def end_message(self) -> None:
        self._deadline = None

    def text(self, what: str) -> bytes:
        (length,) = _U32.unpack(self.read(_U32.size))
        if length > MAX_TEXT_BYTES:
            raise MessageTooLargeError(
                f"{what} of {length} bytes is larger than the {MAX_TEXT_BYTES} bytes this server reads "
                "(corrupt stream?)"
            )
        return self.read(length).rstrip(b"\0")

    def message(self, kind: type, payload_bytes: Callable[[bytes], int]) -> tuple[Any, bytes]:
        """One ISMRMRD acquisition or waveform, and its serialised bytes (to make copies).

        ``payload_bytes(header)`` checks the fixed-size header and returns how many bytes follow it;
        it raises (MessageTooLargeError ...) before anything more is read or allocated.
        """
        head = self.read(_ACQUISITION_HEADER_BYTES if kind is ismrmrd.Acquisition else _WAVEFORM_HEADER_BYTES)
        raw = head + self.read(payload_bytes(head))
        try:
            item = kind.deserialize_from(io.BytesIO(raw).read)
        except Exception as exc:  # malformed sizes: whatever the ismrmrd parsers raise
            raise IsmrmrdFormatError(f"{self.what} does not deserialise: {describe(exc)}") from exc
        return item, raw


# --------------------------------------------------------------------------------------------- one connection


@dataclass
class _Gadget:
    branch: Branch
    target: Target
    inbox: queue.Queue = field(default_factory=queue.Queue)
    finished: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    ended_input: bool = False

    def put(self, item: object) -> None:
        if not self.finished.is_set() and not self.stopped.is_set():
            self.inbox.put(item)

    def end_input(self) -> None:
        if not self.ended_input:
            self.ended_input = True
            self.inbox.put(_END)

    def stop(self) -> None:
        """Free the queued input and make the gadget's next read or ``send`` raise PeerGoneError."""
        self.stopped.set()
        if not self.ended_input:
            self.ended_input = True
            with contextlib.suppress(queue.Empty):
                while True:
                    self.inbox.get_nowait()
            self.inbox.put(_CANCEL)


@dataclass
class _Summary:
    config: str = "?"
    acquisitions: int = 0
    waveforms: int = 0
    nbytes: int = 0
    outcome: str = "ok"


class _Session:
    """One client connection, from the configuration to CLOSE."""

    def __init__(self, server: MrdServer, sock: socket.socket, label: str, address: str = "?") -> None:
        self.server = server
        self.sock = sock
        self.label = label
        self.address = address
        self._peer_exam = False
        self.channel = _ClientChannel(sock, label, on_gadget_error=self._gadget_failed)
        self.inbound = _Inbound(sock, server.idle_timeout, server.message_timeout)
        self.gadgets: list[_Gadget] = []
        self.summary = _Summary()
        self.limits = MessageLimits(0, 0)
        self.input_complete = False
        self._exam_slot = False

    def run(self) -> None:
        start = time.monotonic()
        self.sock.settimeout(self.server.idle_timeout)
        aborted = False
        try:
            self.inbound.start_handshake(self.server.handshake_timeout)
            protocol = self._read_configuration()
            check_protocol(protocol, allowed_modules=self.server.allowed_modules)
            gadgets = [_Gadget(branch, load_target(branch.step)) for branch in plan_branches(protocol)]
            header_xml, header = self._read_header()
            self.inbound.end_handshake()
            self.limits = MessageLimits.from_header(header)
            check_header_memory(header, len(gadgets))  # one slice buffer per gadget must fit: before any starts
            self._take_exam_slot()
            self._start(gadgets, header, header_xml)
            self._pump(protocol)
        except ClientDisconnectedError as exc:
            self.channel.mark_dead()
            self.summary.outcome = "client disconnected"
            logger.warning("client %s: %s", self.label, describe(exc))
        except ReconError as exc:
            aborted = True
            self.summary.outcome = type(exc).__name__
            logger.error("client %s: %s", self.label, describe(exc))
            self.channel.send_error(describe(exc))
        except Exception as exc:  # a bug here must not take the server down; tell the client
            aborted = True
            self.summary.outcome = "internal error"
            logger.exception("client %s: internal error", self.label)
            self.channel.send_error(f"internal server error {describe(exc)}")
        finally:
            if not self.input_complete and self.gadgets:
                logger.info(
                    "client %s: stopping %d gadget(s): the stream ended without CLOSE", self.label, len(self.gadgets)
                )
            for gadget in self.gadgets:
                if self.input_complete:
                    gadget.end_input()
                else:  # nobody will get this exam's images: do not reconstruct it
                    gadget.stop()
        try:
            if aborted or self.channel.dead:
                self.channel.close_stream()  # CLOSE at once; stopped gadgets end at their next read or send
                self._join_gadgets(report=False)
            else:
                self._join_gadgets(report=True)
            self._release_exam_slot()
            self._finish()
        finally:
            self._release_exam_slot()
            with contextlib.suppress(OSError):
                self.sock.close()
        s, c = self.summary, self.channel
        dropped = "".join(f", {n} {kind}s dropped" for kind, n in c.dropped.items())
        logger.info(
            "client %s: configuration %s, %d acquisitions, %d waveforms (%d bytes) in; %d images, %d errors out%s; "
            "%s; %.2f s",
            self.label, s.config, s.acquisitions, s.waveforms, s.nbytes, c.images, c.errors, dropped, s.outcome,
            time.monotonic() - start,
        )  # fmt: skip

    def _gadget_failed(self) -> None:
        """A gadget reported an error: the exam fails as a whole, as on Gadgetron and in replay. The other gadgets
        are stopped (their next read or send ends them) unless the server keeps partial results."""
        self.summary.outcome = "gadget failed"
        if self.server.keep_partial:
            logger.info("client %s: a gadget failed; the others run to their end (keep_partial)", self.label)
            return
        running = [g for g in list(self.gadgets) if not g.finished.is_set()]
        logger.info(
            "client %s: a gadget failed: stopping the %d other gadget(s) (serve --keep-partial lets them finish)",
            self.label, len(running),
        )  # fmt: skip
        for gadget in running:
            gadget.stop()

    def _take_exam_slot(self) -> None:
        """Wait (at most ``idle_timeout``) until fewer than ``max_exams`` exams are past their handshake."""
        server = self.server
        began = time.monotonic()
        while not server.claim_peer_exam(self.address):
            if server.stopping():
                raise ServerBusyError("the MRD server is stopping; send the exam again once it is back")
            if time.monotonic() - began >= server.idle_timeout:
                raise ServerBusyError(
                    f"this address ({self.address}) already has {server.max_exams_per_peer} exams in progress on this "
                    f"MRD server, and none ended within {server.idle_timeout:g} s; send the exam again later "
                    "(serve --max-exams-per-peer sets the number)"
                )
            time.sleep(_POLL)
        self._peer_exam = True
        while not server.exam_slots.acquire(timeout=_POLL):
            if server.stopping():
                raise ServerBusyError("the MRD server is stopping; send the exam again once it is back")
            if time.monotonic() - began >= server.idle_timeout:
                raise ServerBusyError(
                    f"all {server.max_exams} exam slots of this MRD server stayed busy for {server.idle_timeout:g} s; "
                    "send the exam again later (serve --max-exams sets the number)"
                )
        self._exam_slot = True
        waited = time.monotonic() - began
        if waited > 1.0:
            logger.info("client %s: waited %.1f s for an exam slot", self.label, waited)

    def _release_exam_slot(self) -> None:
        if self._exam_slot:
            self._exam_slot = False
            self.server.exam_slots.release()
        if self._peer_exam:
            self._peer_exam = False
            self.server.release_peer_exam(self.address)

    def _read_configuration(self) -> Protocol:
        self.inbound.what = "the configuration"
        mid = self.inbound.u16()
        if mid == MSG_CONFIG_FILE:
            raw = self.inbound.read(CONFIG_NAME_BYTES)
            name = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
            self.summary.config = repr(name)
            path = resolve_configuration(name, self.server.protocols_dir)
            logger.info("client %s: configuration %s (%s)", self.label, name, path)
            return load_protocol(path)
        if mid == MSG_CONFIG_TEXT:
            text = self.inbound.text("the configuration text")
            self.summary.config = f"text ({len(text)} bytes)"
            return load_protocol(text)
        raise ProtocolError(
            f"the client's first message has id {mid}; expected a configuration: "
            f"{MSG_CONFIG_FILE} (name) or {MSG_CONFIG_TEXT} (XML text)"
        )

    def _read_header(self) -> tuple[bytes, Any]:
        self.inbound.what = "the ISMRMRD header"
        mid = self.inbound.u16()
        if mid != MSG_HEADER:
            raise ProtocolError(
                f"expected the ISMRMRD header (message id {MSG_HEADER}) after the configuration, got id {mid}"
            )
        header_xml = self.inbound.text("the ISMRMRD header")
        if not header_xml.strip():
            raise IsmrmrdFormatError("the client's ISMRMRD header is empty")
        return header_xml, parse_header(header_xml, where="the client's header")

    def _start(self, gadgets: list[_Gadget], header: Any, header_xml: bytes) -> None:
        input_timeout = self.server.idle_timeout + 30.0
        for gadget in gadgets:
            connection = ServerConnection(
                gadget.branch.step, header, header_xml, gadget.inbox, self.channel, input_timeout, gadget.stopped
            )
            name = f"mrd-gadget-{gadget.branch.key or gadget.branch.step.target}"
            gadget.thread = threading.Thread(
                target=_run_gadget, args=(gadget, connection, self.channel), name=name, daemon=True
            )
            self.gadgets.append(gadget)
            gadget.thread.start()

    def _payload_bytes(self, kind: type, head: bytes) -> int:
        """Check a message's header against the limits; the bytes that follow it."""
        if kind is ismrmrd.Acquisition:
            nbytes = self.limits.acquisition_bytes(head, self.inbound.what)
        else:
            nbytes = self.limits.waveform_bytes(head, self.inbound.what)
        total = self.summary.nbytes + _ID.size + len(head) + nbytes
        if total > self.server.max_exam_bytes:
            raise ExamTooLargeError(
                f"{self.inbound.what} would bring this exam to {total:,} bytes, over the server's limit of "
                f"{self.server.max_exam_bytes:,} bytes per exam (serve --max-exam-bytes); refused before reading it"
            )
        self.summary.nbytes = total
        return nbytes

    def _pump(self, protocol: Protocol) -> None:
        """Read acquisitions and waveforms until CLOSE and hand them to the gadgets."""
        single = len(self.gadgets) == 1
        waveforms_to_gadget = single and "WaveformReader" in protocol.readers
        if not waveforms_to_gadget:
            why = "AcquisitionFanout passes acquisitions only" if not single else "the protocol has no WaveformReader"
            logger.debug("client %s: waveforms will be dropped (%s)", self.label, why)
        acquisition_bytes = lambda head: self._payload_bytes(ismrmrd.Acquisition, head)  # noqa: E731
        waveform_bytes = lambda head: self._payload_bytes(ismrmrd.Waveform, head)  # noqa: E731
        while True:
            self.inbound.what = f"message {self.summary.acquisitions + self.summary.waveforms + 1} (or CLOSE)"
            mid = self.inbound.message_id()
            if mid == MSG_CLOSE:
                self.inbound.end_message()
                self.input_complete = True
                return
            if mid == MSG_ACQUISITION:
                self.inbound.what = f"acquisition {self.summary.acquisitions}"
                item, raw = self.inbound.message(ismrmrd.Acquisition, acquisition_bytes)
                self.inbound.end_message()
                self.summary.acquisitions += 1
                self._fan_out(item, raw, ismrmrd.Acquisition, self.gadgets)
            elif mid == MSG_WAVEFORM:
                self.inbound.what = f"waveform {self.summary.waveforms}"
                item, raw = self.inbound.message(ismrmrd.Waveform, waveform_bytes)
                self.inbound.end_message()
                self.summary.waveforms += 1
                if waveforms_to_gadget:
                    self._fan_out(item, raw, ismrmrd.Waveform, self.gadgets)
            else:
                raise ProtocolError(
                    f"unexpected message id {mid} from the client after {self.summary.acquisitions} acquisitions; "
                    f"this server reads acquisitions ({MSG_ACQUISITION}), waveforms ({MSG_WAVEFORM}) "
                    f"and CLOSE ({MSG_CLOSE})"
                )

    @staticmethod
    def _fan_out(item: Any, raw: bytes, kind: type, gadgets: list[_Gadget]) -> None:
        live = [g for g in gadgets if not g.finished.is_set()]
        for index, gadget in enumerate(live):  # every branch gets its own copy
            gadget.put(item if index == 0 else kind.deserialize_from(io.BytesIO(raw).read))

    def _join_gadgets(self, *, report: bool) -> None:
        deadline = time.monotonic() + self.server.handler_timeout
        for gadget in self.gadgets:
            assert gadget.thread is not None
            gadget.thread.join(max(0.0, deadline - time.monotonic()))
        late = [g.branch.step.name for g in self.gadgets if g.thread is not None and g.thread.is_alive()]
        if late:
            error = StreamTimeoutError(
                f"gadget(s) {', '.join(late)} did not finish within {self.server.handler_timeout:g} s after "
                "the end of the input; the stream was closed without their images"
            )
            logger.error("client %s: %s", self.label, error)
            if report:
                self.channel.send_error(describe(error))

    def _finish(self) -> None:
        """CLOSE to the client, then let the socket go without losing CLOSE to a reset."""
        self.channel.close_stream()
        if self.channel.dead:
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        if not self.input_complete:
            _drain(self.sock, min(self.server.idle_timeout, 10.0), DRAIN_LIMIT)


def _run_gadget(gadget: _Gadget, connection: ServerConnection, channel: _ClientChannel) -> None:
    """A gadget thread: call the target; a target that raises is reported as ERROR (unless it was stopped)."""
    name = gadget.branch.step.name
    try:
        gadget.target(connection)
    except BaseException as exc:  # a foreign target may raise anything; report it, never vanish
        if gadget.stopped.is_set() or channel.dead:  # nobody to report to: the PeerGoneError it was given
            logger.info("gadget %s stopped: %s", name, describe(exc))
        else:
            logger.exception("gadget %s raised", name)
            channel.send_error(describe(GadgetFailedError(f"gadget {name} raised {describe(exc)}")), from_gadget=True)
    finally:
        gadget.finished.set()
        with contextlib.suppress(queue.Empty):  # free what it did not read
            while True:
                gadget.inbox.get_nowait()


def _drain(sock: socket.socket, idle: float, limit: float) -> None:
    """Read and discard until EOF, ``idle`` seconds of silence or ``limit`` seconds in all."""
    deadline = time.monotonic() + limit
    sock.settimeout(idle)
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline and sock.recv(65536):
            pass


# --------------------------------------------------------------------------------------------- server


class ServerReady(threading.Event):
    """A ready event that also carries the bound address (``address``, ``port``) once set."""

    def __init__(self) -> None:
        super().__init__()
        self.address: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        if self.address is None:
            raise RuntimeError("the server is not listening yet")
        return self.address[1]


def _check_setting(name: str, value: float, *, integer: bool = False, minimum: float = 0.0) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > minimum
    if not ok or (integer and int(value) != value):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} > {minimum:g}, got {value!r}")


class MrdServer:
    """The MRD server. ``bind()`` then ``serve_forever()``, or use :func:`serve`.

    ``port=0`` picks a free port (see :attr:`port` after ``bind``). ``max_connections`` stops accepting
    after that many connections and returns once they are done (None: until stopped). Connections run
    concurrently, one thread each: at most ``max_concurrent`` at once, ``max_per_peer`` of them from one
    address, ``max_exams`` of them past the handshake (which must end within ``handshake_timeout``
    seconds of waiting), ``max_exams_per_peer`` of those from one address; each acquisition or waveform must
    arrive whole within ``message_timeout`` seconds of its first byte; one exam may send ``max_exam_bytes``.
    See the module's "Limits".

    Raises:
        ValueError: a setting out of its domain (timeouts and limits must be positive, counts integers).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        protocols_dir: str | Path = DEFAULT_PROTOCOLS_DIR,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_per_peer: int = DEFAULT_MAX_PER_PEER,
        max_exams: int = DEFAULT_MAX_EXAMS,
        max_exams_per_peer: int = DEFAULT_MAX_EXAMS_PER_PEER,
        max_exam_bytes: int = DEFAULT_MAX_EXAM_BYTES,
        max_connections: int | None = None,
        allowed_modules: Collection[str] = (),
        keep_partial: bool = False,
    ) -> None:
        for name, value in (
            ("idle_timeout", idle_timeout),
            ("handshake_timeout", handshake_timeout),
            ("message_timeout", message_timeout),
            ("handler_timeout", handler_timeout),
        ):
            _check_setting(name, value)
        for name, value in (
            ("max_concurrent", max_concurrent),
            ("max_per_peer", max_per_peer),
            ("max_exams", max_exams),
            ("max_exams_per_peer", max_exams_per_peer),
            ("max_exam_bytes", max_exam_bytes),
        ):
            _check_setting(name, value, integer=True)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer 0-65535 (0: any free port), got {port!r}")
        self.host = host
        self.requested_port = port
        self.protocols_dir = Path(protocols_dir)
        self.idle_timeout = float(idle_timeout)
        self.handshake_timeout = float(handshake_timeout)
        self.message_timeout = float(message_timeout)
        self.handler_timeout = float(handler_timeout)
        self.max_concurrent = int(max_concurrent)
        self.max_per_peer = int(max_per_peer)
        self.max_exams = int(max_exams)
        self.max_exams_per_peer = int(max_exams_per_peer)
        self._peer_exams: dict[str, int] = {}
        self.max_exam_bytes = int(max_exam_bytes)
        self.max_connections = max_connections
        #: Gadget modules a configuration may name besides the project's own (``serve --allow-module``).
        self.allowed_modules = frozenset(allowed_modules)
        #: On a gadget's ERROR, let the other gadgets finish (True) instead of stopping them (the default).
        self.keep_partial = bool(keep_partial)
        self._slots = threading.Semaphore(self.max_concurrent)
        #: Exams past their handshake; a session holds one from its header until its gadgets ended.
        self.exam_slots = threading.Semaphore(self.max_exams)
        self._refusing = threading.Semaphore(MAX_REFUSING)
        self._per_peer: dict[str, int] = {}
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._stop_requested: threading.Event | None = None
        self._lock = threading.Lock()
        self._active: dict[threading.Thread, socket.socket] = {}
        self.connections = 0
        self.refused = 0

    def stopping(self) -> bool:
        """True once :meth:`shutdown` was called or the ``stop`` event of ``serve_forever`` is set."""
        return self._stop.is_set() or (self._stop_requested is not None and self._stop_requested.is_set())

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on; ``bind()`` first."""
        if self._listener is None:
            raise RuntimeError("the server is not bound; call bind()")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    def bind(self) -> tuple[str, int]:
        """Open the listening socket (idempotent) and return its address."""
        if self._listener is None:
            if not self.protocols_dir.is_dir():
                logger.warning("protocols folder %s does not exist: only configuration texts work", self.protocols_dir)
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._listener = socket.create_server((self.host, self.requested_port), family=family, backlog=16)
            self._listener.settimeout(_POLL)
            if not _is_loopback(self.host):
                logger.warning(
                    "MRD server listening on %s, not loopback: any client that reaches it can run the project's "
                    "gadgets%s",
                    self.host,
                    f" and any target of {', '.join(sorted(self.allowed_modules))}" if self.allowed_modules else "",
                )
        return self.address

    def shutdown(self) -> None:
        """Ask ``serve_forever`` to stop (from any thread)."""
        self._stop.set()

    def serve_forever(self, *, ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
        """Accept and serve connections until ``stop`` (or :meth:`shutdown`), or ``max_connections``.

        ``ready`` is set once listening (a :class:`ServerReady` also gets the address). On the way out
        running connections get :data:`SHUTDOWN_GRACE` seconds, then their sockets are shut down.
        """
        host, port = self.bind()
        logger.info(
            "MRD server listening on %s:%d (protocols: %s; %d connections, %d per address, %d exams of at most "
            "%s at once; handshake %g s, idle %g s)",
            host, port, self.protocols_dir, self.max_concurrent, self.max_per_peer, self.max_exams,
            _size(self.max_exam_bytes), self.handshake_timeout, self.idle_timeout,
        )  # fmt: skip
        if isinstance(ready, ServerReady):
            ready.address = (host, port)
        if ready is not None:
            ready.set()
        self._stop_requested = stop
        stopping = self.stopping

        try:
            while not stopping():
                if self.max_connections is not None and self.connections >= self.max_connections:
                    break
                if not self._slots.acquire(timeout=_POLL):
                    continue
                try:
                    assert self._listener is not None
                    sock, peer = self._listener.accept()
                except TimeoutError:
                    self._slots.release()
                    continue
                except OSError:
                    self._slots.release()
                    if stopping():
                        break
                    raise
                if not self._admit(peer):
                    self._slots.release()
                    self._refuse(sock, peer)
                    continue
                self._start_connection(sock, peer)
            self._wait_for_connections(stopping)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C (recon_plugin.interrupt raises a SystemExit)
            logger.info("interrupted: stopping the MRD server")
            self._abort_connections()
            raise
        finally:
            self.close()

    def _admit(self, peer: Any) -> bool:
        """Count a new connection from ``peer``'s address; False when it already has ``max_per_peer``."""
        with self._lock:
            count = self._per_peer.get(peer[0], 0)
            if count >= self.max_per_peer:
                return False
            self._per_peer[peer[0]] = count + 1
            return True

    def claim_peer_exam(self, address: str) -> bool:
        """Count one more exam in progress from ``address``; False when it already has ``max_exams_per_peer``."""
        with self._lock:
            count = self._peer_exams.get(address, 0)
            if count >= self.max_exams_per_peer:
                return False
            self._peer_exams[address] = count + 1
            return True

    def release_peer_exam(self, address: str) -> None:
        with self._lock:
            count = self._peer_exams.get(address, 0) - 1
            if count > 0:
                self._peer_exams[address] = count
            else:
                self._peer_exams.pop(address, None)

    def _leave(self, address: str) -> None:
        with self._lock:
            count = self._per_peer.get(address, 0) - 1
            if count > 0:
                self._per_peer[address] = count
            else:
                self._per_peer.pop(address, None)

    def _refuse(self, sock: socket.socket, peer: Any) -> None:
        """Answer TooManyConnectionsError + CLOSE on a connection over the per-address limit (in a short thread)."""
        self.refused += 1
        error = TooManyConnectionsError(
            f"{peer[0]} already has {self.max_per_peer} connections open to this MRD server (its limit per "
            "address, serve --max-per-peer); close one or try again later"
        )
        logger.warning("client %s:%s refused: %s", peer[0], peer[1], describe(error))
        if not self._refusing.acquire(blocking=False):  # a flood: no answer, just close
            with contextlib.suppress(OSError):
                sock.close()
            return

        def answer() -> None:
            try:
                sock.settimeout(2.0)
                with contextlib.suppress(OSError):
                    sock.sendall(error_message(describe(error)) + close_message())
                    sock.shutdown(socket.SHUT_WR)
                _drain(sock, 1.0, 3.0)
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
                self._refusing.release()

        threading.Thread(target=answer, name=f"mrd-refuse-{peer[0]}", daemon=True).start()

    def _start_connection(self, sock: socket.socket, peer: Any) -> None:
        self.connections += 1
        label = f"{peer[0]}:{peer[1]}#{self.connections}"
        sock.setblocking(True)
        thread = threading.Thread(
            target=self._serve_client, args=(sock, label, peer[0]), name=f"mrd-client-{label}", daemon=True
        )
        with self._lock:
            self._active[thread] = sock
        logger.info("client %s connected", label)
        thread.start()

    def _serve_client(self, sock: socket.socket, label: str, address: str) -> None:
        try:
            _Session(self, sock, label, address).run()
        except Exception:  # never let one connection take the server down
            logger.exception("client %s: connection handler crashed", label)
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            with self._lock:
                self._active.pop(threading.current_thread(), None)
            self._leave(address)
            self._slots.release()

    def _wait_for_connections(self, stopping: Callable[[], bool]) -> None:
        """Wait for running connections; once stopping, for :data:`SHUTDOWN_GRACE` s at most, then abort them."""
        deadline: float | None = None
        while True:
            with self._lock:
                threads = list(self._active)
            if not threads:
                return
            if deadline is None and stopping():
                deadline = time.monotonic() + SHUTDOWN_GRACE
            if deadline is not None and time.monotonic() >= deadline:
                break
            threads[0].join(_POLL)
        self._abort_connections()

    def _abort_connections(self) -> None:
        """Shut down every running connection's socket: their sessions end, and so do their gadgets' inputs."""
        with self._lock:
            active = dict(self._active)
        if not active:
            return
        logger.warning("stopping: aborting %d running connection(s)", len(active))
        for sock in active.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in active:
            thread.join(5.0)

    def close(self) -> None:
        """Close the listening socket."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
            logger.info("MRD server stopped after %d connection(s)", self.connections)

    def __enter__(self) -> MrdServer:
        self.bind()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    protocols_dir: str | Path = DEFAULT_PROTOCOLS_DIR,
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
    handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_per_peer: int = DEFAULT_MAX_PER_PEER,
    max_exams: int = DEFAULT_MAX_EXAMS,
    max_exams_per_peer: int = DEFAULT_MAX_EXAMS_PER_PEER,
    max_exam_bytes: int = DEFAULT_MAX_EXAM_BYTES,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    max_connections: int | None = None,
    allowed_modules: Collection[str] = (),
    keep_partial: bool = False,
) -> None:
    """Run the MRD server until ``stop`` is set (or ``max_connections`` were served); blocks.

    Pass a :class:`ServerReady` as ``ready`` to learn the bound port (useful with ``port=0``). The
    settings are :class:`MrdServer`'s.
    """
    server = MrdServer(
        host,
        port,
        protocols_dir,
        idle_timeout=idle_timeout,
        handshake_timeout=handshake_timeout,
        message_timeout=message_timeout,
        handler_timeout=handler_timeout,
        max_concurrent=max_concurrent,
        max_per_peer=max_per_peer,
        max_exams=max_exams,
        max_exams_per_peer=max_exams_per_peer,
        max_exam_bytes=max_exam_bytes,
        max_connections=max_connections,
        allowed_modules=allowed_modules,
        keep_partial=keep_partial,
    )
    server.serve_forever(ready=ready, stop=stop)
