"""Gadgetron external-gadget targets: ``rgancs``, ``zero_filled``, ``cs_wavelet`` and ``cs_tv``.

Gadgetron starts ``python -m gadgetron <port> recon_plugin.gadgets <target>``;
the target reads its settings from the protocol's <property> elements,
collects the acquisitions, and sends ISMRMRD images batch by batch as they are
reconstructed. Thin adapters over
recon_plugin.pipeline. Any failure is reported to Gadgetron as an ERROR
message (id 8) before the connection closes, never as a silent empty result.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from typing import Any

import ismrmrd

from .allocator import keep_freed_memory
from .errors import ReconError
from .pipeline import GadgetSettings, apply_threads, assemble, build_reconstructor, stamp_timings, stream_exam
from .timings import StageTimer

log = logging.getLogger(__name__)

GADGET_MESSAGE_ERROR = 8


def properties(config: Any) -> dict[str, str]:
    """<property name=... value=...> elements of the gadget's <configuration> (an ElementTree or None)."""
    if config is None:
        return {}
    return {p.get("name", ""): p.get("value", "") for p in config.iter("property") if p.get("name")}


def send_error(connection: Any, text: str) -> None:
    """Send Gadgetron's ERROR message: uint16 id 8, uint64 length, UTF-8 text."""
    payload = text.encode("utf-8")
    connection.socket.write(struct.pack("<HQ", GADGET_MESSAGE_ERROR, len(payload)) + payload)


class PeerGoneError(ConnectionError):
    """The other end (Gadgetron, replay, a client) closed the connection in the middle of the stream."""


def guard_end_of_stream(connection: Any) -> None:
    """Make the ``gadgetron`` package's socket reader raise :class:`PeerGoneError` at end of file.

    Its reader loops on ``recv`` until it has the bytes it wants; at end of file ``recv`` returns nothing
    forever, so a gadget whose peer died (replay killed by SIGTERM, Gadgetron crashed) would spin at 100 % CPU
    instead of exiting. Connections without that reader (the MRD server's adapters) are left as they are.
    """
    wrapper = getattr(connection, "socket", None)
    raw = getattr(wrapper, "socket", None)
    if raw is None or not hasattr(raw, "recv") or not hasattr(wrapper, "read"):
        return

    def read(nbytes: int) -> bytes:
        data = b""
        while len(data) < nbytes:
            chunk = raw.recv(nbytes - len(data), socket.MSG_WAITALL)
            if not chunk:
                raise PeerGoneError(f"the peer closed the connection ({len(data)} of {nbytes} bytes read)")
            data += chunk
        return data

    wrapper.read = read


class Inbox:
    """The connection's acquisitions (other messages are not used and are dropped); knows when the input ended."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.finished = False

    def __iter__(self) -> Iterator[ismrmrd.Acquisition]:
        for item in self.connection:
            if isinstance(item, ismrmrd.Acquisition):
                yield item
            else:
                log.debug("dropping %s", type(item).__name__)
        self.finished = True

    def drain(self) -> None:
        """Read and discard the rest of the input, so the sender is never left blocked."""
        if not self.finished:
            for _ in self:
                pass


def run(connection: Any, method: str) -> None:
    """Reconstruct one exam with ``method``, streaming the images; report failures as ERROR messages.

    torch's threads are set first (property ``threads``, :func:`~recon_plugin.pipeline.apply_threads`), and
    glibc keeps freed memory for the next slice (:func:`~recon_plugin.allocator.keep_freed_memory`).
    Each batch of slices (RGANCS: its batch size, 1 on a CPU) is sent as soon as it is reconstructed and
    encoded (:func:`~recon_plugin.pipeline.stream_exam`), so the first images leave long before a long
    exam ends. Every stage is timed (:mod:`recon_plugin.timings`): each image carries, as
    ``Stage...Seconds`` meta, the stages known just before its batch was sent (reconstruction, metrics
    and encode summed up to its batch; ``send`` never), and the whole exam, sending included, is logged
    (INFO). A failure after some batches were sent still ends with an ERROR message.
    """
    guard_end_of_stream(connection)
    inbox = Inbox(connection)
    timer = StageTimer(method)
    try:
        with timer.stage("setup"):
            settings = GadgetSettings.from_properties(method, properties(connection.config))
            threads = apply_threads(settings.threads)
            keep_freed_memory()
            reconstructor = build_reconstructor(settings)
        log.debug("%s: %d torch threads", method, threads)
        problems = assemble(connection.header, inbox, settings, timer)
        sent = 0
        for batch in stream_exam(problems, reconstructor, settings, timer):
            stamp_timings(batch, timer)
            with timer.stage("send"):
                for image in batch:
                    connection.send(image)
            sent += len(batch)
        log.info("%d images; %s", sent, timer.summary())
        return
    except PeerGoneError as exc:  # nobody to report to: stop now (the package's close then fails and exits)
        log.error("%s: %s; stopping", method, exc)
        return
    except ReconError as exc:
        log.error("%s failed: %s", method, exc)
        send_error(connection, f"{method}: {type(exc).__name__}: {exc}")
    except Exception as exc:  # report, never vanish: Gadgetron would otherwise see a normal close
        log.exception("%s crashed", method)
        send_error(connection, f"{method}: internal error {type(exc).__name__}: {exc}")
    try:
        inbox.drain()
    except Exception:  # the peer may already be gone; the error has been sent
        log.debug("input not drained", exc_info=True)


def rgancs(connection: Any) -> None:
    """Gadget target: RGANCS reconstruction."""
    run(connection, "rgancs")


def zero_filled(connection: Any) -> None:
    """Gadget target: zero-filled reconstruction."""
    run(connection, "zero_filled")


def cs_wavelet(connection: Any) -> None:
    """Gadget target: BART compressed sensing with a wavelet l1 penalty."""
    run(connection, "cs_wavelet")


def cs_tv(connection: Any) -> None:
    """Gadget target: BART compressed sensing with a total-variation penalty."""
    run(connection, "cs_tv")
