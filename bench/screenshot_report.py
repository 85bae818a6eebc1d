"""Open an HTML report in headless Chromium, fail on any page or console error or any image that does not
decode, and save a full-page screenshot.

Needs Chromium (Debian: apt-get install chromium) and the playwright Python package (pip install playwright;
no browser download: the system Chromium is used). Run:

    python bench/screenshot_report.py out/robustness/report.html --out out/robustness/report.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def check_report(html: Path, png: Path, width_px: int = 1280) -> list[str]:
    """Problems found while loading ``html`` (empty list: none); writes the screenshot to ``png``."""
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": width_px, "height": 900})
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                if msg.type in ("error", "warning") else None)
        page.goto(html.resolve().as_uri(), wait_until="load")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        n_images = page.evaluate("document.images.length")
        if broken:
            problems.append(f"{broken} of {n_images} images did not decode")
        if not page.title():
            problems.append("no <title>")
        page.screenshot(path=str(png), full_page=True)
        browser.close()
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="screenshot PNG")
    args = parser.parse_args()
    problems = check_report(args.html, args.out)
    for problem in problems:
        print(problem)
    print(f"{args.html}: {'OK' if not problems else f'{len(problems)} problem(s)'}; screenshot {args.out}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
