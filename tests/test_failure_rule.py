"""One failure rule for replay and serve: a gadget's ERROR fails the whole exam (the other gadgets are stopped,
the client writes nothing), unless the operator keeps partial results (``serve --keep-partial``, and
``client --keep-partial`` writes what arrived to ``GROUP.partial``)."""

from __future__ import annotations

import h5py
from test_mrd_server import RAW, external, parallel, protocol_text
from test_server_limits import running
from typer.testing import CliRunner

from recon_plugin.cli import app
from recon_plugin.mrd_client import stream_file

runner = CliRunner()
#: One branch crashes at its third acquisition; the other sends 50 images once its input ended.
FAILING = protocol_text(
    parallel(good=external("server_gadgets", "slow_images"), bad=external("server_gadgets", "boom"))
)


def test_a_failing_branch_stops_the_others_by_default():
    with running(idle_timeout=20.0) as (host, port):
        result = stream_file(RAW, host, port, config_xml=FAILING, timeout=30)
    assert result.closed and result.images == []  # slow_images was stopped: nothing of a failed exam goes out
    assert len(result.errors) == 1 and "server_gadgets.boom" in result.errors[0]


def test_keep_partial_lets_the_other_branches_finish():
    with running(idle_timeout=20.0, keep_partial=True) as (host, port):
        result = stream_file(RAW, host, port, config_xml=FAILING, timeout=30)
    assert result.closed and len(result.images) == 50
    assert len(result.errors) == 1 and "server_gadgets.boom" in result.errors[0]


def test_client_writes_nothing_of_a_failed_stream_unless_keep_partial(tmp_path):
    config = tmp_path / "failing.xml"
    config.write_text(FAILING)
    out = tmp_path / "out.h5"
    common = ["client", str(RAW), "--port", "0", "--config-file", str(config), "--out", str(out), "-G", "run1"]
    with running(idle_timeout=20.0, keep_partial=True) as (host, port):
        common[3] = str(port)
        plain = runner.invoke(app, [*common, "--host", host, "--timeout", "30"])
        assert plain.exit_code == 2, plain.output
        assert "50 images arrived before the failure; none written" in plain.output
        assert not out.exists()
        kept = runner.invoke(app, [*common, "--host", host, "--timeout", "30", "--keep-partial"])
    assert kept.exit_code == 2, kept.output
    with h5py.File(out, "r") as h5:
        assert list(h5) == ["run1.partial"] and "image_5" in h5["run1.partial"]
    assert "group 'run1.partial'" in kept.output


def test_serve_cli_passes_keep_partial(monkeypatch):
    from recon_plugin import mrd_server

    seen: dict = {}
    monkeypatch.setattr(mrd_server, "serve", lambda *args, **kwargs: seen.update(kwargs))
    assert runner.invoke(app, ["serve", "--port", "0", "--keep-partial"]).exit_code == 0
    assert seen["keep_partial"] is True
    assert runner.invoke(app, ["serve", "--port", "0"]).exit_code == 0
    assert seen["keep_partial"] is False
