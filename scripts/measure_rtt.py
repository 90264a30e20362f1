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
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(nodelay: bool, seconds: float) -> float:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="lmdm-rtt-"))
    shutil.copy(ROOT / "notebooks" / "07_widgets.ipynb", root)
    port, token = free_port(), "rtt"
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
            "--allow-root"]
    if nodelay:
        args.append(f"--config={ROOT / 'jupyter' / 'jupyter_server_config.py'}")
    env = {**os.environ, "LMDM_FAST": "1", "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}
    lab = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=root)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic"])
            page = browser.new_page()
            page.goto(f"{url}/lab/tree/07_widgets.ipynb?token={token}")
            page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000)
            page.wait_for_timeout(1500)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            page.wait_for_selector(".lmdm-prompt-panel .lmdm-stats", timeout=120_000)
            page.wait_for_timeout(seconds * 1000)
            text = page.locator(".lmdm-prompt-panel .lmdm-stats").inner_text()
            browser.close()
        m = re.search(r"round trip ([0-9.]+) ms", text)
        return float(m.group(1)) if m else float("nan")
    finally:
        lab.terminate()
        lab.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=25.0, help="how long to collect pings per setting")
    args = ap.parse_args()
    result = {"nodelay_on_ms": measure(True, args.seconds), "nodelay_off_ms": measure(False, args.seconds)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
