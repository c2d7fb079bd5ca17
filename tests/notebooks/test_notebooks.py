"""The research notebooks: committed without outputs, free of logic of their own, and runnable headless.

CI runs every notebook in order with nbclient in tiny mode (``TAMSOAT_TINY=1``): 01 builds a demo site and
snapshot, 02 fine-tunes the shipped model on it for a few steps, 03 evaluates new vs current and registers
the candidate in the demo site. A failing cell fails the test.
"""

from __future__ import annotations

import ast
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from inference.manifest import version_key
from training.register import next_minor

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ORDER = ["01_explore_snapshot.ipynb", "02_retrain.ipynb", "03_evaluate_and_register.ipynb"]


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_three_notebooks_are_there() -> None:
    assert [p.name for p in _notebooks()] == ORDER


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for n, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {n} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {n} has an execution count"
        assert "attachments" not in cell or not cell.attachments, f"{path.name} cell {n} has attachments"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_has_parameters_and_no_logic_of_its_own(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "TINY = False" in params[0].source
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        defined = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda)]
        assert not defined, f"{path.name}: define functions in the package, not in the notebook"
        loops = [node for node in ast.walk(tree) if isinstance(node, ast.For | ast.While)]
        assert not loops, f"{path.name}: loops belong in package code"


@pytest.mark.slow
def test_notebooks_run_headless_in_tiny_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("TAMSOAT_TINY", "1")
    monkeypatch.setenv("TAMSOAT_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("MPLBACKEND", "agg")
    timings = {}
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        started = time.monotonic()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        timings[name] = round(time.monotonic() - started, 1)
    print("notebook wall times (s):", timings)
    site_models = tmp_path / "work" / "site" / "models" / "lung-nodule-phantom"
    repo_models = NOTEBOOKS.parent / "models" / "lung-nodule-phantom"
    shipped = sorted((p.name for p in repo_models.iterdir() if (p / "manifest.yaml").is_file()), key=version_key)
    registered = next_minor(shipped)
    assert sorted((p.name for p in site_models.iterdir()), key=version_key) == [*shipped, registered]
    manifest = yaml.safe_load((site_models / registered / "manifest.yaml").read_text())
    assert {"model.onnx", "model_card.md", "evaluation.json", "lineage.json"} == set(manifest["files"])
    assert not (repo_models / registered).exists()  # tiny mode never registers into the repository
    assert sum(timings.values()) < 600
