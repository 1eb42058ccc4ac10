"""Commands that need no model answer without importing torch (``--version``, ``--help``, ``protocols``, ``mask``,
argument errors, and a protocol typo on replay, which is found before any gadget starts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "sample_data" / "raw" / "brain2d_multislice.h5"

PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr))\n"
    "from recon_plugin.cli import main\n"
    "sys.argv = ['recon-plugin', *sys.argv[1:]]\n"
    "main()\n"
)


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("--help",),
        ("protocols", "list"),
        ("replay", "--help"),
        ("bench", "--help"),
        ("serve", "--port", "99999"),
    ],
)
def test_commands_that_need_no_model_do_not_import_torch(args):
    done = run(*args)
    assert done.stderr.strip().endswith("no torch"), done.stderr


def test_mask_needs_no_torch(tmp_path):
    done = run("mask", "--out", str(tmp_path / "m"), "--shape", "32", "16")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("no torch")


def test_a_protocol_typo_on_replay_is_found_before_torch_or_any_gadget(tmp_path):
    text = (ROOT / "protocols" / "rgancs_retro5x.xml").read_text()
    assert 'name="retro_acceleration"' in text
    typo = tmp_path / "typo.xml"
    typo.write_text(text.replace('name="retro_acceleration"', 'name="retro_accleration"'))
    done = run("replay", str(RAW), "--protocol", str(typo), "--out", str(tmp_path / "o.h5"), "--no-progress")
    assert done.returncode == 2
    assert "retro_accleration (did you mean retro_acceleration?)" in done.stdout + done.stderr
    assert done.stderr.strip().endswith("no torch")
    assert not (tmp_path / "o.h5").exists()
