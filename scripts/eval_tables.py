"""Merge `recon-train eval --json` files of one evaluation into a Markdown table (for model cards and docs).

Usage: python scripts/eval_tables.py TITLE FILE.json [FILE.json ...] [--label method=LABEL ...]

Rows are the methods of all files, in order; the table says whether every file used the same masks (the
per-slice mask digests of `recon-train eval`), the achieved acceleration, and per-slice SNR for up to 6 slices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"zero_filled": "zero-filled", "cs_wavelet": "BART CS-WV", "cs_tv": "BART CS-TV", "rgancs": "RGANCS"}


def table(title: str, files: list[Path], labels: dict[str, str]) -> str:
    """One Markdown section: the mean and per-slice figures of every method in ``files``."""
    reports = [json.loads(f.read_text()) for f in files]
    digests = [
        tuple(r.get("mask", "") for r in rep["rows"] if r["method"] == rep["rows"][0]["method"]) for rep in reports
    ]
    same = len(set(digests)) == 1
    achieved = reports[0]["settings"].get("acceleration_achieved", float("nan"))
    lines = [
        f"### {title}  (masks identical across runs: {same}; achieved R {achieved:.2f})",
        "| method | mean SNR dB | mean SSIM | s/slice | per slice SNR |",
        "|---|---|---|---|---|",
    ]
    for rep in reports:
        for mean in rep["means"]:
            method = mean["method"]
            slices = [r["snr_db"] for r in rep["rows"] if r["method"] == method]
            per = " / ".join(f"{s:.2f}" for s in slices) if len(slices) <= 6 else ""
            name = labels.get(method, NAMES.get(method, method))
            lines.append(f"| {name} | {mean['snr_db']:.2f} | {mean['ssim']:.3f} | {mean['seconds']:.2f} | {per} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("title")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], help="method=LABEL")
    args = parser.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)
    print(table(args.title, args.files, labels))


if __name__ == "__main__":
    main()
