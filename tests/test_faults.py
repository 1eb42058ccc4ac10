"""Faults: no orphaned gadget process — a gadget whose peer vanishes exits, replay stops its gadgets on signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from raw_helpers import tiny_2d

from recon_plugin import sample_raw as sr
from recon_plugin.replay.external import MSG_CONFIG, MSG_HEADER, child_environment, encode_message
from recon_plugin.replay.protocol import EMPTY_CONFIG_XML

_ID, _U32 = struct.Struct("<H"), struct.Struct("<I")
TESTS = Path(__file__).resolve().parent


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


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_replay_stops_its_gadgets_on_sigterm_and_sighup(tmp_path: Path, signame: str) -> None:
    """SIGTERM/SIGHUP to `recon-plugin replay` stop its gadget processes (Python's default would orphan them)."""
    from test_replay_engine import external, header_xml, make_acquisitions, write_protocol

    raw = tmp_path / "raw.h5"
    with ismrmrd.Dataset(raw, "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(header_xml())
        for acq in make_acquisitions(np.random.default_rng(0)):
            dataset.append_acquisition(acq)
    protocol = write_protocol(tmp_path, external("hang"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = "from recon_plugin.cli import main; main()"
    args = ["replay", str(raw), "--protocol", str(protocol), "--out", str(tmp_path / "out.h5"), "--no-progress"]
    replay = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE)
    try:
        gadget = _wait_for_child(replay.pid, "replay_gadgets hang", limit=60)
        time.sleep(1.0)
        replay.send_signal(getattr(signal, signame))
        status = replay.wait(timeout=30)
        assert status == 128 + getattr(signal, signame)
        deadline = time.monotonic() + 10
        while _alive(gadget) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(gadget), f"gadget {gadget} outlived replay"
        assert not (tmp_path / "out.h5").exists()
    finally:
        for pid in [replay.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        replay.wait()


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append((int(entry.name), cmd))
    return out


def _wait_for_child(pid: int, needle: str, limit: float) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for child, cmd in _children(pid):
            if needle in cmd:
                return child
        time.sleep(0.2)
    raise AssertionError(f"no child process matching {needle!r} within {limit} s")


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_locked_input_file_is_named_as_locked(tmp_path: Path) -> None:
    """A raw file another process still has open for writing is 'locked', not 'truncated or corrupt'."""
    from recon_plugin.errors import FileLockedError
    from recon_plugin.replay import read_raw

    path = tmp_path / "raw.h5"
    code = (
        "import h5py, sys, time\n"
        f"f = h5py.File({str(path)!r}, 'w'); f.create_group('dataset'); f.flush()\n"
        "print('open', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
        with pytest.raises(FileLockedError, match="locked by another process"):
            read_raw(path)
    finally:
        writer.kill()
        writer.wait()


def test_ctrl_c_during_start_up_is_one_line_and_exit_130() -> None:
    """SIGINT while a command imports torch: ``interrupted``, exit 130 (before: a 40-line KeyboardInterrupt)."""
    code = (
        "import os, signal, sys, threading\n"
        "from recon_plugin.cli import main\n"
        "sys.argv = ['recon-plugin', 'bench', '--quick', '--no-bart', '--no-cold']\n"
        "threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n"


def test_ctrl_c_during_replay_stops_the_gadgets_with_one_line(tmp_path: Path) -> None:
    """SIGINT to `recon-plugin replay` while its gadget runs: ``interrupted``, exit 130, no gadget left, no OUT,
    and none of the follow-on "gadget ... failed" lines."""
    from test_replay_engine import external, header_xml, make_acquisitions, write_protocol

    raw = tmp_path / "raw.h5"
    with ismrmrd.Dataset(raw, "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(header_xml())
        for acq in make_acquisitions(np.random.default_rng(0)):
            dataset.append_acquisition(acq)
    protocol = write_protocol(tmp_path, external("hang"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = "from recon_plugin.cli import main; main()"
    args = ["replay", str(raw), "--protocol", str(protocol), "--out", str(tmp_path / "out.h5"), "--no-progress"]
    replay = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        gadget = _wait_for_child(replay.pid, "replay_gadgets hang", limit=60)
        time.sleep(1.0)
        replay.send_signal(signal.SIGINT)
        _, stderr = replay.communicate(timeout=30)
        assert replay.returncode == 130, stderr
        assert stderr == "interrupted\n"
        deadline = time.monotonic() + 10
        while _alive(gadget) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(gadget), f"gadget {gadget} outlived replay"
        assert not (tmp_path / "out.h5").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(replay.pid, signal.SIGKILL)
        replay.wait()
