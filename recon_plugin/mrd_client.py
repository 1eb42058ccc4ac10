"""A small MRD client: stream an ISMRMRD raw file to an MRD server (ours or Gadgetron) and collect the replies.

Sends the configuration (id 1 + char[1024] name, or id 2 + uint32 length + XML text), the header
(id 3 + uint32 length + XML), the acquisitions (1008) and waveforms (1026), then CLOSE (4), while a
reader thread collects images (1022), ERROR (8, uint64 length + text), TEXT (5, uint32 length + text)
until the server's CLOSE. Every socket wait is bounded by ``timeout`` seconds of silence.

Output files take the layout of python-ismrmrd-server's ``client.py`` and ``gadgetron_ismrmrd_client``:
``<group>/xml`` and ``<group>/image_<series>``, one group per run (:func:`write_output`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import ismrmrd

from .errors import StreamTimeoutError
from .mrd_server import (
    CONFIG_NAME_BYTES,
    MSG_ACQUISITION,
    MSG_CLOSE,
    MSG_CONFIG_FILE,
    MSG_CONFIG_TEXT,
    MSG_ERROR,
    MSG_HEADER,
    MSG_IMAGE,
    MSG_TEXT,
    MSG_WAVEFORM,
    close_message,
)
from .replay.dataset import read_raw, write_images
from .replay.external import Message, encode_message

logger = logging.getLogger(__name__)

#: Seconds without progress (nothing received, or a send not accepted) before the client gives up.
DEFAULT_TIMEOUT = 300.0
_MAX_TEXT = 16 * 1024 * 1024
_ID = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass
class ClientResult:
    """What the server sent back: images (arrival order), ERROR texts, TEXT messages.

    ``closed`` is True when the server ended the stream with CLOSE; ``problem`` says why not (or
    what failed on this side), ``timed_out`` whether that was a silent server; ``output`` is the image
    file written, if any, and ``output_group`` its group.
    """

    images: list[ismrmrd.Image] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    closed: bool = False
    problem: str | None = None
    timed_out: bool = False
    sent: int = 0
    seconds: float = 0.0
    output: Path | None = None
    output_group: str | None = None

    @property
    def ok(self) -> bool:
        """The server closed normally, reported no error, and sent images."""
        return self.closed and not self.errors and self.problem is None and bool(self.images)

    def by_series(self) -> dict[int, list[ismrmrd.Image]]:
        """Images grouped by ``image_series_index``, in arrival order."""
        groups: dict[int, list[ismrmrd.Image]] = {}
        for image in self.images:
            groups.setdefault(int(image.image_series_index), []).append(image)
        return groups

    def series_summary(self) -> list[dict[str, Any]]:
        """Per series (ascending): image count, matrix [x, y, z], channels, pixel type and ``Method`` meta if any."""
        rows = []
        for series, images in sorted(self.by_series().items()):
            first = images[0]
            try:
                method = first.meta.get("Method")
            except Exception:  # attributes that are not ISMRMRD meta XML: no method to report
                method = None
            rows.append(
                {
                    "series": series,
                    "images": len(images),
                    "matrix": [int(v) for v in first.matrix_size],
                    "channels": int(first.channels),
                    "dtype": str(first.data.dtype),
                    "method": method,
                }
            )
        return rows


def config_name_message(name: str) -> bytes:
    """Configuration by name: id 1 + char[1024], NUL-padded."""
    raw = name.encode("utf-8")
    if len(raw) >= CONFIG_NAME_BYTES:
        raise ValueError(f"configuration name is longer than {CONFIG_NAME_BYTES - 1} bytes")
    return _ID.pack(MSG_CONFIG_FILE) + raw.ljust(CONFIG_NAME_BYTES, b"\0")


def config_text_message(xml: str | bytes) -> bytes:
    """Configuration by text: id 2 + uint32 length + XML."""
    raw = xml.encode("utf-8") if isinstance(xml, str) else xml
    return _ID.pack(MSG_CONFIG_TEXT) + _U32.pack(len(raw)) + raw


def header_message(header_xml: str | bytes) -> bytes:
    """ISMRMRD header: id 3 + uint32 length + XML."""
    raw = header_xml.encode("utf-8") if isinstance(header_xml, str) else header_xml
    return _ID.pack(MSG_HEADER) + _U32.pack(len(raw)) + raw


class _ServerClosedError(Exception):
    """The server closed the socket in the middle of, or instead of, a message."""


def receive_replies(sock: socket.socket, result: ClientResult, activity: list[float] | None = None) -> None:
    """Collect the server's replies into ``result`` until CLOSE, EOF, an error or the socket's timeout.

    Never raises: what went wrong is in ``result.problem``. ``activity[0]`` is set to the time of the
    last bytes received.
    """
    activity = activity if activity is not None else [0.0]

    def read(nbytes: int) -> bytes:
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        got = 0
        while got < nbytes:
            count = sock.recv_into(view[got:], nbytes - got)
            if count == 0:
                raise _ServerClosedError
            got += count
            activity[0] = time.monotonic()
        return bytes(buffer)

    try:
        while True:
            (mid,) = _ID.unpack(read(_ID.size))
            if mid == MSG_CLOSE:
                result.closed = True
                return
            if mid in (MSG_ERROR, MSG_TEXT):
                size = _U64 if mid == MSG_ERROR else _U32
                (length,) = size.unpack(read(size.size))
                if length > _MAX_TEXT:
                    result.problem = f"the server sent a message (id {mid}) of {length} bytes: corrupt stream"
                    return
                text = read(length).decode("utf-8", errors="replace").strip()
                if mid == MSG_ERROR:
                    logger.warning("server error: %s", text)
                    result.errors.append(text)
                else:
                    logger.info("server: %s", text)
                    result.texts.append(text)
            elif mid == MSG_IMAGE:
                result.images.append(ismrmrd.Image.deserialize_from(read))
            elif mid in (MSG_ACQUISITION, MSG_WAVEFORM):
                kind = ismrmrd.Acquisition if mid == MSG_ACQUISITION else ismrmrd.Waveform
                logger.info("ignoring a %s from the server", kind.__name__)
                kind.deserialize_from(read)
            else:
                result.problem = f"the server sent unsupported message id {mid}"
                return
    except _ServerClosedError:
        result.problem = "the server closed the connection without CLOSE"
    except TimeoutError:
        result.timed_out = True
        result.problem = "the server sent nothing within the timeout"
    except OSError as exc:
        result.problem = f"reading from the server failed: {exc}"
    except Exception as exc:  # a malformed image: whatever the ismrmrd parser raises
        result.problem = f"the server sent a malformed message: {type(exc).__name__}: {exc}"


def stream(
    header_xml: bytes,
    messages: Iterable[Message],
    host: str = "127.0.0.1",
    port: int = 9002,
    *,
    config_name: str | None = None,
    config_xml: str | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ClientResult:
    """Send a configuration, ``header_xml`` and ``messages`` (acquisitions, waveforms), then CLOSE; collect replies.

    Exactly one of ``config_name`` / ``config_xml``. Problems on the server's side are in the result
    (``errors``, ``closed``, ``problem``), never raised.

    Raises:
        ValueError: neither or both configurations given.
        StreamTimeoutError: the server did not accept the connection within ``timeout``.
        OSError: the connection was refused.
    """
    if (config_name is None) == (config_xml is None):
        raise ValueError("give exactly one of config_name and config_xml")
    start = time.monotonic()
    config = config_name_message(config_name) if config_name is not None else config_text_message(config_xml or b"")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise StreamTimeoutError(f"the MRD server {host}:{port} did not accept a connection in {timeout:g} s") from exc
    result = ClientResult()
    activity = [time.monotonic()]
    with sock:
        sock.settimeout(timeout)
        reader = threading.Thread(
            target=receive_replies, args=(sock, result, activity), name="mrd-client-reader", daemon=True
        )
        reader.start()
        try:
            sock.sendall(config + header_message(header_xml))
            for message in messages:
                if not reader.is_alive():  # the server ended the stream (an error): stop sending
                    break
                sock.sendall(encode_message(message))
                activity[0] = time.monotonic()
                result.sent += 1
            else:
                sock.sendall(close_message())
        except OSError as exc:  # the server went away or stopped reading; the reader tells why
            logger.info("sending stopped after %d messages: %s", result.sent, exc)
        while reader.is_alive():
            reader.join(0.5)
            if reader.is_alive() and time.monotonic() - activity[0] > timeout + 5.0:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                reader.join(5.0)
                break
    if result.problem is None and not result.closed:
        result.problem = "the reader did not finish"
    result.seconds = time.monotonic() - start
    logger.info(
        "%d messages sent; %d images, %d errors back in %.2f s%s",
        result.sent,
        len(result.images),
        len(result.errors),
        result.seconds,
        "" if result.problem is None else f" ({result.problem})",
    )
    return result


def stream_file(
    input_h5: str | Path,
    host: str = "127.0.0.1",
    port: int = 9002,
    *,
    config_name: str | None = None,
    config_xml: str | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    output_h5: str | Path | None = None,
    output_group: str | None = None,
    input_group: str = "dataset",
    waveforms: bool = True,
    keep_partial: bool = False,
) -> ClientResult:
    """Stream an ISMRMRD raw file (acquisitions, then waveforms) to an MRD server; see :func:`stream`.

    With ``output_h5`` the images that came back are written there: with ``output_group`` as a new group of
    that file (:func:`write_output`), else as the whole file in group ``dataset`` (``write_images``, replacing
    the file). A failed stream (an ERROR, a timeout, a broken connection) writes nothing, as a failed replay
    writes no file; with ``keep_partial`` the images that did arrive go to group ``<output_group>.partial``
    (``dataset.partial`` without a group), a name that says they are incomplete. ``input_group`` is the raw
    file's group.

    Raises:
        IsmrmrdFormatError: the input file is not ISMRMRD raw data, or a series mixes image shapes.
        FileExistsError: ``output_group`` is already in ``output_h5`` (checked before streaming too).
        OSError: the connection was refused, or the output file could not be written.
    """
    raw = read_raw(input_h5, input_group)
    if output_h5 is not None and output_group is not None:
        check_output_group(output_h5, output_group)
        if keep_partial:
            check_output_group(output_h5, partial_group(output_group))
    messages: list[Message] = [*raw.acquisitions, *(raw.waveforms if waveforms else [])]
    result = stream(
        raw.header_xml, messages, host, port, config_name=config_name, config_xml=config_xml, timeout=timeout
    )
    failed = bool(result.errors) or result.problem is not None
    if output_h5 is not None and result.images and failed:
        if keep_partial:
            group = partial_group(output_group or "dataset")
            result.output = write_output(output_h5, result.by_series(), raw.header_xml, group)
            result.output_group = group
        else:
            logger.info("%d images arrived before the stream failed; not written (keep_partial)", len(result.images))
    elif output_h5 is not None and result.images:
        if output_group is None:
            result.output = write_images(output_h5, result.by_series(), raw.header_xml)
            result.output_group = "dataset"
        else:
            result.output = write_output(output_h5, result.by_series(), raw.header_xml, output_group)
            result.output_group = output_group
    return result


def partial_group(group: str) -> str:
    """Where ``keep_partial`` puts the images of a failed stream: ``<group>.partial``."""
    return f"{group}.partial"


def default_output_group() -> str:
    """The date and time, e.g. ``2025-01-31 14:05:09.123456``: the group name the reference MRD clients default to."""
    return str(datetime.datetime.now())


def check_output_group(path: str | Path, group: str) -> None:
    """Refuse an output group that is empty, or already in ``path``.

    Raises:
        ValueError: ``group`` is empty or starts with ``/``.
        FileExistsError: ``path`` already holds ``group``.
        OSError: ``path`` exists but is not a readable HDF5 file.
    """
    if not group.strip() or group.startswith("/"):
        raise ValueError(f"output group {group!r}: give a non-empty name without a leading '/'")
    path = Path(path)
    if not path.exists():
        return
    try:
        with h5py.File(path, "r") as h5:
            taken = group in h5
    except OSError as exc:
        raise OSError(f"{path} exists but is not a readable HDF5 file ({exc})") from exc
    if taken:
        raise FileExistsError(f"{path} already holds group '{group}': choose another output group or file")


def write_output(
    path: str | Path, images_by_series: Mapping[int, Sequence[ismrmrd.Image]], header_xml: bytes, group: str
) -> Path:
    """Add ``group`` (``<group>/xml`` and ``<group>/image_<series>``) to an ISMRMRD file, creating the file if needed.

    Other groups of an existing file are kept, as the reference MRD clients append each run to their
    output file. The group is written completely in a temporary file first, then copied in.

    Raises:
        FileExistsError: ``path`` already holds ``group``.
        IsmrmrdFormatError: a series mixes image shapes or data types.
    """
    path = Path(path)
    check_output_group(path, group)
    if not path.exists():
        return write_images(path, images_by_series, header_xml, dataset_name=group)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    part = Path(name)
    try:
        write_images(part, images_by_series, header_xml, dataset_name=group)
        with h5py.File(part, "r") as source, h5py.File(path, "a") as target:
            source.copy(source[group], target, name=group)
    finally:
        part.unlink(missing_ok=True)
    return path
