"""Replay engine: protocol parsing, ISMRMRD files, and real gadget processes over loopback."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import h5py
import ismrmrd
import numpy as np
import pytest
from ismrmrd import xsd
from rich.console import Console

from recon_plugin.errors import GadgetFailedError, IsmrmrdFormatError, ProtocolError, StreamTimeoutError
from recon_plugin.replay import (
    ExternalStep,
    ParallelRun,
    ParallelStep,
    format_summary,
    load_protocol,
    partial_path,
    read_raw,
    replay_file,
    run_external,
    write_images,
)
from recon_plugin.replay.protocol import EMPTY_CONFIG_XML

TESTS = Path(__file__).resolve().parent
EXTRA = [str(TESTS)]  # makes tests/replay_gadgets.py importable in the gadget process
NX, NCOILS, NACQ = 16, 2, 4

READERS = """<readers>
  <reader><dll>gadgetron_core_readers</dll><classname>AcquisitionReader</classname></reader>
  <reader><dll>gadgetron_core_readers</dll><classname>WaveformReader</classname></reader>
</readers>"""
WRITERS = """<writers><writer><dll>gadgetron_core_writers</dll><classname>ImageWriter</classname></writer></writers>"""


def external(target: str, module: str = "replay_gadgets", **props: str) -> str:
    body = "".join(f'<property name="{k}" value={quoteattr(v)}/>' for k, v in props.items())
    execute = f'<execute name="{module}" target="{target}" type="python"/>'
    return f"<external>{execute}<configuration>{body}</configuration></external>"


def parallel(**streams: str) -> str:
    inner = "".join(f'<stream key="{key}">{body}</stream>' for key, body in streams.items())
    return (
        "<parallel><branch><dll>gadgetron_core_parallel</dll><classname>AcquisitionFanout</classname></branch>"
        f"{inner}<merge><dll>gadgetron_core_parallel</dll><classname>UnorderedMerge</classname></merge></parallel>"
    )


def protocol_text(stream: str, readers: str = READERS, writers: str = WRITERS) -> str:
    body = f"<version>2</version>{readers}{writers}<stream>{stream}</stream>"
    return f'<?xml version="1.0"?>\n<configuration>{body}</configuration>'


def write_protocol(tmp_path: Path, stream: str, name: str = "protocol.xml", **kwargs: str) -> Path:
    path = tmp_path / name
    path.write_text(protocol_text(stream, **kwargs))
    return path


def header_xml(nx: int = NX, ny: int = NACQ) -> bytes:
    space = xsd.encodingSpaceType(
        matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=1), fieldOfView_mm=xsd.fieldOfViewMm(x=200.0, y=200.0, z=5.0)
    )
    encoding = xsd.encodingType(
        encodedSpace=space,
        reconSpace=space,
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=ny - 1, center=ny // 2),
            slice=xsd.limitType(minimum=0, maximum=0, center=0),
        ),
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_500_000),
        encoding=[encoding],
    )
    return header.toXML("utf-8").encode("utf-8")


def make_acquisitions(rng: np.random.Generator, count: int = NACQ, nx: int = NX) -> list[ismrmrd.Acquisition]:
    acquisitions = []
    for line in range(count):
        data = (rng.standard_normal((NCOILS, nx)) + 1j * rng.standard_normal((NCOILS, nx))).astype(np.complex64)
        acq = ismrmrd.Acquisition.from_array(data)
        acq.idx.kspace_encode_step_1 = line
        acq.scan_counter = line
        if line == count - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        acquisitions.append(acq)
    return acquisitions


@pytest.fixture
def raw_file(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, list[ismrmrd.Acquisition]]:
    path = tmp_path / "raw.h5"
    acquisitions = make_acquisitions(rng)
    with ismrmrd.Dataset(path, "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(header_xml())
        for acq in acquisitions:
            dataset.append_acquisition(acq)
        wav = ismrmrd.Waveform.from_array(np.arange(6, dtype=np.uint32).reshape(1, 6), waveform_id=1)
        dataset.append_waveform(wav)
    return path, acquisitions


def read_output(path: Path) -> dict[int, list[ismrmrd.Image]]:
    images: dict[int, list[ismrmrd.Image]] = {}
    with ismrmrd.Dataset(path, "dataset", create_if_needed=False) as dataset:
        for group in dataset.list():
            if group.startswith("image_"):
                series = int(group.removeprefix("image_"))
                images[series] = [dataset.read_image(group, i) for i in range(dataset.number_of_images(group))]
    return images


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or "out" in p.name)


# ---------------------------------------------------------------- protocol parsing


def test_parse_external_step(tmp_path: Path) -> None:
    protocol = load_protocol(write_protocol(tmp_path, external("echo_images", series="3", note='a&b"c')))
    assert protocol.readers == ["AcquisitionReader", "WaveformReader"]
    assert protocol.writers == ["ImageWriter"]
    (step,) = protocol.steps
    assert isinstance(step, ExternalStep)
    assert (step.module, step.target) == ("replay_gadgets", "echo_images")
    assert step.properties == {"series": "3", "note": 'a&b"c'}
    assert step.config_xml == (
        b'<configuration>\n\t<property name="series" value="3" />\n'
        b'\t<property name="note" value="a&amp;b&quot;c" />\n</configuration>\n'
    )


def test_empty_or_missing_configuration_is_gadgetrons_empty_document() -> None:
    empty = protocol_text('<external><execute name="m" target="t" type="python"/><configuration/></external>')
    missing = protocol_text('<external><execute name="m" target="t" type="python"/></external>')
    for text in (empty, missing):
        (step,) = load_protocol(text.encode()).steps
        assert isinstance(step, ExternalStep)
        assert step.config_xml == EMPTY_CONFIG_XML == b'<?xml version="1.0"?>\n<configuration />\n'
        assert step.properties == {}


def test_parse_parallel_with_chained_branch() -> None:
    stream = parallel(rgancs=external("to_next_step") + external("echo_images"), zero_filled=external("echo_images"))
    protocol = load_protocol(protocol_text(stream).encode())
    (step,) = protocol.steps
    assert isinstance(step, ParallelStep)
    assert list(step.streams) == ["rgancs", "zero_filled"]
    assert [s.target for s in step.streams["rgancs"]] == ["to_next_step", "echo_images"]  # type: ignore[union-attr]
    assert (step.branch, step.merge) == ("AcquisitionFanout", "UnorderedMerge")


def test_gadgetron_root_element_is_accepted() -> None:
    text = f"<gadgetron><version>2</version>{READERS}{WRITERS}<stream>{external('echo_images')}</stream></gadgetron>"
    assert isinstance(load_protocol(text.encode()).steps[0], ExternalStep)


@pytest.mark.parametrize(
    ("stream", "needle"),
    [
        ("<gadget><dll>gadgetron_mricore</dll><classname>NoiseAdjustGadget</classname></gadget>", "NoiseAdjustGadget"),
        ('<external><connect port="18000" address="localhost"/></external>', "<connect>"),
        ('<external><execute name="m" target="t" type="matlab"/></external>', "'matlab'"),
        ("<distributed/>", "<distributed>"),
        (
            parallel(a=external("echo_images")).replace("AcquisitionFanout", "ImageFanout"),
            "ImageFanout",
        ),
    ],
)
def test_parts_needing_the_cpp_runtime_are_protocol_errors(stream: str, needle: str) -> None:
    with pytest.raises(ProtocolError, match="Gadgetron server") as info:
        load_protocol(protocol_text(stream).encode())
    assert needle in str(info.value)


def test_unknown_reader_is_a_protocol_error() -> None:
    readers = "<readers><reader><dll>gadgetron_mricore</dll><classname>IsmrmrdDumpReader</classname></reader></readers>"
    with pytest.raises(ProtocolError, match="IsmrmrdDumpReader"):
        load_protocol(protocol_text(external("echo_images"), readers=readers).encode())


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("<configuration><version>2</version><stream>", "not well-formed"),
        ("<configuration><stream>" + external("x") + "</stream></configuration>", "no <version>"),
        ("<configuration><version>1</version><stream>" + external("x") + "</stream></configuration>", "version '1'"),
        ("<configuration><version>2</version></configuration>", "no <stream>"),
        ("<configuration><version>2</version><stream/></configuration>", "no steps"),
        ("<gadgetronStreamConfiguration/>", "version-1"),
        ("<html/>", "not a Gadgetron protocol"),
    ],
)
def test_malformed_protocols(text: str, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        load_protocol(text.encode())


def test_missing_protocol_file(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="cannot read"):
        load_protocol(tmp_path / "nope.xml")


# ---------------------------------------------------------------- ISMRMRD files


def test_read_raw(raw_file: tuple[Path, list[ismrmrd.Acquisition]]) -> None:
    path, acquisitions = raw_file
    header, acqs, waveforms = read_raw(path)
    assert header == header_xml()
    assert len(acqs) == NACQ and len(waveforms) == 1
    for got, want in zip(acqs, acquisitions, strict=True):
        np.testing.assert_array_equal(got.data, want.data)
        assert got.idx.kspace_encode_step_1 == want.idx.kspace_encode_step_1
    np.testing.assert_array_equal(waveforms[0].data, np.arange(6).reshape(1, 6))


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "raw.h5"
    path.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(IsmrmrdFormatError, match="not an HDF5 file"):
        read_raw(path)
    with pytest.raises(IsmrmrdFormatError, match="does not exist"):
        read_raw(tmp_path / "missing.h5")


def test_truncated(raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path) -> None:
    path, _ = raw_file
    truncated = tmp_path / "truncated.h5"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IsmrmrdFormatError, match="truncated or corrupt"):
        read_raw(truncated)


def test_missing_group_header_and_bad_header(tmp_path: Path, rng: np.random.Generator) -> None:
    no_group = tmp_path / "no_group.h5"
    with h5py.File(no_group, "w") as h5:
        h5.create_group("something_else")
    with pytest.raises(IsmrmrdFormatError, match=r"no ISMRMRD group 'dataset'.*something_else"):
        read_raw(no_group)

    no_header = tmp_path / "no_header.h5"
    with ismrmrd.Dataset(no_header, "dataset", create_if_needed=True) as dataset:
        dataset.append_acquisition(make_acquisitions(rng, 1)[0])
    with pytest.raises(IsmrmrdFormatError, match="no XML header"):
        read_raw(no_header)

    bad_header = tmp_path / "bad_header.h5"
    with ismrmrd.Dataset(bad_header, "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(b"<ismrmrdHeader><nonsense/></ismrmrdHeader>")
        dataset.append_acquisition(make_acquisitions(rng, 1)[0])
    with pytest.raises(IsmrmrdFormatError, match="not a valid ISMRMRD header"):
        read_raw(bad_header)

    no_data = tmp_path / "no_data.h5"
    with ismrmrd.Dataset(no_data, "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(header_xml())
    with pytest.raises(IsmrmrdFormatError, match="no acquisitions"):
        read_raw(no_data)


def test_acquisition_that_does_not_deserialise(raw_file: tuple[Path, list[ismrmrd.Acquisition]]) -> None:
    path, _ = raw_file
    with h5py.File(path, "r+") as h5:
        row = h5["dataset/data"][1]
        row["data"] = row["data"][:-2]  # drop one complex sample
        h5["dataset/data"][1] = row
    with pytest.raises(IsmrmrdFormatError, match="acquisition 1 does not deserialise"):
        read_raw(path)


def test_write_images_is_atomic(tmp_path: Path) -> None:
    good = ismrmrd.Image.from_array(np.ones((4, 4), np.float32), image_series_index=1)
    odd = ismrmrd.Image.from_array(np.ones((2, 4), np.float32), image_series_index=1)
    out = tmp_path / "out.h5"
    with pytest.raises(IsmrmrdFormatError, match="mixes image shapes"):
        write_images(out, {1: [good, odd]}, header_xml())
    assert leftovers(tmp_path) == []
    write_images(out, {1: [good, good]}, header_xml())
    assert [len(v) for v in read_output(out).values()] == [2]
    assert leftovers(tmp_path) == ["out.h5"]


# ---------------------------------------------------------------- gadgets over loopback


def test_replay_echo_end_to_end(raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path) -> None:
    path, acquisitions = raw_file
    protocol = write_protocol(tmp_path, external("echo_images", series="5"))
    out = tmp_path / "out.h5"
    summary = replay_file(
        path, protocol, out, png_dir=tmp_path / "png", timeout=30, progress=False, extra_pythonpath=EXTRA
    )
    images = read_output(out)
    assert list(images) == [5]
    assert len(images[5]) == NACQ
    for image, acq in zip(images[5], acquisitions, strict=True):
        assert image.image_series_index == 5
        np.testing.assert_array_equal(image.data[0, 0], acq.data)  # [channels, z, y, x] with y = coils
    (series,) = summary.series
    assert (series.series, series.count, series.shape, series.source) == (
        5,
        NACQ,
        (NX, NCOILS, 1),
        "replay_gadgets.echo_images",
    )
    assert series.mean_snr_db == pytest.approx(np.mean([20.0 + i for i in range(NACQ)]))
    assert series.mean_ssim == pytest.approx(0.5)
    assert (summary.acquisitions, summary.waveforms, summary.images) == (NACQ, 1, NACQ)
    assert len(summary.pngs) == NACQ and all(p.exists() for p in summary.pngs)
    console = Console(record=True, width=140)
    console.print(format_summary(summary))
    assert "echo_images" in console.export_text()


def test_config_and_header_reach_the_gadget_as_gadgetron_sends_them(rng: np.random.Generator) -> None:
    protocol = load_protocol(protocol_text(external("config_echo", series="9")).encode())
    (step,) = protocol.steps
    run = run_external(step, header_xml(), make_acquisitions(rng), timeout=30, extra_pythonpath=EXTRA)  # type: ignore[arg-type]
    run.raise_for_errors()
    (image,) = run.images
    assert image.meta["config"].encode() == step.config_xml  # type: ignore[union-attr]
    assert image.meta["matrix"] == f"{NX}x{NACQ}"


def test_images_are_read_while_still_sending(rng: np.random.Generator) -> None:
    # ~42 MB each way, more than loopback socket buffers hold: without a reader running while the
    # writer sends, both sides would block. The first image must arrive before the last acquisition left.
    count, nx = 640, 4096
    acquisitions = make_acquisitions(rng, count=count, nx=nx)
    sent: list[int] = [0]
    sent_at_image: list[int] = []

    def on_sent(_message: object) -> None:
        sent[0] += 1

    run = run_external(
        ExternalStep("replay_gadgets", "echo_images"),
        header_xml(nx, count),
        acquisitions,
        timeout=30,
        extra_pythonpath=EXTRA,
        on_sent=on_sent,
        on_image=lambda _image: sent_at_image.append(sent[0]),
    )
    run.raise_for_errors()
    assert len(run.images) == count and run.sent == count
    assert [im.image_index for im in run.images] == list(range(count))
    assert sent_at_image[0] < count
    np.testing.assert_array_equal(run.images[-1].data[0, 0], acquisitions[-1].data)


def test_chained_steps_feed_each_other(raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path) -> None:
    path, acquisitions = raw_file
    protocol = write_protocol(tmp_path, external("to_next_step") + external("echo_images", series="2"))
    out = tmp_path / "out.h5"
    replay_file(path, protocol, out, timeout=30, progress=False, extra_pythonpath=EXTRA)
    images = read_output(out)[2]
    np.testing.assert_allclose(images[1].data[0, 0], 2 * acquisitions[1].data)


def test_parallel_branches_run_concurrently(raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path) -> None:
    path, _ = raw_file
    stream = parallel(
        rgancs=external("echo_images", series="1", delay="1.5"),
        zero_filled=external("echo_images", series="2", delay="1.5"),
    )
    out = tmp_path / "out.h5"
    start = time.monotonic()
    summary = replay_file(
        path, write_protocol(tmp_path, stream), out, timeout=30, progress=False, extra_pythonpath=EXTRA
    )
    elapsed = time.monotonic() - start
    images = read_output(out)
    assert sorted(images) == [1, 2] and [len(images[1]), len(images[2])] == [NACQ, NACQ]
    assert [(s.series, s.source) for s in summary.series] == [(1, "rgancs"), (2, "zero_filled")]
    branch_seconds = sum(s.seconds for s in summary.series)
    assert elapsed < branch_seconds - 1.0, (elapsed, branch_seconds)  # overlapped, not one after the other


def test_failing_branch_keeps_the_other_branch_and_writes_nothing(
    raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path
) -> None:
    path, _ = raw_file
    stream = parallel(good=external("echo_images", series="1"), bad=external("crash_midway", series="2"))
    protocol = write_protocol(tmp_path, stream)
    out = tmp_path / "out.h5"
    with pytest.raises(GadgetFailedError, match=r"branch 'bad'.*simulated reconstruction failure") as info:
        replay_file(path, protocol, out, timeout=30, progress=False, extra_pythonpath=EXTRA)
    exc = info.value
    assert not out.exists() and leftovers(tmp_path) == []
    run = exc.run.runs[-1]  # type: ignore[attr-defined]
    assert isinstance(run, ParallelRun)
    assert run.streams["good"].ok and len(run.streams["good"].images) == NACQ
    assert not run.streams["bad"].ok and len(run.streams["bad"].images) == 2
    assert sorted(im.image_series_index for im in exc.images) == [1] * NACQ + [2, 2]  # type: ignore[attr-defined]

    with pytest.raises(GadgetFailedError):
        replay_file(path, protocol, out, timeout=30, progress=False, extra_pythonpath=EXTRA, keep_partial=True)
    assert not out.exists()
    partial = read_output(partial_path(out))
    assert partial_path(out).name == "out.partial.h5" and [len(partial[1]), len(partial[2])] == [NACQ, 2]


def test_hang_hits_the_timeout(raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path) -> None:
    path, _ = raw_file
    out = tmp_path / "out.h5"
    start = time.monotonic()
    with pytest.raises(StreamTimeoutError, match=r"sent nothing for 1\.5 s"):
        replay_file(
            path, write_protocol(tmp_path, external("hang")), out, timeout=1.5, progress=False, extra_pythonpath=EXTRA
        )
    assert time.monotonic() - start < 8.0
    assert not out.exists()


@pytest.mark.parametrize(
    ("target", "module", "needle"),
    [
        # The package sends CLOSE before the process exits 1, but a socket closed with acquisitions still unread
        # may reset the connection before CLOSE arrives: either way the exit status and the exception are named.
        ("silent_crash", "replay_gadgets", r"exit(?:ed with)? status 1.*RuntimeError: silent crash after"),
        ("bad_message", "replay_gadgets", "illegal message id 999"),
        ("echo_images", "broken_gadgets", "ModuleNotFoundError"),
        ("to_next_step", "replay_gadgets", "sent no images"),
    ],
)
def test_gadget_failures_are_named_errors(
    raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path, target: str, module: str, needle: str
) -> None:
    path, _ = raw_file
    out = tmp_path / "out.h5"
    protocol = write_protocol(tmp_path, external(target, module=module))
    with pytest.raises(GadgetFailedError, match=needle):
        replay_file(path, protocol, out, timeout=10, progress=False, extra_pythonpath=EXTRA)
    assert not out.exists()


def test_gadget_traceback_only_when_verbose(
    raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The named error ends with the traceback's last line; the whole gadget output needs -v (INFO logging)."""
    path, _ = raw_file
    protocol = write_protocol(tmp_path, external("silent_crash"))
    caplog.set_level(logging.WARNING, logger="recon_plugin.replay.external")
    with pytest.raises(GadgetFailedError) as quiet:
        replay_file(path, protocol, tmp_path / "a.h5", timeout=10, progress=False, extra_pythonpath=EXTRA)
    assert "RuntimeError: silent crash" in str(quiet.value) and "Traceback" not in str(quiet.value)
    assert "-v shows the gadget's output" in str(quiet.value)
    caplog.set_level(logging.INFO, logger="recon_plugin.replay.external")
    with pytest.raises(GadgetFailedError) as verbose:
        replay_file(path, protocol, tmp_path / "b.h5", timeout=10, progress=False, extra_pythonpath=EXTRA)
    assert "Traceback" in str(verbose.value)


def test_start_failures(tmp_path: Path, rng: np.random.Generator) -> None:
    step = ExternalStep("replay_gadgets", "echo_images")
    died = run_external(step, header_xml(), make_acquisitions(rng), python="false", connect_timeout=5)
    assert isinstance(died.failure, GadgetFailedError) and "before connecting" in str(died.failure)

    sleeper = tmp_path / "slow_python"
    sleeper.write_text("#!/bin/sh\nexec sleep 30\n")
    sleeper.chmod(0o755)
    start = time.monotonic()
    slow = run_external(step, header_xml(), make_acquisitions(rng), python=str(sleeper), connect_timeout=0.5)
    assert isinstance(slow.failure, StreamTimeoutError) and "did not connect within 0.5 s" in str(slow.failure)
    assert time.monotonic() - start < 5.0
    with pytest.raises(StreamTimeoutError) as info:
        slow.raise_for_errors()
    assert info.value.images == []  # type: ignore[attr-defined]


def test_protocol_without_image_writer_is_refused(
    raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path
) -> None:
    path, _ = raw_file
    protocol = write_protocol(tmp_path, external("echo_images"), writers="")
    with pytest.raises(ProtocolError, match="no ImageWriter"):
        replay_file(path, protocol, tmp_path / "out.h5", progress=False)


def test_an_error_stops_the_whole_stream_at_once(raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path):
    """Gadgetron fails the stream on an ERROR: replay stops every branch instead of waiting for them to finish."""
    path, _ = raw_file
    protocol = write_protocol(tmp_path, parallel(bad=external("refuse"), slow=external("hang")))
    start = time.monotonic()
    with pytest.raises(GadgetFailedError, match="bad configuration") as info:
        replay_file(path, protocol, tmp_path / "out.h5", timeout=120, progress=False, extra_pythonpath=EXTRA)
    assert time.monotonic() - start < 60  # the hanging branch would hold it for the 120 s timeout
    assert str(info.value).index("bad configuration") < str(info.value).index("was stopped")
    assert not (tmp_path / "out.h5").exists()


def test_gadget_warnings_are_shown_on_success(
    raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, acquisitions = raw_file
    protocol = write_protocol(tmp_path, external("warn_then_echo"))
    with caplog.at_level("WARNING", logger="recon_plugin.replay"):
        summary = replay_file(path, protocol, tmp_path / "out.h5", timeout=60, progress=False, extra_pythonpath=EXTRA)
    assert summary.series and sum(s.count for s in summary.series) == len(acquisitions)
    assert "gadget replay_gadgets.warn_then_echo: WARNING: calibration region is small" in caplog.text


def test_a_wrong_weights_path_fails_the_replay_at_once(
    raw_file: tuple[Path, list[ismrmrd.Acquisition]], tmp_path: Path
) -> None:
    """The RGANCS gadget checks its bundle when it starts; the ERROR stops the whole stream within seconds."""
    path, _ = raw_file
    bad = external("rgancs", module="recon_plugin.gadgets", weights=str(tmp_path / "no_such_bundle"), device="cpu")
    protocol = write_protocol(tmp_path, parallel(rgancs=bad, slow=external("hang")))
    start = time.monotonic()
    with pytest.raises(GadgetFailedError, match="BundleError: no model bundle at"):
        replay_file(path, protocol, tmp_path / "out.h5", timeout=300, progress=False, extra_pythonpath=EXTRA)
    assert time.monotonic() - start < 120  # not the 300 s the hanging branch would hold it
