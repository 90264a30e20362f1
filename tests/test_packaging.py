"""Packaging: environment.yml and pyproject.toml list the same Python dependencies, CI runs the README's test
command, and a non-editable install works from outside the checkout (the widgets' JS/CSS are package data)."""
import os
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), spec.replace(" ", "")


def _env_pip() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "- pip:")
    out = []
    for l in lines[start + 1 :]:
        m = re.match(r"^\s{6,}-\s+(.+)$", l)
        if not m:
            break
        out.append(m.group(1).strip())
    return out


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = [r for r in _env_pip() if not r.startswith("-e")]
    assert sorted(map(_norm, deps)) == sorted(map(_norm, env))
    assert "-e ." in _env_pip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = ".venv/bin/python -m pytest"
    assert cmd in readme and cmd in ci
    assert "bash scripts/setup.sh" in readme and "bash scripts/setup.sh" in ci


_INSTALLED_CHECK = r"""
import json, sys
import torch
import lmdm, lmdm.widgets
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.checkpoint import Checkpoint
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.widgets import PromptPanel

model = DiT(DiTConfig(d_model=32, n_layers=2, n_heads=2, block_frames=4, window_chunks=2)).eval()
panel = PromptPanel(Checkpoint(model=model, codec=MelCodec(CodecConfig())))
print(json.dumps({"lmdm": lmdm.__file__, "class_esm": PromptPanel._esm, "esm": panel._esm, "css": panel._css}))
"""


def test_a_non_editable_install_ships_the_widgets_browser_half(tmp_path):
    """lmdm installed as a plain (non-editable) package, imported from outside the checkout: the widgets find their
    JS/CSS as package data (pyproject's [tool.setuptools.package-data])."""
    import json
    import shutil
    import subprocess
    import sys
    import sysconfig

    src = tmp_path / "src"  # build from a copy, so the build leaves nothing in the checkout (build/, egg-info)
    shutil.copytree(ROOT / "lmdm", src / "lmdm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--disable-pip-version-check", "--target", str(site), str(src)],
                   check=True, capture_output=True, text=True, timeout=600)
    shutil.rmtree(src)  # nothing of the source tree can be found any more
    assert sorted(p.name for p in (site / "lmdm" / "widgets" / "static").iterdir()) == sorted(
        p.name for p in (ROOT / "lmdm" / "widgets" / "static").iterdir())
    # -S: no site-packages processing, so the checkout's editable install (a .pth hook) cannot leak in; the venv's
    # site-packages come after the install only to provide the dependencies
    deps = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), deps])
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-S", "-c", _INSTALLED_CHECK], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["lmdm"]).resolve().is_relative_to(site.resolve()), got["lmdm"]
    js = (ROOT / "lmdm" / "widgets" / "static" / "prompt_panel.js").read_text(encoding="utf-8")
    player = (ROOT / "lmdm" / "widgets" / "static" / "audio_player.js").read_text(encoding="utf-8")
    for esm in (got["class_esm"], got["esm"]):
        assert js in esm and player in esm and "export default" in esm
    assert ".lmdm-widget" in got["css"]


def test_scripts_import_from_any_folder(tmp_path):
    """scripts/measure_rtt.py finds the browser-test driver (tests/support/lab.py) wherever it is started from."""
    import subprocess
    import sys

    code = ("import runpy, sys; m = runpy.run_path(sys.argv[1]); "
            "assert callable(m['measure']) and m['start_lab'].__module__ == 'tests.support.lab'")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "scripts" / "measure_rtt.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
