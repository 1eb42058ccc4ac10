"""Buffers are bounded by what the machine can give: a header whose slice buffers would not fit is refused by
name (MemoryLimitError) before anything is allocated or any gadget starts (before: MemoryError later)."""

from __future__ import annotations

import ismrmrd
import ismrmrd.xsd
import numpy as np
import pytest
from test_mrd_server import RAW, external, protocol_text
from test_server_limits import running
from typer.testing import CliRunner

from recon_plugin import memory
from recon_plugin.cli import app
from recon_plugin.errors import MemoryLimitError
from recon_plugin.kspace import Assembler, check_header_memory
from recon_plugin.mrd_client import stream
from recon_plugin.replay import read_raw, replay_file
from recon_plugin.replay.protocol import load_protocol

GiB = 2**30
runner = CliRunner()


def huge_header(channels: int = 32) -> bytes:
    """The sample exam's header with an 8192 x 4096 encoded matrix and ``channels`` receivers (8 GiB per slice)."""
    header = ismrmrd.xsd.CreateFromDocument(read_raw(RAW).header_xml)
    enc = header.encoding[0]
    enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y = 8192, 4096
    enc.reconSpace.matrixSize.x, enc.reconSpace.matrixSize.y = 4096, 4096
    enc.encodingLimits.kspace_encoding_step_1.maximum = 4095
    enc.encodingLimits.kspace_encoding_step_1.center = 2048
    header.acquisitionSystemInformation.receiverChannels = channels
    return header.toXML().encode() if isinstance(header.toXML(), str) else header.toXML()


def one_line(channels: int = 32) -> ismrmrd.Acquisition:
    acq = ismrmrd.Acquisition.from_array(np.zeros((channels, 8192), np.complex64))
    acq.idx.kspace_encode_step_1 = 2048
    acq.center_sample = 4096
    return acq


@pytest.fixture
def machine_with(monkeypatch):
    """Pretend the machine has ``GiB`` available (the limit is a quarter of it)."""

    def pretend(gib: float) -> None:
        monkeypatch.setattr(memory, "available_bytes", lambda: int(gib * GiB))

    return pretend


def test_limit_is_a_quarter_of_the_available_memory_or_the_operators_cap(machine_with, monkeypatch):
    machine_with(20)
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "")  # restored (unset) at the end: a CLI run may set it
    limit, why = memory.buffer_limit()
    assert limit == 5 * GiB and "25% of the 20 GiB this machine has available" in why
    machine_with(1000)
    assert memory.buffer_limit()[0] == memory.MAX_BUFFER_BYTES
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "2G")
    limit, why = memory.buffer_limit()
    assert limit == 2 * GiB and "operator's cap" in why
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "lots")
    with pytest.raises(ValueError, match="RECON_MAX_BUFFER='lots'"):
        memory.buffer_limit()


def test_available_memory_is_real():
    assert 0 < memory.available_bytes() <= memory.psutil.virtual_memory().total


def test_the_8192x4096x32_header_is_refused_before_allocating(machine_with, monkeypatch):
    """8 GiB per slice on a machine with 24 GiB available (limit 6 GiB): MemoryLimitError at the first line."""
    machine_with(24)
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "")
    assembler = Assembler(huge_header())
    with pytest.raises(MemoryLimitError, match=r"need 8 GiB, over the 6 GiB .*nothing was allocated"):
        assembler.add(one_line())
    check_header_memory(huge_header(8), consumers=1)  # 2 GiB for one gadget fits
    with pytest.raises(MemoryLimitError, match="for each of 4 gadgets"):
        check_header_memory(huge_header(8), consumers=4)  # 2 GiB for each of 4 side-by-side gadgets does not
    machine_with(1000)
    check_header_memory(huge_header(), consumers=1)  # fits on a big machine (16 GiB cap)


def test_server_refuses_the_header_before_any_gadget_starts(machine_with, monkeypatch):
    machine_with(24)
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "")
    config = protocol_text(external("recon_plugin.gadgets", "zero_filled"))
    with running() as address:
        result = stream(huge_header(), [one_line()], *address, config_xml=config, timeout=30)
    assert result.closed and not result.images
    assert len(result.errors) == 1 and result.errors[0].startswith("MemoryLimitError"), result.errors


def test_replay_refuses_the_header_before_any_gadget_starts(tmp_path, machine_with, monkeypatch):
    machine_with(24)
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "")
    raw = tmp_path / "huge.h5"
    with ismrmrd.Dataset(raw, "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(huge_header())
        dataset.append_acquisition(one_line())
    protocol = load_protocol(protocol_text(external("recon_plugin.gadgets", "zero_filled")).encode())
    with pytest.raises(MemoryLimitError):
        replay_file(raw, protocol, tmp_path / "out.h5", progress=False)
    assert not (tmp_path / "out.h5").exists()


def test_max_buffer_option_caps_replay(tmp_path, monkeypatch):
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "")  # the CLI sets it in this process; restored (unset) at the end
    args = ["replay", str(RAW), "--protocol", "zero_filled_retro5x", "--out", str(tmp_path / "o.h5"), "--max-buffer"]
    res = runner.invoke(app, [*args, "64K"])
    assert res.exit_code == 2 and "MemoryLimitError" in res.output and "operator's cap" in res.output, res.output
    assert not (tmp_path / "o.h5").exists()
    monkeypatch.setenv(memory.MAX_BUFFER_ENV, "lots")
    res = runner.invoke(app, args[:-1])
    assert res.exit_code == 2 and "RECON_MAX_BUFFER='lots'" in res.output


def test_sizes_read_and_print_in_binary_units():
    assert memory.parse_size("8G") == 8 * GiB and memory.parse_size("1.5K") == 1536
    assert [memory.format_size(n) for n in (100, 65536, 1.5 * 2**20, 8 * GiB, 300 * GiB)] == [
        "100 B",
        "64 KiB",
        "1.5 MiB",
        "8 GiB",
        "300 GiB",
    ]
