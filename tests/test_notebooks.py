"""The notebooks: generated .ipynb match their .py sources, carry Colab metadata and badges from
REPO_URL, and every notebook runs top to bottom in smoke mode on the CPU."""
import json
import os
import re
import sys
from pathlib import Path

import pytest

import detr_nb
from detr_nb import nbtools

SOURCES = nbtools.sources()
IDS = [p.stem for p in SOURCES]


def test_there_are_notebooks():
    assert len(SOURCES) >= 1, "no notebooks/NN_name.py sources found"


def test_generated_files_in_sync():
    assert nbtools.check() == []


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_ipynb_has_no_outputs_and_colab_metadata(py):
    nb = json.loads(py.with_suffix(".ipynb").read_text())
    assert nb["metadata"]["accelerator"] == "GPU"
    assert nb["metadata"]["colab"]["gpuType"] == "T4"
    assert "widgets" not in nb["metadata"]
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_notebook_opening_cells(py):
    """Title + badge, a Colab-only install cell, and the SMOKE parameters cell."""
    nb = nbtools.build_notebook(py)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert nbtools.badge_markdown(py.with_suffix(".ipynb").name) in first.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup = code[0].source
    assert '"google.colab" in sys.modules' in setup
    assert nbtools.install_line() in setup
    assert "torch" not in setup.split(nbtools.install_line())[1].split("\n")[0]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    assert 'SMOKE = os.environ.get("DETR_NB_SMOKE") == "1"' in params[0].source


def test_readme_badges_point_to_existing_notebooks():
    text = nbtools.README.read_text()
    links = re.findall(r"\(https://colab\.research\.google\.com/github/([^)]+)\)", text)
    assert len(links) == len(SOURCES)
    prefix = f"{nbtools.repo_slug()}/blob/{detr_nb.REPO_BRANCH}/notebooks/"
    for link in links:
        assert link.startswith(prefix), link
        assert (nbtools.NOTEBOOK_DIR / link[len(prefix):]).exists(), link


@pytest.mark.notebook
@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_notebook_runs_in_smoke_mode(py, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("DETR_NB_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(nbtools.ROOT), os.environ.get("PYTHONPATH", "")]))
    # Notebook side effects (data, runs, figures) go to a temporary directory.
    monkeypatch.setenv("DETR_NB_WORKDIR", str(tmp_path))
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    # A cell that raises fails at once. A kernel that stops answering (seen once on a loaded machine:
    # kernel idle, client still waiting) gets one fresh kernel before the test fails.
    for attempt in (1, 2):
        nb = nbtools.build_notebook(py)
        client = NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(nbtools.NOTEBOOK_DIR)}})
        try:
            client.execute()
            return
        except (CellTimeoutError, DeadKernelError, TimeoutError):
            if attempt == 2:
                raise
