"""Driving the widgets in a real browser: JupyterLab on 127.0.0.1 and Debian's Chromium through Playwright.

Shared by the browser tests (``tests/test_browser.py``) and the round-trip measurement (``scripts/measure_rtt.py``).
Playwright drives the system Chromium (``executable_path``); ``playwright install`` is never needed.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SERVER_CONFIG = ROOT / "jupyter" / "jupyter_server_config.py"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic")


def chromium_path() -> str | None:
    """Debian's Chromium binary, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: its process, base URL, token, served folder and log file (``root/jupyterlab.log``)."""

    proc: subprocess.Popen
    url: str
    token: str
    root: Path
    log: Path

    def stop(self) -> str:
        """Terminate the server (kill after 10 s) and return its log."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log.read_text(errors="replace")


def start_lab(root: Path, notebook: str = "07_widgets.ipynb", nodelay: bool = True, token: str = "lmdm-test-token",
              timeout_s: float = 60.0) -> Lab:
    """Copy ``notebooks/NOTEBOOK`` into ``root`` and serve it with JupyterLab on 127.0.0.1 (``LMDM_FAST=1``).

    Args:
        nodelay: apply lmdm's server config (TCP_NODELAY on kernel websockets); False = jupyter_server's default.

    Raises:
        RuntimeError: the server did not answer within ``timeout_s`` (the message ends with its log).
    """
    root = Path(root)
    shutil.copy(ROOT / "notebooks" / notebook, root / notebook)
    port = free_port()
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
            "--allow-root", "--ServerApp.open_browser=False", "--LabApp.news_url=None"]
    if nodelay:
        args.append(f"--config={SERVER_CONFIG}")
    env = {**os.environ, "LMDM_FAST": "1", "JUPYTER_CONFIG_DIR": str(root / ".jupyter"),
           "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    log = root / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    lab = Lab(proc, f"http://127.0.0.1:{port}", token, root, log)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{lab.url}/api/status?token={token}", timeout=1)
            return lab
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("JupyterLab did not start: " + lab.stop()[-2000:])


def open_and_run(page, lab: Lab, notebook: str = "07_widgets.ipynb") -> None:
    """Open ``notebook`` in ``page`` (a Playwright page) and start running all its cells, without waiting for them
    (the command's promise resolves only when every cell has finished)."""
    page.goto(f"{lab.url}/lab/tree/{notebook}?token={lab.token}")
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000)
    # run only once the notebook's kernel is up: a run-all sent earlier can be lost on a slow start
    page.wait_for_function(f"() => ({KERNEL_STATUS}) === 'idle'", timeout=120_000)
    page.wait_for_timeout(500)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


KERNEL_STATUS = "window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status ?? 'no kernel'"


def notebook_state(page) -> str:
    """What the open notebook shows, for a failure message: kernel status, the execution prompts of its cells
    (``[*]`` = running or queued), any open dialog and the first error output."""
    return page.evaluate(f"""() => {{
        const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.innerText.trim());
        const dialog = document.querySelector('.jp-Dialog');
        const error = document.querySelector(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']");
        return `kernel: ${{{KERNEL_STATUS}}}; cells: ${{prompts.join(' ')}}` +
            (dialog ? `; dialog: ${{dialog.innerText.slice(0, 300)}}` : '') +
            (error ? `; first error: ${{error.innerText.slice(-1500)}}` : '');
    }}""")


def wait_rendered(page, lab: Lab, selector: str, timeout_ms: int) -> None:
    """Wait until ``selector`` is visible in ``page``.

    Raises:
        RuntimeError: not visible within ``timeout_ms``; the message gives :func:`notebook_state` and the end of the
            JupyterLab log (so a failure on a CI machine says why).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(selector, timeout=timeout_ms)
    except PlaywrightTimeout:
        raise RuntimeError(f"{selector} not rendered within {timeout_ms / 1000:.0f} s; {notebook_state(page)}; "
                           f"JupyterLab log ends: {lab.log.read_text(errors='replace')[-2000:]}") from None
