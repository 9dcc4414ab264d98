"""``examples/*.yaml`` run from a fresh clone: every file they name lies inside the repository."""

from pathlib import Path

import pytest

from condmonge.conditions.smiles import parse_smiles_spec
from condmonge.evaluate.experiment import load_experiment_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BUILTIN = {"norman_mcfaline", "synthetic", "sciplex_like"}


def _named_files(path: Path) -> list[str]:
    cfg = load_experiment_config(path)
    files = [] if cfg.dataset in BUILTIN else [cfg.dataset]
    if cfg.dataset == "sciplex_like" and cfg.sciplex_like.smiles is not None:
        files.append(cfg.sciplex_like.smiles)
    for spec in cfg.embeddings.values():
        rest = spec.split(":", 1)[1] if spec.startswith("effect+") else spec
        smiles = parse_smiles_spec(rest) if ":" in rest else None
        if smiles is not None:
            files.append(smiles.path)
        elif rest != "effect":
            files.append(rest)
    return files


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_names_only_files_of_the_repository(path):
    for name in _named_files(path):
        target = (path.parent / name).resolve()
        assert target.is_relative_to(ROOT), f"{path.name} points outside the repository: {name}"
        assert target.is_file(), f"{path.name}: {name} does not exist"
    assert f"condmonge experiment examples/{path.name}" in path.read_text()  # says how to run
