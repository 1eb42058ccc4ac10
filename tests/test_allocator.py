"""glibc's allocator setting (recon_plugin.allocator): large blocks reused instead of mapped afresh, the switch off."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from recon_plugin import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, fills and frees a 64 MiB block five times through the process's malloc (as a slice's activations come
# and go) and counts the page faults of the last four: with glibc's defaults each one is a fresh mmap, faulted in
# page by page.
_FAULTS = """
import ctypes, json, resource, sys
from recon_plugin import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def block():
    p = libc.malloc(64 << 20)
    libc.memset(p, 1, 64 << 20)
    libc.free(p)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block()
before = faults()
for _ in range(4):
    block()
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""


def _run(mode: str, env_value: str | None = None) -> dict:
    env = None if env_value is None else {**os.environ, allocator.ENV: env_value}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True, timeout=120, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    plain, kept = _run("plain"), _run("keep")
    assert kept["applied"] is True and plain["applied"] is False
    pages = 4 * 64 * 2**20 // 4096  # what four fresh 64 MiB mappings fault in
    assert plain["faults"] > pages // 2
    assert kept["faults"] < pages // 20


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_the_environment_switch_turns_it_off():
    off = _run("keep", env_value="0")
    assert off["applied"] is False
    assert off["faults"] > 4 * 64 * 2**20 // 4096 // 2


def test_switch_values(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    for value in ("0", "false", "No", " off "):
        monkeypatch.setenv(allocator.ENV, value)
        assert allocator.keep_freed_memory() is False
    assert allocator._applied is False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
@pytest.mark.parametrize("entry", ["recon_plugin.cli", "training.cli"])
def test_console_entry_points_apply_it(entry):
    code = (
        "import sys\n"
        f"from {entry} import main\n"
        "from recon_plugin import allocator\n"
        "sys.argv = ['prog', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('applied', allocator._applied)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "applied True"
