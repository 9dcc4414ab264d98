"""Execute a tutorial of the documentation site the way the site build executes it.

``make docs`` executes every tutorial while it builds the site (mkdocs-jupyter); ``make test``
builds the site without executing them (``CONDMONGE_DOCS_EXECUTE=false``, a check of the prose,
links and API pages) and executes them in pytest instead, one test file per tutorial
(``tests/test_tutorial_*.py``, marked slow) so that pytest-xdist runs them in parallel with the
rest of the suite. :func:`execute` reads the page's source with jupytext and runs its cells in
a Jupyter kernel from the repository root (the working directory of the site build), exactly
as mkdocs-jupyter does, and fails on the first cell that raises: a tutorial broken by a library
change fails ``make test``.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


def execute(name, tmp_path, monkeypatch):
    """Run ``docs/tutorials/{name}.py`` as a notebook; return the notebook with its outputs."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    notebook = jupytext.read(ROOT / "docs" / "tutorials" / f"{name}.py")
    assert sum(cell.cell_type == "code" for cell in notebook.cells) >= 3
    # Temporary files of the tutorial (tempfile.mkdtemp) go to this test's folder.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert outputs, "the tutorial printed or showed nothing"
    return notebook
