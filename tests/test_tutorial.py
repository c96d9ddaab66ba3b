"""docs/tutorial.ipynb: committed with the outputs of a full run, and executes end to end (with
its small settings, STLIGHT_TUTORIAL_FAST=1) without a cell error."""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "docs", "tutorial.ipynb")


def _notebook():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_with_outputs():
    nb = _notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "run every cell before committing"
    for i, cell in enumerate(code):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"code cell {i} was committed with an error: {errors[0]['ename']}"
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images >= 3, "the forecast, rollout and lead-time figures"


@pytest.mark.slow
def test_executes_without_errors(monkeypatch, tmp_path):
    from nbclient import NotebookClient

    nb = _notebook()
    monkeypatch.setenv("STLIGHT_TUTORIAL_FAST", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", REPO)  # the checkout, installed or not
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
