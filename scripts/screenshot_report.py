"""Screenshot of the static review report (the README's docs/images/review_report.png).

    python scripts/screenshot_report.py OUT.h5 docs/images/review_report.png [--max-slices 6]

Writes the report into a temporary folder, opens it from file:// in headless Chromium (Playwright) and
saves a full-page PNG. Set CHROMIUM to use a system Chromium instead of Playwright's own browser.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from recon_plugin.review.report import write_report


def screenshot_report(h5: Path, out_png: Path, *, max_slices: int = 6, width: int = 1400) -> Path:
    """Render the report of ``h5`` (at most ``max_slices`` rows) and save a full-page screenshot to ``out_png``."""
    from playwright.sync_api import sync_playwright

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page_path = write_report([Path(h5)], Path(tmp) / "report.html", max_slices=max_slices)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=os.environ.get("CHROMIUM") or None, args=["--headless", "--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(page_path.resolve().as_uri())
                page.wait_for_load_state("load")
                page.screenshot(path=str(out_png), full_page=True)
            finally:
                browser.close()
    return out_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h5", type=Path, help="ISMRMRD image file from `recon-plugin replay`")
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--max-slices", type=int, default=6)
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels")
    args = parser.parse_args()
    print(screenshot_report(args.h5, args.out_png, max_slices=args.max_slices, width=args.width))


if __name__ == "__main__":
    main()
