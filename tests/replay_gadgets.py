"""Tiny external gadgets for the replay engine's tests (``python -m gadgetron PORT replay_gadgets TARGET``).

Importable with ``tests/`` on PYTHONPATH. Each target takes a ``gadgetron.external.Connection``.
"""

from __future__ import annotations

import logging
import struct
import time

import ismrmrd
import numpy as np

from recon_plugin.images import SNR_META, SSIM_META

_ERROR = 8


def _property(connection, name: str, default: str) -> str:
    config = connection.config
    if config is None:
        return default
    for prop in config.iter("property"):
        if prop.get("name") == name:
            return prop.get("value", default)
    return default


def _image(acquisition: ismrmrd.Acquisition, index: int, series: int) -> ismrmrd.Image:
    """A [channels, samples] complex image made from the acquisition's data."""
    image = ismrmrd.Image.from_array(
        acquisition.data.copy(),
        acquisition=acquisition,
        image_index=index,
        image_series_index=series,
        image_type=ismrmrd.IMTYPE_COMPLEX,
    )
    image.meta = {SNR_META: str(20.0 + index), SSIM_META: "0.5", "source": "echo"}
    return image


def send_error(connection, text: str) -> None:
    """Send a Gadgetron ERROR message (id 8, uint64 length, text)."""
    payload = text.encode("utf-8")
    connection.socket.write(struct.pack("<HQ", _ERROR, len(payload)) + payload)


def echo_images(connection) -> None:
    """One image per acquisition; ``series`` sets image_series_index, ``delay`` (s) waits before closing."""
    series = int(_property(connection, "series", "0"))
    delay = float(_property(connection, "delay", "0"))
    index = 0
    for item in connection:
        if isinstance(item, ismrmrd.Acquisition):
            connection.send(_image(item, index, series))
            index += 1
    time.sleep(delay)
    logging.info("echo_images sent %d images", index)


def crash_midway(connection) -> None:
    """Send two images, fail, report the failure with ERROR, drain the input, then close."""
    series = int(_property(connection, "series", "0"))
    try:
        for index, item in enumerate(connection):
            if index == 2:
                raise RuntimeError("simulated reconstruction failure at acquisition 2")
            connection.send(_image(item, index, series))
    except RuntimeError as exc:
        logging.exception("crash_midway failed")
        send_error(connection, f"crash_midway: {exc}")
        for _ in connection:  # drain, so Gadgetron's side is never left blocked
            pass


def silent_crash(connection) -> None:
    """Send one image, then raise without sending ERROR (the gadgetron package still sends CLOSE)."""
    for index, item in enumerate(connection):
        connection.send(_image(item, index, 0))
        raise RuntimeError("silent crash after the first image")


def hang(connection) -> None:
    """Never answer, never close."""
    time.sleep(3600)


def bad_message(connection) -> None:
    """Write a message id Gadgetron refuses."""
    connection.socket.write(struct.pack("<H", 999))
    for _ in connection:
        pass


def to_next_step(connection) -> None:
    """Pass acquisitions on with their data doubled (a first step in a chain)."""
    for item in connection:
        if isinstance(item, ismrmrd.Acquisition):
            item.data[:] = item.data * 2
        connection.send(item)


def config_echo(connection) -> None:
    """Send one image whose meta holds the raw CONFIG bytes and the header's matrix size."""
    for _ in connection:
        pass
    matrix = connection.header.encoding[0].encodedSpace.matrixSize
    image = ismrmrd.Image.from_array(np.zeros((2, 2), dtype=np.float32), image_series_index=7)
    image.meta = {"config": connection.raw_bytes.config.decode("utf-8"), "matrix": f"{matrix.x}x{matrix.y}"}
    connection.send(image)


def refuse(connection) -> None:
    """Report an ERROR at once, as a gadget with a bad configuration does, then read the input to its end."""
    send_error(connection, "refuse: ProtocolError: bad configuration")
    for _ in connection:
        pass


def warn_then_echo(connection) -> None:
    """Log a WARNING (the replay must show it although the run succeeds), then echo images."""
    logging.getLogger("replay_gadgets").warning("calibration region is small")
    echo_images(connection)
