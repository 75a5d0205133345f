"""docs/build_a_gpt.ipynb runs top to bottom (at toy size), and is stored with
the outputs of one full run of its current cells.

Each of the notebook's stages ends with asserts against the package (its
attention equals model.CausalSelfAttention's output, its GPT the package's
logits and parameter count, its BPE trainer the package's merges, ...), so
running it is what checks that the notebook and the package agree.
"""

import json
import os
import re

import pytest

from conftest import ROOT, load_file, needs_shakespeare

NOTEBOOK = os.path.join(ROOT, "docs", "build_a_gpt.ipynb")
# What a run prints once it has passed each stage's checks.
STAGES = ("attention matches", "block matches", "GPT matches", "greedy (temperature 0)",
          "the cache gives", "the cache is")


def _printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)


def test_notebook_is_stored_with_the_outputs_of_its_cells():
    """The saved outputs are those of docs/make_pictures.py --what=notebook:
    one run, top to bottom, of the cells as they are now, small enough to
    read on GitHub."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        "the outputs are not those of one run top to bottom")
    sha = load_file("docs/make_pictures.py", "make_pictures").source_sha256
    changed = [c.source.splitlines()[0] for c in code if c.metadata.get("source_sha256") != sha(c.source)]
    assert not changed, ("cells changed since their outputs were made (run python "
                         f"docs/make_pictures.py --what=notebook): {changed}")
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, "the plots are missing"
    assert os.path.getsize(NOTEBOOK) < 300_000, "keep the saved outputs small"
    for stage in STAGES:
        assert stage in _printed(nb), f"the saved outputs do not reach {stage!r}"


def test_numbers_in_the_text_are_those_of_the_saved_outputs():
    """Each number the markdown quotes (x.yz) is, to its rounding, one the
    saved outputs print, or char_cpu's final validation loss (its run
    drew docs/images/curves.png)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    number = r"\d+\.\d+"
    printed = [float(x) for x in re.findall(number, _printed(nb))]
    with open(os.path.join(ROOT, "docs", "images", "curves.json"), encoding="utf-8") as f:
        printed.append(json.load(f)["facts"]["val_loss"][-1])
    text = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    quoted = re.findall(number, text)
    assert quoted
    unmeasured = [q for q in quoted
                  if not any(abs(float(q) - x) <= 0.5001 * 10.0 ** -len(q.split(".")[1])
                             for x in printed)]
    assert not unmeasured, f"numbers the outputs do not print: {unmeasured}"


@needs_shakespeare
def test_notebook_runs_top_to_bottom_at_toy_size(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("NOTEBOOK_SMALL", "1")  # The kernel inherits the environment.
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()  # Raises CellExecutionError, with the cell and traceback, on failure.
    printed = _printed(nb)
    for stage in STAGES:
        assert stage in printed, f"the notebook did not reach {stage!r}:\n{printed[-2000:]}"
