"""The reader page in headless Chromium: score three pairs with keyboard and mouse, reload, resume, screenshot."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from review_helpers import write_exam

from recon_plugin.review.app import reader_links, serve_in_background
from recon_plugin.review.study import DB_FILE, create_study

CHROMIUM = Path("/usr/bin/chromium")
SCORE_FIELDS = [f"{side}_{c}" for side in ("left", "right") for c in ("quality", "artefacts", "blurring")]


def _playwright():
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        reason = "the playwright Python package is not installed"
    else:
        if CHROMIUM.exists():
            return sync_playwright, expect
        reason = f"Chromium is not installed at {CHROMIUM}"
    print(f"skipping the browser test: {reason}")
    pytest.skip(reason)


def stored(study_dir: Path) -> dict[str, dict]:
    with sqlite3.connect(study_dir / DB_FILE) as conn:
        conn.row_factory = sqlite3.Row
        return {row["item"]: dict(row) for row in conn.execute("SELECT * FROM answers WHERE reader = ?", ("ann",))}


def test_score_three_pairs_reload_and_resume(tmp_path):
    sync_playwright, expect = _playwright()
    exam = write_exam(tmp_path / "exam.h5", slices=2, shape=(48, 40))
    study = create_study(tmp_path / "study", [exam], readers=["ann"], seed=9)
    order = study.data["readers"]["ann"]["order"]
    with serve_in_background(tmp_path / "study") as base, sync_playwright() as pw:
        link = reader_links(study, base)["ann"]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(link)
            progress, status = page.locator("#progress"), page.locator("#status")

            def saved() -> None:  # "Saved" only once every queued save has been answered
                expect(status).to_have_text("Saved")

            def at(n: int) -> None:
                expect(progress).to_have_text(f"Item {n} of 6")

            at(1)

            # pair 1, keyboard only: left better, then six scores into the highlighted boxes
            page.keyboard.press("ArrowLeft")
            for key in "435234":
                page.keyboard.press(key)
            saved()
            expect(page.locator("#answered")).to_have_text("1 of 6 answered")
            page.keyboard.press("n")
            at(2)

            # pair 2, mouse only: right better, scores by clicking, zoom with the wheel, pan by dragging
            page.click("#preference button[data-pref=right]")
            for field, score in zip(SCORE_FIELDS, (2, 3, 2, 5, 4, 5), strict=True):
                side, criterion = field.split("_")
                page.click(f"#rubric-{side} button[data-criterion={criterion}][data-score='{score}']")
            saved()
            box = page.locator("#canvas-left").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, -400)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 + 30, box["y"] + box["height"] / 2 + 10)
            page.mouse.up()
            zoom, pan_x, _ = (float(v) for v in page.locator("#canvas-left").get_attribute("data-view").split())
            assert zoom > 1.5 and pan_x != 0
            expect(page.locator("#canvas-right")).to_have_attribute(  # both images zoomed and panned alike
                "data-view", page.locator("#canvas-left").get_attribute("data-view")
            )
            page.click("#next")
            at(3)

            # pair 3, both: "no difference" by mouse, scores by keyboard, a correction with Backspace, Enter
            page.click("#preference button[data-pref=none]")
            for key in ("3", "3", "3", "3", "1", "Backspace", "3", "3"):
                page.keyboard.press(key)
            saved()
            page.keyboard.press("Enter")
            at(4)

            rows = stored(tmp_path / "study")
            assert set(rows) == set(order[:3])
            assert rows[order[0]]["preference"] == "left"
            assert [rows[order[0]][f] for f in SCORE_FIELDS] == [4, 3, 5, 2, 3, 4]
            assert rows[order[1]]["preference"] == "right"
            assert [rows[order[1]][f] for f in SCORE_FIELDS] == [2, 3, 2, 5, 4, 5]
            assert rows[order[2]]["preference"] == "none"
            assert [rows[order[2]][f] for f in SCORE_FIELDS] == [3, 3, 3, 3, 3, 3]

            page.reload()
            at(4)
            expect(page.locator("#answered")).to_have_text("3 of 6 answered")
            page.keyboard.press("p")  # the saved answer is shown again
            at(3)
            expect(page.locator("#preference button[data-pref=none]")).to_have_class("selected")
            assert len(stored(tmp_path / "study")) == 3  # looking back writes nothing

            shot = tmp_path / "reader.png"
            page.screenshot(path=str(shot))
            canvas = page.locator("#canvas-right").bounding_box()
        finally:
            browser.close()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10
    x, y, w, h = (int(canvas[k]) for k in ("x", "y", "width", "height"))
    assert pixels[y : y + h, x : x + w].std() > 10  # the image itself was drawn, not a black canvas
