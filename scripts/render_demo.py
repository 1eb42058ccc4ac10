"""Put the demo's measured figures into README.md: ``python scripts/render_demo.py [--out demo_output] [README.md]``.

Reads ``OUT/demo.json`` (part 1, per slice and method) and ``OUT/brain3d_side_by_side.json`` (part 2, the replay
summary) written by ``recon-plugin demo``, and replaces the ``<!-- demo -->`` ... ``<!-- /demo -->`` block.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

ORDER = ("zero_filled", "rgancs", "cs_wavelet", "cs_tv")
PART1 = "part 1: Colin27, single coil, 208x176, 4 held-out slices, radial 5x"
PART2 = "part 2: Colin27 3D, 4 coils with correlated noise, 32 planes of 80x40, radial 5x"


def table(out: Path) -> str:
    """The demo table (SNR dB / SSIM means) from the demo's JSON files."""
    rows = json.loads((out / "demo.json").read_text())["rows"]
    part1 = {}
    for method in ORDER:
        sel = [r for r in rows if r["method"] == method]
        if sel:
            part1[method] = (np.mean([r["snr_db"] for r in sel]), np.mean([r["ssim"] for r in sel]))
    series = json.loads((out / "brain3d_side_by_side.json").read_text())["series"]
    part2 = {s["method"]: (s["snr_db"], s["ssim"]) for s in series if s["snr_db"] is not None}
    lines = ["| data | zero-filled | RGANCS | CS-WV | CS-TV |", "|---|---|---|---|---|"]
    for label, part in ((PART1, part1), (PART2, part2)):
        cells = [f"{part[m][0]:.2f} / {part[m][1]:.3f}" if m in part else "n/a" for m in ORDER]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("readme", nargs="?", type=Path, default=Path("README.md"))
    args = parser.parse_args()
    text = args.readme.read_text()
    block = re.compile(r"(<!-- demo -->\n).*?(<!-- /demo -->)", re.S)
    if not block.search(text):
        raise SystemExit(f"{args.readme} has no <!-- demo --> block")
    args.readme.write_text(block.sub(lambda m: f"{m.group(1)}{table(args.out)}\n{m.group(2)}", text))
    print(f"{args.readme}: demo table from {args.out}")


if __name__ == "__main__":
    main()
