"""Measure the kernel websocket round trip of a widget message with and without TCP_NODELAY.

Starts JupyterLab twice on 127.0.0.1 (once with lmdm's server config, which turns TCP_NODELAY on for kernel
websockets, once without), opens notebooks/07_widgets.ipynb in Debian's Chromium through Playwright, runs it,
and reads the median ping round trip the prompt panel shows (every second two pings sent back to back, the
second answer timed, as streamed messages would be; median of the last 21 pairs).

    .venv/bin/python scripts/measure_rtt.py [--seconds 25]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: tests/ is not installed
from tests.support.lab import CHROMIUM_ARGS, chromium_path, open_and_run, start_lab, wait_rendered


def measure(nodelay: bool, seconds: float) -> float:
    """Median round trip (ms) the prompt panel shows after ``seconds`` of pings; NaN if it shows none."""
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="lmdm-rtt-"))
    lab = start_lab(root, nodelay=nodelay, token="rtt")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=list(CHROMIUM_ARGS))
            page = browser.new_page()
            open_and_run(page, lab)
            wait_rendered(page, lab, ".lmdm-prompt-panel .lmdm-stats", 120_000)
            page.wait_for_timeout(seconds * 1000)
            text = page.locator(".lmdm-prompt-panel .lmdm-stats").inner_text()
            browser.close()
        m = re.search(r"round trip ([0-9.]+) ms", text)
        return float(m.group(1)) if m else float("nan")
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=25.0, help="how long to collect pings per setting")
    args = ap.parse_args()
    result = {"nodelay_on_ms": measure(True, args.seconds), "nodelay_off_ms": measure(False, args.seconds)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
