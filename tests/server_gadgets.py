"""Gadget targets for the MRD server's tests (imported in-process by the server; ``tests/`` is on sys.path).

Each target takes a connection (the server's ``ServerConnection`` or a ``gadgetron.external.Connection``).
"""

from __future__ import annotations

import time

import ismrmrd
import numpy as np
import torch


def boom(connection) -> None:
    """Read three acquisitions, then raise without reporting (a foreign target that misbehaves)."""
    for index, _ in enumerate(connection):
        if index == 2:
            raise RuntimeError("boom: simulated gadget crash")


def slow_images(connection) -> None:
    """Consume the input, "reconstruct" for a second, then send 50 small images (series 5)."""
    for _ in connection:
        pass
    time.sleep(1.0)
    for index in range(50):
        connection.send(
            ismrmrd.Image.from_array(np.ones((64, 64), dtype=np.float32), image_index=index, image_series_index=5)
        )


class Summary:
    """A class target (``handle``): after the input ends, one image whose meta tells what the gadget saw."""

    def handle(self, connection) -> None:
        from recon_plugin.pipeline import apply_threads

        apply_threads(0)  # as every product gadget does before its model runs
        count = sum(1 for item in connection if isinstance(item, ismrmrd.Acquisition))
        props = {p.get("name"): p.get("value") for p in connection.config.iter("property")}
        matrix = connection.header.encoding[0].encodedSpace.matrixSize
        image = ismrmrd.Image.from_array(np.zeros((2, 2), dtype=np.float32), image_series_index=7)
        image.meta = {
            "acquisitions": str(count),
            "label": props.get("label", ""),
            "matrix": f"{matrix.x}x{matrix.y}",
            "config_bytes": str(len(connection.raw_bytes.config)),
            "torch_threads": str(torch.get_num_threads()),
        }
        connection.send(image)
        connection.send(ismrmrd.Acquisition())  # not an image: the server drops it


#: What ``sleepy`` did, in order ("read N", "reconstructing", "sent", "stopped: ..."), for the tests to inspect.
EVENTS: list[str] = []


def sleepy(connection) -> None:
    """Read slowly (property ``per_item`` seconds per item), then "reconstruct" for ``after`` seconds and send
    one image (series 6). Records what it did in :data:`EVENTS`; a PeerGoneError is recorded and re-raised."""
    props = {p.get("name"): p.get("value") for p in connection.config.iter("property")}
    per_item, after = float(props.get("per_item", "0")), float(props.get("after", "0"))
    count = 0
    try:
        for _ in connection:
            count += 1
            time.sleep(per_item)
        EVENTS.append(f"read {count}")
        EVENTS.append("reconstructing")
        time.sleep(after)
        connection.send(ismrmrd.Image.from_array(np.zeros((2, 2), dtype=np.float32), image_series_index=6))
        EVENTS.append("sent")
    except ConnectionError as exc:
        EVENTS.append(f"stopped after {count}: {type(exc).__name__}")
        raise
