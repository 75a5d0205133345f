"""docs/build_a_gpt.ipynb runs top to bottom (at toy size) and is stored clean.

Each of the notebook's stages ends with asserts against the package (its
attention equals model.CausalSelfAttention's output, its GPT the package's
logits and parameter count, its BPE trainer the package's merges, ...), so
running it is what checks that the notebook and the package agree.
"""

import os

import pytest

from conftest import ROOT, needs_shakespeare

NOTEBOOK = os.path.join(ROOT, "docs", "build_a_gpt.ipynb")


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "strip the outputs before committing (Jupyter: Edit > Clear all outputs)")


@needs_shakespeare
def test_notebook_runs_top_to_bottom_at_toy_size(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("NOTEBOOK_SMALL", "1")  # The kernel inherits the environment.
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()  # Raises CellExecutionError, with the cell and traceback, on failure.
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs)
    for stage in ("attention matches", "block matches", "GPT matches", "the cache gives"):
        assert stage in printed, f"the notebook did not reach {stage!r}:\n{printed[-2000:]}"
