"""Start-up time of the command line: seconds from process start to exit for commands that need no model.

    python benchmarks/startup.py [--repeats 5]

Prints the median and the fastest of ``repeats`` runs of ``recon-plugin --version``, ``--help``,
``protocols list``, ``mask``, and ``replay`` with a protocol whose property has a typo (the error is found
before any gadget starts). Run it on an otherwise idle machine: start-up is mostly imports and file reads.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "from recon_plugin.cli import main; main()"


def timed(args: list[str], repeats: int) -> tuple[float, float, int]:
    """(median seconds, fastest seconds, exit status of the last run)."""
    seconds, status = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, cwd=ROOT, check=False)
        seconds.append(time.perf_counter() - start)
        status = done.returncode
    return statistics.median(seconds), min(seconds), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as tmp:
        typo = Path(tmp) / "typo.xml"
        text = (ROOT / "protocols" / "rgancs_retro5x.xml").read_text()
        typo.write_text(text.replace('name="retro_acceleration"', 'name="retro_accleration"'))
        raw = str(ROOT / "sample_data" / "raw" / "brain2d_multislice.h5")
        commands = {
            "--version": ["--version"],
            "--help": ["--help"],
            "protocols list": ["protocols", "list"],
            "mask (64x32 radial)": ["mask", "--out", str(Path(tmp) / "m"), "--shape", "64", "32"],
            "replay, protocol typo": ["replay", raw, "--protocol", str(typo), "--out", str(Path(tmp) / "o.h5")],
        }
        print(f"| command | median s | fastest s | exit |  ({repeats} runs each)")
        print("|---|---|---|---|")
        for name, args in commands.items():
            median, fastest, status = timed(args, repeats)
            print(f"| `recon-plugin {name}` | {median:.2f} | {fastest:.2f} | {status} |")


if __name__ == "__main__":
    main()
