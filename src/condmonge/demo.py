"""The demo: hold out drug combinations of the shipped Norman/McFaline data, predict, report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from condmonge.config import Config
from condmonge.evaluate.experiment import (
    ExperimentConfig,
    experiment_config_from_dict,
    run_experiment,
)

__all__ = ["DEMO_BASELINES", "DEMO_HOLDOUT", "demo_config", "demo_experiment", "run_demo"]

# Combinations whose two single perturbations are both measured (in K562), so that the
# additive baseline is defined and the task is "unseen pair of seen perturbations".
DEMO_HOLDOUT = ("KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2")


def demo_config(steps: int = 1500, seed: int = 0, progress: bool = True) -> Config:
    """Settings that train in about two minutes on 2 CPU cores.

    With 100 control cells per cell type, a map in the 500-gene space memorises the training
    controls; 20 principal components of the training cells (held-out cells excluded) keep the
    signal, and predictions are returned in gene space.
    """
    return Config().updated(
        {
            "data.condition_key": "condition",
            "data.control": "control",
            "data.cell_type_key": "cell_type",
            "data.n_pca": 20,
            "train.steps": steps,
            "train.seed": seed,
            "train.learning_rate": 3e-3,
            "train.cells_per_condition": 128,
            "train.conditions_per_step": 8,
            "train.validate_every": 100,
            "train.progress": progress,
        }
    )


DEMO_BASELINES = ("identity", "mean_shift", "additive", "linear")


def demo_experiment(steps: int = 1500, seed: int = 0, progress: bool = True) -> ExperimentConfig:
    """The demo as an experiment: combination-out split of :data:`DEMO_HOLDOUT`.

    The per-condition Monge gap baseline is left out to keep the demo short; ``condmonge
    experiment`` runs it.
    """
    return experiment_config_from_dict(
        {
            "dataset": "norman_mcfaline",
            "split": {"kind": "combination", "holdout": list(DEMO_HOLDOUT), "seed": seed},
            "baselines": list(DEMO_BASELINES),
            "model": demo_config(steps, seed, progress).model_dump(mode="json"),
        },
        "demo",
    )


def run_demo(
    out: str | Path = "demo_out", steps: int = 1500, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Train with :data:`DEMO_HOLDOUT` held out, predict them in K562, write the report.

    Writes to ``out`` what :func:`~condmonge.evaluate.experiment.run_experiment` writes
    (``report.md``, ``per_condition.csv``, ``summary.csv``, ``summary.json``, figures,
    ``predictions.h5ad``, ``model/``). Returns the summary table (mean and sd per method).
    """
    result = run_experiment(
        demo_experiment(steps, seed, progress), out, log=print if progress else None
    )
    return result.summary
