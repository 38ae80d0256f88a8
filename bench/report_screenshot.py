"""Render a report's HTML page in headless Chromium and take a screenshot of it.

    python bench/report_screenshot.py RESULTS [-o DIR] [--window 1400,2000] [--json]

Writes the report (html) for RESULTS into DIR (default: a temporary folder), asks Chromium
for the page's DOM and a screenshot, and checks: Chromium exits 0, the DOM holds every table
and every embedded figure of the page, nothing outside the file is requested, and the
screenshot is not blank. Prints the figures; with --json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from matplotlib.image import imread

from experiments.report.write import write_report

GOAL = (
    "report.html renders offline in headless Chromium: exit 0, every table and figure in the "
    "DOM, no external request, a non-blank screenshot"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str | None:
    """Debian's Chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(
    binary: str, page: Path, profile: Path, extra: list[str]
) -> subprocess.CompletedProcess:
    """One headless Chromium run on a local file with a private profile folder."""
    command = [binary, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def screenshot(page: Path, png: Path, window: str = "1400,2000") -> dict:
    """Render `page`, save a screenshot to `png`, and report what was checked."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    source = page.read_text()
    with tempfile.TemporaryDirectory(prefix="wanlab-chromium-") as profile:
        started = time.perf_counter()
        dom = run_chromium(binary, page, Path(profile) / "dom", ["--dump-dom"])
        shot = run_chromium(
            binary,
            page,
            Path(profile) / "shot",
            [f"--screenshot={png.resolve()}", f"--window-size={window}"],
        )
        seconds = time.perf_counter() - started
    tables = source.count("<table>")
    images = source.count('src="data:image/png;base64,')
    pixels = imread(png) if png.is_file() else None
    spread = float(pixels[..., :3].std()) if pixels is not None else 0.0
    external = re.findall(r'(?:src|href)="(?!data:)([^"#]+)"', source)
    return {
        "chromium_exit": [dom.returncode, shot.returncode],
        "dom_tables": dom.stdout.count("<table>"),
        "page_tables": tables,
        "dom_images": dom.stdout.count("data:image/png;base64,"),
        "page_images": images,
        "external_references": external,
        "screenshot": str(png),
        "screenshot_bytes": png.stat().st_size if png.is_file() else 0,
        "screenshot_pixel_std": round(spread, 4),
        "render_s": round(seconds, 2),
    }


def met(figures: dict) -> bool:
    """Whether the render meets the goal."""
    return (
        figures["chromium_exit"] == [0, 0]
        and figures["dom_tables"] == figures["page_tables"] > 0
        and figures["dom_images"] == figures["page_images"] > 0
        and not figures["external_references"]
        and figures["screenshot_pixel_std"] > 0.01
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder")
    parser.add_argument("-o", "--out", type=Path, help="report folder (default: temporary)")
    parser.add_argument("--window", default="1400,2000", help="screenshot size WIDTH,HEIGHT")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="wanlab-report-"))
    started = time.perf_counter()
    written = write_report(args.results, out, {"html"})
    report_s = time.perf_counter() - started
    figures = screenshot(written["html"], out / "report-screenshot.png", args.window)
    result = {"bench": "report_screenshot", "goal": GOAL, "met": met(figures)}
    result |= {"report_s": round(report_s, 2), "html_bytes": written["html"].stat().st_size}
    result |= figures
    for key, value in result.items():
        print(f"{key:22} {value}")
    if args.json:
        print(json.dumps(result))
    sys.exit(0 if result["met"] else 1)


if __name__ == "__main__":
    main()
