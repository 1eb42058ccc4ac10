"""Screenshots of the review pages for the README (headless Chromium through Playwright).

    python scripts/screenshot_review.py --images OUT.h5 [--reader-png docs/images/review_reader.png]

``OUT.h5`` is a replay output with several methods, e.g. from
``recon-plugin replay sample_data/raw/brain3d_fully_sampled.h5 --protocol protocols/side_by_side.xml --out OUT.h5``.
One function per page.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from recon_plugin.review.app import reader_links, serve_in_background
from recon_plugin.review.study import create_study

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}


@contextlib.contextmanager
def browser_page() -> Iterator:
    """A Playwright page in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


def reader_page(images_h5: Path, out_png: Path) -> Path:
    """Build a throw-away study from ``images_h5``, open the reader page, give a partial answer, screenshot."""
    from playwright.sync_api import expect

    with tempfile.TemporaryDirectory() as tmp:
        study = create_study(Path(tmp) / "study", [images_h5], readers=["reader1"], slices_per_exam=8, seed=1)
        with serve_in_background(study.root) as base, browser_page() as page:
            page.goto(reader_links(study, base)["reader1"])
            expect(page.locator("#progress")).to_have_text("Item 1 of 24")
            page.keyboard.press("ArrowLeft")
            for key in "443":
                page.keyboard.press(key)
            expect(page.locator("#status")).to_have_text("Saved")
            out_png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out_png))
    return out_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="ISMRMRD image file with several methods")
    parser.add_argument("--reader-png", type=Path, default=Path("docs/images/review_reader.png"))
    args = parser.parse_args()
    print(reader_page(args.images, args.reader_png))


if __name__ == "__main__":
    main()
