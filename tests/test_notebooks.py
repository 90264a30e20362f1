"""Every notebook of the series checks itself inline (asserts, karpathy style), is committed without outputs, and
runs top to bottom in its FAST setting (LMDM_FAST=1)."""
import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_series_exists():
    names = [p.stem for p in NOTEBOOKS]
    assert "01_outpainting_inefficiency" in names and "02_kv_caching" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_checks_itself(path):
    """At least one ``assert`` statement in a code cell: a notebook whose checks only print fails here."""
    nb = nbformat.read(path, as_version=4)
    asserts = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as e:
            pytest.fail(f"{path.name}, cell {i}: not plain Python ({e})")
        asserts += sum(isinstance(node, ast.Assert) for node in ast.walk(tree))
    assert asserts >= 1, f"{path.name} has no assert statement: its checks must fail when a claim is false"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts (clear them before committing)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_fast_mode(path, monkeypatch, tmp_path):
    monkeypatch.setenv("LMDM_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[1].metadata.get("tags") == ["parameters"], "the first code cell is the parameter cell"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell, a failed assert included
    errors = [o for c in code_cells(nb) for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
