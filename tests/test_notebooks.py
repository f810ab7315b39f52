"""The notebooks in ``notebooks/`` run top to bottom against real instances (nbclient).

Each runs in a fresh Python kernel, in its own folder, with a registry of the test's own
(``INSTANCELIB_HOME``); their image is built once from ``notebooks/services.def``
(``Bootstrap: debootstrap``) and cached by ``build_cached`` between runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from instancelib import InstanceRegistry
from instancelib.linux.userns import has_host_root
from tests.helpers import instance_processes

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
ROOT_ONLY = pytest.mark.skipif(not has_host_root(), reason="the notebooks' image is built "
                               "with Bootstrap: debootstrap, which needs root (the root pass "
                               "runs them)")


def _outputs(notebook) -> list[dict]:
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs]


def _shown(notebook, kind: str) -> str:
    return "\n".join(str(output.get("data", {}).get(kind, ""))
                     for output in _outputs(notebook))


def test_there_are_three_notebooks_kept_without_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01-quickstart.ipynb", "02-redis-analysis.ipynb",
                                           "03-parameter-sweep.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert _outputs(notebook) == [], f"{path.name}: outputs committed"
        assert all(c.get("execution_count") is None for c in notebook.cells
                   if c.cell_type == "code"), f"{path.name}: execution counts committed"


@ROOT_ONLY
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_runs(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient  # noqa: PLC0415 (the root pass only)

    home = tmp_path / "home"
    monkeypatch.setenv("INSTANCELIB_HOME", str(home))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    before = instance_processes()
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(FOLDER)}}).execute()
    errors = [o for o in _outputs(notebook) if o.get("output_type") == "error"]
    assert errors == []
    html, plots = _shown(notebook, "text/html"), _shown(notebook, "image/png")
    assert plots, "no figure was drawn"
    if path.stem.startswith("01"):
        assert "Instance nb-web" in html and "Stats of nb-web" in html and " MiB" in html
        assert "Image metadata" in html and "Instances in " in html
    elif path.stem.startswith("02"):
        assert "<table" in html and "north" in html  # the DataFrames
        assert "Stats of nb-redis" in html
    else:
        assert all(label in html for label in ("0.25 CPU", "0.5 CPU", "1 CPU",
                                               "CPU 999 (wrong on purpose)"))
        assert "the kernel refused" in html  # the wrong configuration's error, in the table
        assert "sweep-2" in html and "Instances (0)" in html
    assert InstanceRegistry(home).list() == []
    assert instance_processes() - before == set()
    assert os.environ["INSTANCELIB_HOME"] == str(home)
