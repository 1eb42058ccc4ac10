"""The evaluation tables of the README and docs are the ones rendered from docs/eval (no hand-copied figures)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from render_eval import fill  # noqa: E402

DOCUMENTS = ("README.md", "docs/model_study.md")


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_eval_block_renders_to_what_the_document_holds(tmp_path: Path, name: str) -> None:
    source = ROOT / name
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    markers = source.read_text().count("<!-- eval:")
    assert markers > 0
    # a block whose header the renderer cannot read (e.g. a label with parentheses) would silently keep old figures
    assert fill(copy, ROOT / "docs" / "eval", []) == markers
    assert copy.read_text() == source.read_text(), f"{name}: run python scripts/render_eval.py {name}"


def test_a_stale_table_is_found(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- eval:")
    row = text.index("| real brains", start)
    stale = tmp_path / "README.md"
    stale.write_text(text[:row] + text[row:].replace("/ 0.", "/ 9.", 1))
    fill(stale, ROOT / "docs" / "eval", [])
    assert stale.read_text() == text
