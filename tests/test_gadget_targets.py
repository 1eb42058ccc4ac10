"""What a protocol may run: ``serve`` runs only the project's gadgets and modules its operator allows; replay
and serve check every ``<execute>`` target (and the project gadgets' properties) before any gadget starts."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest
from test_mrd_server import RAW, external, parallel, protocol_text
from test_server_limits import running
from typer.testing import CliRunner

from recon_plugin import mrd_server
from recon_plugin.cli import app
from recon_plugin.errors import ProtocolError
from recon_plugin.gadget_targets import PROJECT_TARGETS, check_protocol, check_target, module_targets
from recon_plugin.mrd_client import stream_file
from recon_plugin.replay import ExternalStep, replay_file
from recon_plugin.replay.protocol import load_protocol

runner = CliRunner()

MARKER_MODULE = '''
"""A gadget module whose import leaves a marker file: proves whether anything imported it."""
from pathlib import Path

Path({marker!r}).write_text("imported")


def echo(connection):
    for _ in connection:
        pass
'''


@pytest.fixture
def marker_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A uniquely named gadget module on sys.path that writes ``marker`` when imported."""
    name = f"marker_gadgets_{tmp_path.name.replace('-', '_')}"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_project_targets_are_the_gadget_functions():
    """The allowlist is what recon_plugin.gadgets defines (read from its source, not hand-kept)."""
    assert module_targets("recon_plugin.gadgets") >= PROJECT_TARGETS
    import recon_plugin.gadgets as gadgets

    assert all(callable(getattr(gadgets, name)) for name in PROJECT_TARGETS)


@pytest.mark.parametrize(
    ("module", "target", "message"),
    [
        ("os", "system", "not allowed on this server"),
        ("faulthandler", "_sigsegv", "not allowed on this server"),
        ("recon_plugin.bench", "run_bench", "not allowed on this server"),
        ("recon_plugin.gadgets", "rgancs_fast", "unknown target 'rgancs_fast'.*did you mean rgancs"),
        ("recon_plugin.gadget", "rgancs", r"did you mean recon_plugin\.gadgets\?\) is not allowed"),
    ],
)
def test_server_refuses_foreign_and_unknown_targets(module, target, message):
    with running(idle_timeout=10.0) as (host, port):
        result = stream_file(RAW, host, port, config_xml=protocol_text(external(module, target)), timeout=30)
    assert not result.images
    assert len(result.errors) == 1 and result.errors[0].startswith("ProtocolError")
    assert re.search(message, result.errors[0]), result.errors[0]


def test_server_refuses_before_importing_and_allow_module_lets_it_run(marker_module):
    name, marker = marker_module
    config = protocol_text(external(name, "echo"))
    with running(idle_timeout=10.0) as (host, port):
        refused = stream_file(RAW, host, port, config_xml=config, timeout=30)
    assert refused.errors and "--allow-module " + name in refused.errors[0]
    assert not marker.exists() and name not in sys.modules  # never imported
    with running(idle_timeout=10.0, allowed_modules=(name,)) as (host, port):
        missing = stream_file(RAW, host, port, config_xml=protocol_text(external(name, "ehco")), timeout=30)
        assert (
            missing.errors and "unknown target 'ehco'" in missing.errors[0] and "did you mean echo" in missing.errors[0]
        )
        assert not marker.exists()  # the target is looked up in the source, not by importing it
        ran = stream_file(RAW, host, port, config_xml=config, timeout=30)
    assert ran.errors == [] and marker.exists()


def test_server_checks_every_branch_and_property_before_any_gadget_starts():
    """A property typo in one branch fails the exam before a gadget thread starts (no images, no threads)."""
    config = protocol_text(
        parallel(
            a=external("recon_plugin.gadgets", "zero_filled"), b=external("recon_plugin.gadgets", "cs_tv", lamda="0.01")
        )
    )
    started = []
    with running(idle_timeout=10.0) as (host, port):
        before = {t.name for t in threading.enumerate()}
        result = stream_file(RAW, host, port, config_xml=config, timeout=30)
        started = [t for t in threading.enumerate() if t.name.startswith("mrd-gadget-") and t.name not in before]
    assert not result.images and not started
    assert result.errors[0].startswith("ProtocolError") and "branch 'b'" in result.errors[0]
    assert "lamda (did you mean lambda?)" in result.errors[0]


def test_replay_checks_targets_before_any_process(tmp_path, marker_module):
    name, marker = marker_module
    for module, target, message in [
        ("os", "system", "no Python source"),
        ("faulthandler", "_sigsegv", "no Python source"),
        ("no_such_gadgets", "echo", "unknown gadget module 'no_such_gadgets'"),
        (name, "ecko", "unknown target 'ecko'.*did you mean echo"),
        ("recon_plugin.gadgets", "zero_filed", "did you mean zero_filled"),
    ]:
        out = tmp_path / f"{module}.h5"
        start = time.monotonic()
        with pytest.raises(ProtocolError, match=message):
            replay_file(RAW, load_protocol(protocol_text(external(module, target)).encode()), out, progress=False)
        assert time.monotonic() - start < 5  # no gadget process was started and waited for
        assert not out.exists()
    assert not marker.exists()


def test_replay_cli_names_the_target_and_exits_2(tmp_path):
    protocol = tmp_path / "p.xml"
    protocol.write_text(protocol_text(external("os", "system")))
    result = runner.invoke(app, ["replay", str(RAW), "--protocol", str(protocol), "--out", str(tmp_path / "o.h5")])
    assert result.exit_code == 2, result.output
    assert "ProtocolError" in result.output and "no Python source" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.h5").exists()


def test_check_protocol_accepts_every_packaged_protocol():
    for path in sorted((Path(__file__).resolve().parents[1] / "protocols").glob("*.xml")):
        check_protocol(load_protocol(path), allowed_modules=())


def test_search_path_finds_modules_the_gadget_process_will_see(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (tmp_path / "pkg" / "gadgets.py").write_text("class Recon:\n    pass\n")
    check_target(ExternalStep("pkg.gadgets", "Recon"), search_path=[tmp_path])
    with pytest.raises(ProtocolError, match=r"unknown gadget module 'pkg\.gadgets'"):
        check_target(ExternalStep("pkg.gadgets", "Recon"))


def test_serve_cli_passes_allowed_modules(monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(mrd_server, "serve", lambda *args, **kwargs: seen.update(kwargs))
    result = runner.invoke(app, ["serve", "--port", "0", "--allow-module", "site_gadgets", "--allow-module", "x.y"])
    assert result.exit_code == 0, result.output
    assert tuple(seen["allowed_modules"]) == ("site_gadgets", "x.y")
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert tuple(seen["allowed_modules"]) == ()
