"""Every tutorial of the documentation site has its test (``tests/test_tutorial_*.py``, which
execute them as the site build does; see ``tests/tutorials.py``)."""

from pathlib import Path

import yaml

from tutorials import ROOT, TUTORIALS


def _nav_pages(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _nav_pages(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _nav_pages(value)


def test_every_tutorial_of_the_site_is_executed_by_a_test():
    # mkdocs.yml has custom tags (!ENV); the nav is plain YAML.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    pages = {p for p in _nav_pages(config["nav"]) if p.startswith("tutorials/")}
    assert pages == {f"tutorials/{p.name}" for p in TUTORIALS}
    assert len(pages) == 4
    tests = Path(__file__).parent
    for path in TUTORIALS:
        source = (tests / f"test_tutorial_{path.stem}.py").read_text()
        assert f'execute("{path.stem}", tmp_path, monkeypatch)' in source
