"""Render the evaluation JSON of ``scripts/eval_suite.py`` into Markdown tables, and put them into documents.

Usage::

    python scripts/render_eval.py [--eval docs/eval] [--columns default=LABEL,previous=LABEL ...] [FILE.md ...]

Every ``<!-- eval:TABLE[:METRIC] [group=Label,...] -->`` ... ``<!-- /eval -->`` block of the given files is replaced
by table TABLE (METRIC ``quality``, the default, ``sharpness`` or ``seconds`` per slice; the block's own columns or
``--columns``), so no figure in the documents is copied by hand. Tables: ``main`` (the Done-means sets), ``loraks``
(the R=7 masks), ``adapt`` (the multi-coil sets, for scan-specific adaptation), ``exam`` (the SIAT sets, whose
slices come in scans of 10: adaptation per slice against per exam), ``coils`` (per simulated coil count), ``sizes``
(per matrix size). Columns: zero-filled, CS-WV, CS-TV, then one per method group (JSON files
``SET.GROUP.json``) in ``--columns`` order, and the first group's margin over CS-WV. Without arguments the tables
are printed.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

TABLES = {
    "main": [
        ("real_radial5", "real brains (3: 8ch, 4ch, 4ch MPRAGE), radial 5x"),
        ("real_uniform3", "real brains, uniform R=3 + 24 ACS"),
        ("new_radial5", "new real brains (8ch, 4ch MPRAGE), radial 5x"),
        ("new_uniform3", "new real brains, uniform R=3 + 24 ACS"),
        ("siat8_radial5", "SIAT 140-159, 8 simulated coils, radial 5x"),
        ("siat1_radial5", "SIAT 140-159, 1 coil, radial 5x"),
    ],
    "loraks": [
        ("loraks_randacs7", "4ch MPRAGE, the authors' R=7 random + ACS"),
        ("loraks_unacs7", "4ch MPRAGE, R=7 uniform + ACS"),
        ("loraks_pfacs7", "4ch MPRAGE, R=7 partial Fourier + ACS"),
    ],
    "coils": [(f"coils{c}", f"{c} coil{'s' if c > 1 else ''}") for c in (1, 4, 8, 16, 32)],
    "sizes": [
        ("size96", "96x96 (crop)"),
        ("size128x192", "128x192 (crop)"),
        ("coils8", "256x256"),
        ("size384", "384x384 (k-space zero-padded)"),
    ],
}
# the multi-coil Done-means sets, for scan-specific adaptation against the plain default
TABLES["adapt"] = TABLES["main"][:4] + TABLES["loraks"] + [TABLES["main"][4]]
# the sets made of whole scans (two of 10 slices each), for one adapted copy per exam against one per slice
TABLES["exam"] = TABLES["main"][4:6]
BASELINES = (("zero_filled", "zero-filled"), ("cs_wavelet", "CS-WV"), ("cs_tv", "CS-TV"))


def _means(path: Path) -> dict[str, dict[str, float]]:
    if not path.is_file():
        return {}
    return {m["method"]: m for m in json.loads(path.read_text())["means"]}


def _cell(mean: dict[str, float] | None, metric: str = "quality") -> str:
    if mean is None or (metric in ("sharpness", "seconds") and metric not in mean):
        return "n/a"
    if metric == "seconds":
        return f"{mean['seconds']:.1f} s"
    return f"{mean['sharpness']:.3f}" if metric == "sharpness" else f"{mean['snr_db']:.2f} / {mean['ssim']:.3f}"


def render(table: str, folder: Path, columns: list[tuple[str, str]], metric: str = "quality") -> str:
    """Table ``table`` as Markdown: SNR dB / SSIM and the first column group's SNR minus CS-WV's (``quality``), the
    relative sharpness (``sharpness``: edge energy over the reference's, 1 = as sharp) or the mean seconds per slice
    (``seconds``, as ``recon-train eval`` measured them)."""
    head = ["data", *(label for _, label in BASELINES), *(label for _, label in columns)]
    if columns and metric == "quality":
        head.append(f"{columns[0][1]} vs CS-WV")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in TABLES[table]:
        base = _means(folder / f"{key}.baselines.json")
        groups = [_means(folder / f"{key}.{group}.json").get("rgancs") for group, _ in columns]
        row = [label, *(_cell(base.get(m), metric) for m, _ in BASELINES), *(_cell(g, metric) for g in groups)]
        if columns and metric == "quality":
            wv, first = base.get("cs_wavelet"), groups[0]
            row.append("n/a" if wv is None or first is None else f"{first['snr_db'] - wv['snr_db']:+.2f} dB")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


_BLOCK = re.compile(r"(<!-- eval:(\w+)(?::(\w+))?(?: ([\w=,. ();-]+))? -->\n).*?(<!-- /eval -->)", re.S)


def fill(path: Path, folder: Path, columns: list[tuple[str, str]]) -> int:
    """Replace every eval block of ``path``; returns how many were replaced."""
    text = path.read_text()
    count = 0

    def sub(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        cols = columns
        if match.group(4):  # the block's own columns: <!-- eval:TABLE:METRIC group=Label,group=Label -->
            cols = [tuple(c.split("=", 1)) for c in match.group(4).split(",")]  # type: ignore[misc]
        table = render(match.group(2), folder, cols, match.group(3) or "quality")
        return f"{match.group(1)}{table}\n{match.group(5)}"

    path.write_text(_BLOCK.sub(sub, text))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=Path, default=Path("docs/eval"))
    parser.add_argument("--columns", default="default=RGANCS default")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    columns = [tuple(c.split("=", 1)) for c in args.columns.split(",") if c]
    if not args.files:
        for table in TABLES:
            print(f"## {table}\n\n{render(table, args.eval, columns)}\n")  # type: ignore[arg-type]
    for path in args.files:
        print(f"{path}: {fill(path, args.eval, columns)} table(s)")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
