"""Execute every notebook in notebooks/ at the small size and fail on any cell error.

Each notebook runs in a fresh kernel of this interpreter (the "python3" kernel: jupyter_client
starts it with sys.executable), with its working directory set to notebooks/ as Jupyter does,
SPECBENCH_NOTEBOOK_SIZE=small (the notebooks shrink their work on it) and
SPECBENCH_NOTEBOOK_RESULTS pointing at a temporary folder, so no results/ folder of an earlier run
is reused or written, and this checkout first on PYTHONPATH, so the kernels import the package under
test even where the installed one is another checkout's (a git worktree). The committed notebooks keep the outputs of their full-size run: the
executed copies here are thrown away.

Budget: 01_quickstart takes about a minute on 2 CPU cores (the model load is ~25 s of it when the
weights cache is cold); each of 02-09 runs 1-2 questions x 8-12 tokens and takes 25-40 s, most of it the
kernel start, imports, model load and warm-up.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300

# Run first in the kernel: a kernelspec that resolves to another Python (one in the user's Jupyter
# folder, say) would otherwise fail later with a confusing ImportError, or test another install.
KERNEL_CHECK = (
    "import sys\n"
    f"assert sys.prefix == {sys.prefix!r}, (\n"
    f"    f'the python3 kernel runs {{sys.executable}} (prefix {{sys.prefix}}), not the tests\\' interpreter '\n"
    f"    {sys.executable!r} + ': remove the python3 kernelspec that shadows it (jupyter kernelspec list)')"
)


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("SPECBENCH_NOTEBOOK_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as e:
        # the message holds the failing cell's source and traceback; cell numbers count the check cell
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))   # IPython's traceback colours
        pytest.fail(f"{path.name}: a cell failed at SPECBENCH_NOTEBOOK_SIZE=small:\n{message}", pytrace=False)
