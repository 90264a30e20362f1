"""environment.yml and pyproject.toml list the same Python dependencies."""
import re
import tomllib
from pathlib import Path

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
