"""``--model`` of ``replay`` and ``demo``: a gadget property set over the protocol's, and what reaches the gadget."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from raw_helpers import tiny_2d
from typer.testing import CliRunner

from recon_plugin import sample_raw as sr
from recon_plugin.cli import app
from recon_plugin.errors import ProtocolError
from recon_plugin.model import ModelConfig, RecurrentProximalNet, save_bundle
from recon_plugin.replay import ExternalStep, ParallelStep, load_protocol, read_images, run_external
from recon_plugin.replay.protocol import set_gadget_property
from recon_plugin.sample_data import MODEL_BUNDLES

TESTS = Path(__file__).resolve().parent
PROTOCOLS = TESTS.parent / "protocols"
runner = CliRunner()

IO = (
    "<version>2</version><readers><reader><dll>gadgetron_core_readers</dll><classname>AcquisitionReader</classname>"
    "</reader></readers><writers><writer><dll>gadgetron_core_writers</dll><classname>ImageWriter</classname>"
    "</writer></writers>"
)
FANOUT = "<branch><dll>gadgetron_core_parallel</dll><classname>AcquisitionFanout</classname></branch>"
MERGE = "<merge><dll>gadgetron_core_parallel</dll><classname>UnorderedMerge</classname></merge>"


def _external(target: str, config: str) -> str:
    return f'<external><execute name="replay_gadgets" target="{target}" type="python"/>{config}</external>'


def _two_branches() -> bytes:
    """config_echo twice (one sets model=fast and series=9, one has no configuration) beside echo_images."""
    a = _external(
        "config_echo",
        '<configuration><property name="model" value="fast"/><property name="series" value="9"/></configuration>',
    )
    b = _external("config_echo", "")
    c = _external("echo_images", '<configuration><property name="model" value="fast"/></configuration>')
    streams = f'<stream key="a">{a}</stream><stream key="b">{b}</stream><stream key="c">{c}</stream>'
    return f"<configuration>{IO}<stream><parallel>{FANOUT}{streams}{MERGE}</parallel></stream></configuration>".encode()


def _text(output: str) -> str:
    """The CLI's output as one line of words (rich wraps error panels at the terminal's width)."""
    return " ".join(output.replace("\u2502", " ").split())


def _model_properties(step: ExternalStep) -> list[str | None]:
    return [p.get("value") for p in ET.fromstring(step.config_xml).iter("property") if p.get("name") == "model"]


def test_the_property_is_replaced_or_added_in_every_matching_gadget_and_nowhere_else():
    protocol = load_protocol(_two_branches())
    changed = set_gadget_property(protocol, "replay_gadgets", "config_echo", "model", "accurate")
    (parallel,) = changed.steps
    assert isinstance(parallel, ParallelStep)
    (a,), (b,), (c,) = parallel.streams.values()
    assert a.properties == {"model": "accurate", "series": "9"} and _model_properties(a) == ["accurate"]
    assert b.properties == {"model": "accurate"} and _model_properties(b) == ["accurate"]  # added to an empty one
    assert c.properties == {"model": "fast"} and _model_properties(c) == ["fast"]  # another target: untouched
    assert changed.overrides == ("replay_gadgets.config_echo: model=accurate",)
    (original,) = protocol.steps  # the parsed protocol itself is not altered
    assert original.streams["a"][0].properties["model"] == "fast"  # type: ignore[union-attr]


def test_the_gadget_receives_the_changed_configuration(rng: np.random.Generator):
    from test_replay_engine import header_xml, make_acquisitions

    changed = set_gadget_property(load_protocol(_two_branches()), "replay_gadgets", "config_echo", "model", "x<&y")
    step = changed.steps[0].streams["a"][0]  # type: ignore[union-attr]
    run = run_external(step, header_xml(), make_acquisitions(rng), timeout=30, extra_pythonpath=[str(TESTS)])
    run.raise_for_errors()
    (image,) = run.images
    sent = ET.fromstring(image.meta["config"])  # type: ignore[union-attr]
    assert {p.get("name"): p.get("value") for p in sent.iter("property")} == {"model": "x<&y", "series": "9"}


def test_a_protocol_without_the_gadget_is_a_named_error():
    protocol = load_protocol(PROTOCOLS / "zero_filled.xml")
    with pytest.raises(ProtocolError, match=r"no recon_plugin\.gadgets\.rgancs gadget to set model=fast"):
        set_gadget_property(protocol, "recon_plugin.gadgets", "rgancs", "model", "fast")


def test_a_mistyped_model_is_a_usage_error_before_anything_runs(tmp_path):
    out = tmp_path / "out.h5"
    res = runner.invoke(app, ["replay", "missing.h5", "--protocol", "rgancs", "--out", str(out), "--model", "acurate"])
    assert res.exit_code == 2 and "did you mean accurate?" in _text(res.output) and not out.exists()
    demo = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(demo), "--model", "slow", "--no-raw"])
    assert res.exit_code == 2 and "give one of auto, accurate, fast" in _text(res.output) and not demo.exists()


def test_model_over_a_protocol_that_names_weights_is_a_named_error(tmp_path):
    text = (PROTOCOLS / "rgancs.xml").read_text()
    assert '<property name="weights" value=""/>' in text
    protocol = tmp_path / "weights.xml"
    protocol.write_text(text.replace('<property name="weights" value=""/>', '<property name="weights" value="w"/>'))
    out = tmp_path / "out.h5"
    res = runner.invoke(
        app, ["replay", "missing.h5", "--protocol", str(protocol), "--out", str(out), "--model", "fast"]
    )
    assert res.exit_code == 2 and "ProtocolError" in res.output and "both name a bundle" in _text(res.output)


def test_model_over_a_protocol_without_rgancs_is_a_named_error(tmp_path):
    res = runner.invoke(
        app, ["replay", "missing.h5", "--protocol", "zero_filled", "--out", str(tmp_path / "o.h5"), "--model", "fast"]
    )
    assert res.exit_code == 2 and "no recon_plugin.gadgets.rgancs gadget" in _text(res.output)


def test_demo_refuses_a_bundle_and_a_model_together(tmp_path):
    folder = tmp_path / "tiny"
    save_bundle(RecurrentProximalNet(ModelConfig(copies=2, features=4)), folder, mask={}, training_data={})
    out = tmp_path / "out"
    args = ["demo", "--out", str(out), "--bundle", str(folder), "--model", "fast", "--no-raw", "--device", "cpu"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "InvalidInputError" in res.output and not out.exists()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    scan = sr.build_raw(tiny_2d())  # four coils: the multi-coil bundle reconstructs it
    return sr.write_ismrmrd(tmp_path_factory.mktemp("raw") / "tiny2d.h5", scan.header, scan.acquisitions)


@pytest.mark.parametrize("model", ["fast", "accurate"])
def test_replay_with_model_loads_that_bundle(tmp_path, raw, model):
    out, summary = tmp_path / "out.h5", tmp_path / "summary.json"
    args = ["replay", str(raw), "--protocol", "rgancs", "--out", str(out), "--no-progress"]
    res = runner.invoke(app, [*args, "--model", model, "--json", str(summary)])
    assert res.exit_code == 0, res.output
    images = [im for series in read_images(out).values() for im in series]
    assert images and {im.meta["ModelName"] for im in images} == {MODEL_BUNDLES[model].name}
    assert json.loads(summary.read_text())["protocol_overrides"] == [f"recon_plugin.gadgets.rgancs: model={model}"]
    assert f"set: recon_plugin.gadgets.rgancs: model={model}" in _text(res.output)
