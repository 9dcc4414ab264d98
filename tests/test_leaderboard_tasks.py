"""The leaderboard's task definitions (benchmarks/tasks.py): valid experiments, fixed in advance."""

import sys
from pathlib import Path

import pytest

from condmonge.datasets import norman_mcfaline
from condmonge.evaluate.experiment import experiment_config_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tasks as T  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_norman_pairs_have_both_singles_measured():
    labels = set(norman_mcfaline().obs["condition"].astype(str))
    for pair in T.NORMAN_PAIRS:
        assert pair in labels
        assert all(single in labels for single in pair.split("+"))
    task = T.norman_combination()
    config = experiment_config_from_dict(task.experiments["pairs"], "norman")
    assert config.split.kind == "combination" and config.split.holdout == T.NORMAN_PAIRS


def test_mcfaline_holdout_is_seeded_and_seen_in_the_other_lines(tmp_path):
    held = T.mcfaline_perturbations()
    assert held == T.mcfaline_perturbations() and len(set(held)) == 3
    obs = norman_mcfaline().obs
    for line in ("A172", "T98G"):
        seen = set(obs.loc[obs["cell_type"].astype(str) == line, "condition"].astype(str))
        assert set(held) <= seen
    task = T.mcfaline_cell_type(tmp_path)
    config = experiment_config_from_dict(task.experiments["u87mg"], "mcfaline")
    assert config.split.holdout == [f"{p}@U87MG" for p in held]
    assert (tmp_path / "data" / "mcfaline23.h5ad").is_file()


@pytest.mark.skipif(not (SHARED / T.KANG).is_file(), reason="needs ../shared/data")
def test_shared_data_tasks_validate():
    made = [
        T.kang_cell_type(SHARED, T.KANG_TYPES),
        T.sciplex_drug_out(SHARED, 20, 10, "effect+smiles"),
        T.sciplex_dose_out(SHARED, 20, 10, "onehot"),
        T.synthetic_unseen(50, oracle=True),
    ]
    for task in made:
        for tag, tree in task.experiments.items():
            config = experiment_config_from_dict(tree, f"{task.name}/{tag}")
            assert config.model.train.steps == type(config.model.train)().steps  # no budget here
    assert len(made[0].experiments) == 7
    assert "monge_gap" in made[3].experiments["unseen"]["baselines"]
