"""MRD server (``recon_plugin.mrd_server``) and client: identical images to the Gadgetron path (replay),
configuration by name and by text, parallel protocols, and bad input that must never stop the server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import ismrmrd
import numpy as np
import pytest

from recon_plugin.errors import UnknownConfigurationError
from recon_plugin.mrd_client import (
    ClientResult,
    config_name_message,
    config_text_message,
    header_message,
    receive_replies,
    stream,
    stream_file,
)
from recon_plugin.mrd_server import (
    MrdServer,
    close_message,
    error_message,
    resolve_configuration,
    text_message,
)
from recon_plugin.replay import ExternalStep, read_images, read_raw, replay_file, run_external
from recon_plugin.replay.external import encode_message
from recon_plugin.timings import is_stage_meta

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
RAW = ROOT / "sample_data" / "raw" / "brain2d_multislice.h5"
PROTOCOLS = ROOT / "protocols"
TIMEOUT = 60.0
VOLATILE_META = {"ReconSeconds"}  # wall time: differs between any two runs

READERS = (
    "<readers><reader><dll>gadgetron_core_readers</dll><classname>AcquisitionReader</classname></reader></readers>"
)
WRITERS = "<writers><writer><dll>gadgetron_core_writers</dll><classname>ImageWriter</classname></writer></writers>"


def external(module: str, target: str, **props: str) -> str:
    body = "".join(f'<property name="{k}" value={quoteattr(v)}/>' for k, v in props.items())
    return (
        f'<external><execute name="{module}" target="{target}" type="python"/>'
        f"<configuration>{body}</configuration></external>"
    )


def parallel(**streams: str) -> str:
    inner = "".join(f'<stream key="{key}">{body}</stream>' for key, body in streams.items())
    return (
        "<parallel><branch><dll>gadgetron_core_parallel</dll><classname>AcquisitionFanout</classname></branch>"
        f"{inner}<merge><dll>gadgetron_core_parallel</dll><classname>UnorderedMerge</classname></merge></parallel>"
    )


def protocol_text(stream_xml: str) -> str:
    return f"<configuration><version>2</version>{READERS}{WRITERS}<stream>{stream_xml}</stream></configuration>"


@pytest.fixture(scope="module")
def raw():
    return read_raw(RAW)


def send_file(server, **kwargs) -> ClientResult:
    host, port = server
    return stream_file(RAW, host, port, timeout=TIMEOUT, **kwargs)


def raw_exchange(server, payload: bytes, *, read: bool = True) -> ClientResult:
    """Send raw bytes; then read the replies until CLOSE (or just close the socket when ``read`` is False)."""
    result = ClientResult()
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(payload)
        if read:
            receive_replies(sock, result)
    return result


def gadget_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mrd-gadget-")]


def wait_until(condition, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def assert_same_images(got: list[ismrmrd.Image], expected: list[ismrmrd.Image]) -> None:
    """Same headers (but the attribute length), same meta (but wall times), bit-identical pixels."""
    assert len(got) == len(expected)
    key = lambda im: (im.image_series_index, im.image_index)  # noqa: E731
    for a, b in zip(sorted(got, key=key), sorted(expected, key=key), strict=True):
        head_a, head_b = a.getHead(), b.getHead()
        head_a.attribute_string_len = head_b.attribute_string_len = 0
        assert bytes(head_a) == bytes(head_b)
        meta_a = {k: v for k, v in dict(a.meta).items() if k not in VOLATILE_META and not is_stage_meta(k)}
        meta_b = {k: v for k, v in dict(b.meta).items() if k not in VOLATILE_META and not is_stage_meta(k)}
        assert meta_a == meta_b
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
        assert float(np.max(np.abs(a.data - b.data))) == 0.0


# ------------------------------------------------------------------------------------------ same images


@pytest.mark.slow
@pytest.mark.parametrize(("name", "series"), [("zero_filled_retro5x", 1), ("rgancs_retro5x.xml", 2)])
def test_identical_images_to_gadgetron_path(server, tmp_path, name, series):
    result = send_file(server, config_name=name, output_h5=tmp_path / "server.h5")
    assert result.ok, (result.errors, result.problem)
    protocol = PROTOCOLS / (name if name.endswith(".xml") else f"{name}.xml")
    replay_file(RAW, protocol, tmp_path / "replay.h5", progress=False, timeout=TIMEOUT)
    expected = read_images(tmp_path / "replay.h5")
    got = result.by_series()
    assert sorted(got) == sorted(expected) == [series]
    assert len(got[series]) == 4
    assert_same_images(got[series], expected[series])
    assert_same_images(read_images(tmp_path / "server.h5")[series], expected[series])  # the client's file


def test_torch_threads_match_gadget_process(server, raw):
    """The in-process gadget thread sees the torch thread count a `python -m gadgetron` gadget sees."""
    step = ExternalStep("server_gadgets", "Summary", b"<configuration />\n")
    run = run_external(step, raw.header_xml, raw.acquisitions[:4], timeout=TIMEOUT, extra_pythonpath=[TESTS])
    assert run.ok, run.failure
    body = external("server_gadgets", "Summary", label="x")
    result = send_file(server, config_xml=protocol_text(body))
    assert result.ok, (result.errors, result.problem)
    (image,) = result.images
    assert image.meta["torch_threads"] == run.images[0].meta["torch_threads"]


# ------------------------------------------------------------------------------------------ configurations


def test_config_by_text(server, raw):
    """The text of protocols/zero_filled.xml, on the first slice only (ESPIRiT on fully sampled data is slow)."""
    first_slice = [a for a in raw.acquisitions if a.idx.slice == 0]
    assert 0 < len(first_slice) < len(raw.acquisitions)
    host, port = server
    xml = (PROTOCOLS / "zero_filled.xml").read_bytes()
    result = stream(raw.header_xml, first_slice, host, port, config_xml=xml, timeout=TIMEOUT)
    assert result.ok, (result.errors, result.problem)
    (image,) = result.images
    assert image.image_series_index == 1 and image.meta["Method"] == "zero_filled"


def test_parallel_protocol_returns_every_series(server):
    result = send_file(server, config_name="compare_retro5x")
    assert result.ok, (result.errors, result.problem)
    series = result.by_series()
    assert sorted(series) == [1, 2, 9]
    assert all(len(images) == 4 for images in series.values())


def test_class_target_and_connection_adapter(server, raw):
    body = external("server_gadgets", "Summary", label="hello")
    result = send_file(server, config_xml=protocol_text(body).encode() + b"\0")  # C clients send a trailing NUL
    assert result.ok, (result.errors, result.problem)
    (image,) = result.images  # the acquisition it sent back is dropped: ImageWriter only
    matrix = ismrmrd.xsd.CreateFromDocument(raw.header_xml).encoding[0].encodedSpace.matrixSize
    assert image.image_series_index == 7
    assert image.meta["acquisitions"] == str(len(raw.acquisitions))
    assert image.meta["label"] == "hello" and image.meta["matrix"] == f"{matrix.x}x{matrix.y}"


def test_resolve_configuration(tmp_path):
    (tmp_path / "a.xml").write_text("<configuration/>")
    assert resolve_configuration("a", tmp_path) == tmp_path.resolve() / "a.xml"
    assert resolve_configuration("a.xml", tmp_path) == tmp_path.resolve() / "a.xml"
    for bad in ("", "../a", "..", "sub/a", "/etc/passwd", "b"):
        with pytest.raises(UnknownConfigurationError):
            resolve_configuration(bad, tmp_path)


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_configuration_then_next_connection_works(server):
    result = send_file(server, config_name="no_such_protocol")
    assert result.closed and not result.images
    assert len(result.errors) == 1 and result.errors[0].startswith("UnknownConfigurationError")
    assert "zero_filled.xml" in result.errors[0]  # lists what the server has
    again = send_file(server, config_name="zero_filled_retro5x")
    assert again.ok and len(again.images) == 4


@pytest.mark.parametrize("name", ["../protocols/zero_filled", "../../etc/passwd", "/etc/hosts", "..\\x"])
def test_path_escape_refused(server, name):
    result = send_file(server, config_name=name)
    assert result.closed and not result.images
    assert result.errors and result.errors[0].startswith("UnknownConfigurationError") and "refused" in result.errors[0]


@pytest.mark.parametrize(
    ("config", "header", "error"),
    [
        (config_name_message("zero_filled"), b"this is not XML", "IsmrmrdFormatError"),
        (config_name_message("zero_filled"), b"<?xml version='1.0'?><notIsmrmrd/>\0", "IsmrmrdFormatError"),
        (config_text_message("<html>not a protocol</html>"), b"", "ProtocolError"),
        (
            config_text_message(protocol_text(external("a", "b") + external("c", "d"))),
            b"",
            "ProtocolError",
        ),  # two sequential steps
        (config_text_message(protocol_text(external("no_such_module_x", "t"))), b"", "ProtocolError"),
        (header_message(b"<ismrmrdHeader/>"), b"", "ProtocolError"),  # header before configuration
    ],
)
def test_bad_configuration_or_header(server, config, header, error):
    payload = config + (header_message(header) if header else b"")
    result = raw_exchange(server, payload)
    assert result.closed and not result.images, result.problem
    assert len(result.errors) == 1 and result.errors[0].startswith(error), result.errors


def test_unexpected_message_id(server, raw):
    payload = config_name_message("zero_filled") + header_message(raw.header_xml)
    payload += encode_message(raw.acquisitions[0]) + b"\xe7\x03"  # id 999
    result = raw_exchange(server, payload)
    assert result.closed and not result.images
    assert result.errors and result.errors[0].startswith("ProtocolError") and "999" in result.errors[0]


@pytest.mark.parametrize("half", [True, False])
def test_client_disconnect_mid_stream(server, raw, caplog, half):
    """Half the acquisitions then a closed socket, or everything then gone while the gadget still works
    (its images go to a dead socket): the gadget threads end, and the next connection is served within seconds."""
    if half:
        config, acquisitions = (
            config_name_message("zero_filled_retro5x"),
            raw.acquisitions[: len(raw.acquisitions) // 2],
        )
    else:
        config, acquisitions = (
            config_text_message(protocol_text(external("server_gadgets", "slow_images"))),
            raw.acquisitions,
        )
    payload = config + header_message(raw.header_xml) + b"".join(encode_message(a) for a in acquisitions)
    if not half:
        payload += b"\x04\x00"  # CLOSE, then leave without reading
    raw_exchange(server, payload, read=False)
    start = time.monotonic()
    result = send_file(server, config_name="zero_filled_retro5x")
    assert result.ok and len(result.images) == 4
    assert time.monotonic() - start < 15.0
    assert wait_until(lambda: not gadget_threads(), 20.0), gadget_threads()
    if half:
        assert "ClientDisconnectedError" in caplog.text
    else:
        assert wait_until(lambda: "cannot write" in caplog.text, 5.0)


def test_gadget_that_raises_in_a_parallel_branch(server):
    """The exam fails as a whole (as in replay): the other branch is stopped before it sends anything."""
    body = parallel(
        zf=external("recon_plugin.gadgets", "zero_filled", retro_acceleration="5"),
        bad=external("server_gadgets", "boom"),
    )
    result = send_file(server, config_xml=protocol_text(body))
    assert result.closed
    assert result.images == []
    assert len(result.errors) == 1
    assert result.errors[0].startswith("GadgetFailedError") and "server_gadgets.boom" in result.errors[0]
    assert "RuntimeError: boom: simulated gadget crash" in result.errors[0]


def test_idle_client_times_out():
    """A client that connects and says nothing gets StreamTimeoutError + CLOSE; max_connections ends serving."""
    server = MrdServer(port=0, idle_timeout=0.5, max_connections=1)
    address = server.bind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    start = time.monotonic()
    result = ClientResult()
    with socket.create_connection(address, timeout=10) as sock:
        receive_replies(sock, result)
    assert time.monotonic() - start < 5.0
    assert result.closed and result.errors and result.errors[0].startswith("StreamTimeoutError")
    thread.join(10)
    assert not thread.is_alive()


def test_stream_needs_one_configuration():
    with pytest.raises(ValueError):
        stream(b"", [], "127.0.0.1", 1)
    with pytest.raises(ValueError):
        stream(b"", [], "127.0.0.1", 1, config_name="a", config_xml="b")


def test_client_reads_text_error_and_close():
    """TEXT (5, uint32 length) and ERROR (8, uint64 length) are told apart; CLOSE ends the reading."""
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.sendall(text_message("hello") + error_message("ProtocolError: bad") + close_message() + b"junk")
        result = ClientResult()
        receive_replies(b, result)
    assert result.texts == ["hello"] and result.errors == ["ProtocolError: bad"] and result.closed
    assert result.problem is None and not result.ok  # no images
