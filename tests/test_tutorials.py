"""The tutorials of the documentation site, executed the way the site build executes them.

``make docs`` executes every tutorial while it builds the site (mkdocs-jupyter); ``make test``
builds the site without executing them (``CONDMONGE_DOCS_EXECUTE=false``, a check of the prose,
links and API pages) and executes them here instead, so that they run in parallel with the
rest of the suite. Each test reads the page's source with jupytext and runs its cells in a
Jupyter kernel from the repository root (the working directory of the site build), exactly as
mkdocs-jupyter does, and fails on the first cell that raises: a tutorial broken by a library
change fails ``make test``.
"""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


def _nav_pages(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _nav_pages(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _nav_pages(value)


def test_every_tutorial_of_the_site_is_executed_here():
    # mkdocs.yml has custom tags (!ENV); the nav is plain YAML.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    pages = {p for p in _nav_pages(config["nav"]) if p.startswith("tutorials/")}
    assert pages == {f"tutorials/{p.name}" for p in TUTORIALS}
    assert len(pages) == 4


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes_without_error(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    notebook = jupytext.read(path)
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
