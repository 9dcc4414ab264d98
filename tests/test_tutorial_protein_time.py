"""docs/tutorials/protein_time.py runs as the site build runs it (tests/tutorials.py)."""

import pytest

from tutorials import execute


@pytest.mark.slow
def test_tutorial_executes_without_error(tmp_path, monkeypatch):
    execute("protein_time", tmp_path, monkeypatch)
