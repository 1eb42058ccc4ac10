"""Faults: a gadget whose peer vanishes exits instead of spinning (issue: orphaned gadget processes)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import ismrmrd
from raw_helpers import tiny_2d

from recon_plugin import sample_raw as sr
from recon_plugin.replay.external import MSG_CONFIG, MSG_HEADER, child_environment, encode_message
from recon_plugin.replay.protocol import EMPTY_CONFIG_XML

_ID, _U32 = struct.Struct("<H"), struct.Struct("<I")


def test_gadget_exits_when_its_peer_vanishes_mid_stream() -> None:
    """The gadgetron package's reader spins on end of file; our gadget wrapper turns it into an exit."""
    scan = sr.build_raw(tiny_2d())
    data = [a for a in scan.acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    header = scan.header.toXML().encode() if isinstance(scan.header.toXML(), str) else scan.header.toXML()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        port = listener.getsockname()[1]
        command = [sys.executable, "-m", "gadgetron", str(port), "recon_plugin.gadgets", "zero_filled"]
        process = subprocess.Popen(
            command, env=child_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(_ID.pack(MSG_CONFIG) + _U32.pack(len(EMPTY_CONFIG_XML)) + EMPTY_CONFIG_XML)
                conn.sendall(_ID.pack(MSG_HEADER) + _U32.pack(len(header)) + header)
                for acq in data[:3]:
                    conn.sendall(encode_message(acq))
                conn.sendall(encode_message(data[3])[:100])  # cut in the middle of a message
            start = time.monotonic()
            process.wait(timeout=30)  # before the fix: spins at 100 % CPU forever
            assert time.monotonic() - start < 30
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
