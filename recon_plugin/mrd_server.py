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
``idle_timeout``, an unexpected message, a bad header or configuration) send ERROR + CLOSE and drop
the connection; gadget output after that is discarded. A client that disconnects is logged as
ClientDisconnectedError. In every case each gadget's input is ended with an end-of-input sentinel,
so gadget threads always end (a gadget that is reconstructing finishes; writes to a dead socket are
dropped), and the server goes on serving the next connection.

Security: a configuration *text* may name any importable Python module as a gadget, exactly as with
Gadgetron. The server binds 127.0.0.1 unless another host is given explicitly.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import ipaddress
import logging
import queue
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ismrmrd

from .errors import (
    ClientDisconnectedError,
    GadgetFailedError,
    IsmrmrdFormatError,
    ProtocolError,
    ReconError,
    StreamTimeoutError,
    UnknownConfigurationError,
)
from .kspace import parse_header
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
#: Seconds the gadgets may take after the end of their input before the stream is failed.
DEFAULT_HANDLER_TIMEOUT = 3600.0
#: Connections served at the same time; further clients wait in the listen backlog.
DEFAULT_MAX_CONCURRENT = 4
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
_POLL = 0.2

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


# --------------------------------------------------------------------------------------------- client I/O


class _ClientChannel:
    """Everything written to the client: whole messages under one lock; a dead socket is tolerated."""

    def __init__(self, sock: socket.socket, label: str) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.label = label
        self.dead = False
        self.forwarding = True
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
            if len(data) >= _ID.size and _ID.unpack_from(data)[0] == MSG_ERROR:
                self.errors += 1
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
    ) -> None:
        self.config = _parse_config(step.config_xml, step.name)
        self.header = header
        self.raw_bytes = SimpleNamespace(config=step.config_xml, header=header_xml)
        self.socket = _SocketProxy(channel)
        self._inbox = inbox
        self._channel = channel
        self._input_timeout = input_timeout
        self._ended = False

    def __iter__(self) -> Iterator[Any]:
        while not self._ended:
            try:
                item = self._inbox.get(timeout=self._input_timeout)
            except queue.Empty:
                logger.warning("no input for %g s; ending the gadget's input", self._input_timeout)
                item = _END
            if item is _END:
                self._ended = True
                return
            yield item

    def send(self, item: object) -> None:
        """Send an image to the client (acquisitions and waveforms are dropped; other types: TypeError)."""
        self._channel.send_item(item)


def _parse_config(config_xml: bytes, name: str) -> ET.Element | None:
    if not config_xml.strip():
        return None
    try:
        return ET.fromstring(config_xml)
    except ET.ParseError as exc:
        logger.warning("gadget %s: configuration is not XML (%s); config is None", name, exc)
        return None


class _Inbound:
    """Reads from the client; every read is bounded by ``timeout`` seconds of silence."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self.what = "the configuration"

    def read(self, nbytes: int) -> bytes:
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        got = 0
        while got < nbytes:
            try:
                count = self._sock.recv_into(view[got:], nbytes - got)
            except TimeoutError:
                raise StreamTimeoutError(
                    f"the client sent nothing for {self._timeout:g} s while the server waited for {self.what}; "
                    "the connection was dropped"
                ) from None
            except OSError as exc:
                raise ClientDisconnectedError(f"the client connection failed while sending {self.what}: {exc}") from exc
            if count == 0:
                raise ClientDisconnectedError(f"the client closed the connection before the end of {self.what}")
            got += count
        return bytes(buffer)

    def u16(self) -> int:
        return _ID.unpack(self.read(_ID.size))[0]

    def text(self, what: str) -> bytes:
        (length,) = _U32.unpack(self.read(_U32.size))
        if length > MAX_TEXT_BYTES:
            raise ProtocolError(f"{what} of {length} bytes is larger than {MAX_TEXT_BYTES} (corrupt stream?)")
        return self.read(length).rstrip(b"\0")

    def message(self, kind: type) -> tuple[Any, bytes]:
        """One ISMRMRD acquisition or waveform, and its serialised bytes (to make copies)."""
        chunks: list[bytes] = []

        def read(nbytes: int) -> bytes:
            chunk = self.read(nbytes)
            chunks.append(chunk)
            return chunk

        try:
            item = kind.deserialize_from(read)
        except ReconError:
            raise
        except Exception as exc:  # malformed sizes: whatever the ismrmrd parsers raise
            raise IsmrmrdFormatError(f"{self.what} does not deserialise: {describe(exc)}") from exc
        return item, b"".join(chunks)


# --------------------------------------------------------------------------------------------- one connection


@dataclass
class _Gadget:
    branch: Branch
    target: Target
    inbox: queue.Queue = field(default_factory=queue.Queue)
    finished: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    ended_input: bool = False

    def put(self, item: object) -> None:
        if not self.finished.is_set():
            self.inbox.put(item)

    def end_input(self) -> None:
        if not self.ended_input:
            self.ended_input = True
            self.inbox.put(_END)


@dataclass
class _Summary:
    config: str = "?"
    acquisitions: int = 0
    waveforms: int = 0
    outcome: str = "ok"


class _Session:
    """One client connection, from the configuration to CLOSE."""

    def __init__(self, server: MrdServer, sock: socket.socket, label: str) -> None:
        self.server = server
        self.sock = sock
        self.label = label
        self.channel = _ClientChannel(sock, label)
        self.inbound = _Inbound(sock, server.idle_timeout)
        self.gadgets: list[_Gadget] = []
        self.summary = _Summary()
        self.input_complete = False

    def run(self) -> None:
        start = time.monotonic()
        self.sock.settimeout(self.server.idle_timeout)
        aborted = False
        try:
            protocol = self._read_configuration()
            gadgets = [_Gadget(branch, load_target(branch.step)) for branch in plan_branches(protocol)]
            header_xml, header = self._read_header()
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
            for gadget in self.gadgets:
                gadget.end_input()
        try:
            if aborted or self.channel.dead:
                self._finish()
                self._join_gadgets(report=False)
            else:
                self._join_gadgets(report=True)
                self._finish()
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
        s, c = self.summary, self.channel
        dropped = "".join(f", {n} {kind}s dropped" for kind, n in c.dropped.items())
        logger.info(
            "client %s: configuration %s, %d acquisitions, %d waveforms in; %d images, %d errors out%s; %s; %.2f s",
            self.label, s.config, s.acquisitions, s.waveforms, c.images, c.errors, dropped, s.outcome,
            time.monotonic() - start,
        )  # fmt: skip

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
                gadget.branch.step, header, header_xml, gadget.inbox, self.channel, input_timeout
            )
            name = f"mrd-gadget-{gadget.branch.key or gadget.branch.step.target}"
            gadget.thread = threading.Thread(
                target=_run_gadget, args=(gadget, connection, self.channel), name=name, daemon=True
            )
            self.gadgets.append(gadget)
            gadget.thread.start()

    def _pump(self, protocol: Protocol) -> None:
        """Read acquisitions and waveforms until CLOSE and hand them to the gadgets."""
        single = len(self.gadgets) == 1
        waveforms_to_gadget = single and "WaveformReader" in protocol.readers
        if not waveforms_to_gadget:
            why = "AcquisitionFanout passes acquisitions only" if not single else "the protocol has no WaveformReader"
            logger.debug("client %s: waveforms will be dropped (%s)", self.label, why)
        while True:
            self.inbound.what = f"message {self.summary.acquisitions + self.summary.waveforms + 1} (or CLOSE)"
            mid = self.inbound.u16()
            if mid == MSG_CLOSE:
                self.input_complete = True
                return
            if mid == MSG_ACQUISITION:
                self.inbound.what = f"acquisition {self.summary.acquisitions}"
                item, raw = self.inbound.message(ismrmrd.Acquisition)
                self.summary.acquisitions += 1
                self._fan_out(item, raw, ismrmrd.Acquisition, self.gadgets)
            elif mid == MSG_WAVEFORM:
                self.inbound.what = f"waveform {self.summary.waveforms}"
                item, raw = self.inbound.message(ismrmrd.Waveform)
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
    """A gadget thread: call the target; a target that raises is reported as ERROR."""
    name = gadget.branch.step.name
    try:
        gadget.target(connection)
    except BaseException as exc:  # a foreign target may raise anything; report it, never vanish
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


class MrdServer:
    """The MRD server. ``bind()`` then ``serve_forever()``, or use :func:`serve`.

    ``port=0`` picks a free port (see :attr:`port` after ``bind``). ``max_connections`` stops accepting
    after that many connections and returns once they are done (None: until stopped). Connections run
    concurrently, one thread each, at most ``max_concurrent`` at once.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        protocols_dir: str | Path = DEFAULT_PROTOCOLS_DIR,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_connections: int | None = None,
    ) -> None:
        if idle_timeout <= 0 or handler_timeout <= 0:
            raise ValueError("idle_timeout and handler_timeout must be positive")
        self.host = host
        self.requested_port = port
        self.protocols_dir = Path(protocols_dir)
        self.idle_timeout = float(idle_timeout)
        self.handler_timeout = float(handler_timeout)
        self.max_connections = max_connections
        self._slots = threading.Semaphore(max(1, int(max_concurrent)))
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[threading.Thread, socket.socket] = {}
        self.connections = 0

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
                    "MRD server listening on %s, not loopback: any client that reaches it can run any Python "
                    "module named in a configuration text",
                    self.host,
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
        logger.info("MRD server listening on %s:%d (protocols: %s)", host, port, self.protocols_dir)
        if isinstance(ready, ServerReady):
            ready.address = (host, port)
        if ready is not None:
            ready.set()

        def stopping() -> bool:
            return self._stop.is_set() or (stop is not None and stop.is_set())

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
                self._start_connection(sock, peer)
            self._wait_for_connections(stopping)
        except KeyboardInterrupt:
            logger.info("interrupted: stopping the MRD server")
            self._abort_connections()
            raise
        finally:
            self.close()

    def _start_connection(self, sock: socket.socket, peer: Any) -> None:
        self.connections += 1
        label = f"{peer[0]}:{peer[1]}#{self.connections}"
        sock.setblocking(True)
        thread = threading.Thread(
            target=self._serve_client, args=(sock, label), name=f"mrd-client-{label}", daemon=True
        )
        with self._lock:
            self._active[thread] = sock
        logger.info("client %s connected", label)
        thread.start()

    def _serve_client(self, sock: socket.socket, label: str) -> None:
        try:
            _Session(self, sock, label).run()
        except Exception:  # never let one connection take the server down
            logger.exception("client %s: connection handler crashed", label)
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            with self._lock:
                self._active.pop(threading.current_thread(), None)
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
    handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    max_connections: int | None = None,
) -> None:
    """Run the MRD server until ``stop`` is set (or ``max_connections`` were served); blocks.

    Pass a :class:`ServerReady` as ``ready`` to learn the bound port (useful with ``port=0``).
    """
    server = MrdServer(
        host,
        port,
        protocols_dir,
        idle_timeout=idle_timeout,
        handler_timeout=handler_timeout,
        max_concurrent=max_concurrent,
        max_connections=max_connections,
    )
    server.serve_forever(ready=ready, stop=stop)
