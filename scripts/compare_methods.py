#!/usr/bin/env python
"""Zero-filled, RGANCS, CS-Wavelet and CS-TV on the real multi-coil slices of the shared data at 5x.

    python scripts/compare_methods.py ../shared/data [--bundle DIR] [--iterations 300] [--out table.md]

Every method sees the same problems and the same ESPIRiT maps; the reference is the
fully sampled k-space combined with those maps. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recon_plugin.evaluation import compare, markdown_table, multicoil_cases
from recon_plugin.reconstructors import RGANCS, ZeroFilled
from recon_plugin.reconstructors.bart_cs import BartCS
from recon_plugin.sample_data import DEMO_BUNDLE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="shared data folder (with multicoil_kspace/)")
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE, help="RGANCS model bundle")
    parser.add_argument("--acceleration", type=float, default=5.0)
    parser.add_argument("--iterations", type=int, default=300, help="BART iterations")
    parser.add_argument("--workers", type=int, default=1, help="parallel BART processes (1 gives clean timings)")
    parser.add_argument("--out", type=Path, help="write the table (Markdown) and rows (JSON next to it)")
    args = parser.parse_args()
    cases = multicoil_cases(args.data, acceleration=args.acceleration)
    methods = [
        ZeroFilled(),
        RGANCS(args.bundle, device="cpu"),
        BartCS("wavelet", iterations=args.iterations, workers=args.workers, time_limit=600),
        BartCS("tv", iterations=args.iterations, workers=args.workers, time_limit=600),
    ]
    rows = compare(cases, methods)
    table = markdown_table(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
