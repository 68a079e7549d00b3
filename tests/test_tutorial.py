"""docs/tutorials/dimcl_in_your_loop.ipynb: it runs cell by cell without an error (here on the tiny Fashion-MNIST
files), and the outputs it is committed with, which the docs site shows, are those of its current cells."""

import importlib.util
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_tutorial", REPO / "tools" / "run_tutorial.py")
run_tutorial = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_tutorial)


def _errors(notebook) -> list[str]:
    return [f"{output.ename}: {output.evalue}" for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == "error"]


def test_the_committed_outputs_are_those_of_the_current_cells():
    notebook = nbformat.read(run_tutorial.NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        "the notebook was not run top to bottom in one go: run `make tutorial`"
    assert not _errors(notebook)
    assert notebook.metadata.get("dimcl", {}).get("sources_sha256") == run_tutorial.sources_digest(notebook), \
        "the notebook's cells changed since its outputs were made: run `make tutorial` and commit it"
    assert any("image/png" in output.get("data", {}) for cell in code for output in cell.outputs), "no inline plot"


def test_the_tutorial_runs_cell_by_cell(tiny_fashion_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("DIMCL_TUTORIAL_DATA", str(tiny_fashion_mnist))
    monkeypatch.setenv("DIMCL_TUTORIAL_IMAGES", "96")  # all of the tiny training split
    monkeypatch.setenv("DIMCL_TUTORIAL_OUT", str(tmp_path))
    notebook = nbformat.read(run_tutorial.NOTEBOOK, as_version=4)
    # a cell that raises stops the run here with its traceback (CellExecutionError)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert not _errors(notebook)
    assert (tmp_path / "simclr_dimcl" / "diversity.json").is_file()
