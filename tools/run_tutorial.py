"""Run the tutorial notebook in place, cell by cell, on the real Fashion-MNIST: ``make tutorial``.

Its outputs (the figures the docs site shows) are then those of its current cells; the notebook's metadata
keeps a digest of those cells (``sources_digest``), which tests/test_tutorial.py compares with the cells as
committed, so an edited cell without a rerun fails the tests. Environment variables of the notebook
(``DIMCL_TUTORIAL_DATA``, ``DIMCL_TUTORIAL_IMAGES``) pass through; its runs go to a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "dimcl_in_your_loop.ipynb"


def sources_digest(notebook) -> str:
    """SHA-256 of the notebook's cells (kind and source, in order), outputs left out."""
    cells = [[cell.cell_type, cell.source] for cell in notebook.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def main() -> int:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory(prefix="dimcl_tutorial_") as work:
        os.environ["DIMCL_TUTORIAL_OUT"] = work
        start = time.perf_counter()
        NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
    notebook.metadata["dimcl"] = {"sources_sha256": sources_digest(notebook)}
    nbformat.write(notebook, NOTEBOOK)
    print(f"ran {NOTEBOOK.relative_to(Path.cwd()) if NOTEBOOK.is_relative_to(Path.cwd()) else NOTEBOOK} "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
