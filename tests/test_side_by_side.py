"""The side-by-side protocol: four methods and the reference on the same acquisitions; a failing branch."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_helpers import tiny_2d

from recon_plugin import sample_raw as sr
from recon_plugin.coils import bart_available
from recon_plugin.errors import GadgetFailedError
from recon_plugin.replay import partial_path, read_images, replay_file

PROTOCOL = Path(__file__).resolve().parents[1] / "protocols" / "side_by_side.xml"
needs_bart = pytest.mark.skipif(not bart_available(), reason="BART not installed")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    scan = sr.build_raw(tiny_2d())
    return sr.write_ismrmrd(tmp_path_factory.mktemp("raw") / "tiny2d.h5", scan.header, scan.acquisitions)


def quick_protocol(tmp_path: Path) -> Path:
    """side_by_side.xml with 30 BART iterations and a 2x retrospective mask (tiny slices)."""
    text = PROTOCOL.read_text().replace('name="iterations" value="300"', 'name="iterations" value="30"')
    text = text.replace('name="retro_acceleration" value="5"', 'name="retro_acceleration" value="2"')
    path = tmp_path / "side_by_side_quick.xml"
    path.write_text(text)
    return path


@needs_bart
def test_four_methods_and_reference(tmp_path, raw):
    summary = replay_file(raw, quick_protocol(tmp_path), tmp_path / "out.h5", progress=False, timeout=60)
    images = read_images(tmp_path / "out.h5")
    assert sorted(images) == [1, 2, 3, 4, 9]
    slices = len({im.slice for im in images[1]})
    assert slices == 3 and all(len(v) == slices for v in images.values())
    methods = {s: images[s][0].meta["Method"] for s in images}
    assert methods == {1: "zero_filled", 2: "rgancs", 3: "cs_wavelet", 4: "cs_tv", 9: "reference"}
    assert images[3][0].meta["Iterations"] == "30" and float(images[3][0].meta["Lambda"]) > 0
    for series in (1, 2, 3, 4):  # the middle slice holds the phantom (the outer ones are its thin caps)
        middle = next(im for im in images[series] if im.slice == 1)
        assert float(middle.meta["SNR_dB"]) > 15
    by_index = {s: {im.image_index: im for im in images[s]} for s in images}
    for index, ref in by_index[9].items():  # every method's image of a slice sits where the reference does
        for s in (1, 2, 3, 4):
            assert tuple(by_index[s][index].position) == pytest.approx(tuple(ref.position))
    assert {s.series for s in summary.series} == {1, 2, 3, 4, 9}
    recon_stage = {t.source: [n for n in ("network", "bart", "zero_filled") if n in t.stages] for t in summary.timings}
    expected = {"zero_filled": ["zero_filled"], "rgancs": ["network"], "cs_wavelet": ["bart"], "cs_tv": ["bart"]}
    assert recon_stage == expected


def test_a_failing_branch_is_reported_and_the_others_arrive(tmp_path, raw, monkeypatch):
    empty = tmp_path / "no_bart"
    empty.mkdir()
    monkeypatch.setenv("TOOLBOX_PATH", str(empty))  # the gadget processes inherit it: BART is "missing"
    out = tmp_path / "out.h5"
    with pytest.raises(GadgetFailedError) as info:
        replay_file(raw, quick_protocol(tmp_path), out, progress=False, timeout=60, keep_partial=True)
    message = str(info.value)
    assert "cs_wavelet" in message and "cs_tv" in message and "BartNotFoundError" in message
    assert "apt-get install bart" in message
    assert not out.exists()
    arrived = {im.image_series_index for im in info.value.images}
    assert arrived == {1, 2, 9}
    partial = read_images(partial_path(out))
    assert sorted(partial) == [1, 2, 9]


@needs_bart
def test_mrd_server_matches_replay(tmp_path, raw):
    """Both runtimes run the same gadgets: deterministic methods are identical; BART's wavelet uses random shifts,
    so CS images are compared within a tolerance."""
    import threading

    import numpy as np

    from recon_plugin.metrics import snr_db
    from recon_plugin.mrd_client import stream_file
    from recon_plugin.mrd_server import ServerReady, serve

    protocol = quick_protocol(tmp_path)
    replay_file(raw, protocol, tmp_path / "replay.h5", progress=False, timeout=60)
    expected = read_images(tmp_path / "replay.h5")
    ready, stop = ServerReady(), threading.Event()
    thread = threading.Thread(target=serve, kwargs={"port": 0, "ready": ready, "stop": stop}, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        result = stream_file(raw, *ready.address, config_xml=protocol.read_text(), timeout=120)
    finally:
        stop.set()
        thread.join(20)
    assert result.ok, result.errors
    got = result.by_series()
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 9]
    for series, images in expected.items():
        mine = {im.image_index: im for im in got[series]}
        for im in images:
            a, b = im.data, mine[im.image_index].data
            if series in (1, 2, 9):
                assert np.abs(a - b).max() == 0
            elif im.slice == 1:  # CS on the phantom's slice: same problem and lambda, other random wavelet shifts
                assert snr_db(a[0, 0], b[0, 0]) > 20
