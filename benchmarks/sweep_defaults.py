"""Sweep of defaults on development tasks only (never the test conditions of docs/RESULTS.md).

    python benchmarks/sweep_defaults.py [--tasks norman,synthetic] [--steps 600,1200]
        [--grid default,self] [--seed 0]

Development tasks, each with held-out *conditions* of the kind its benchmark asks about:

- ``norman``: Norman K562 in 20 PCs without the 5 reported test pairs of
  ``examples/norman_combination.yaml`` (dropped from the data); the validation conditions are
  the first 4 remaining combinations (sorted) whose genes all stay in other training
  conditions (the test pairs are the only ones whose two singles are both measured);
- ``synthetic``: the convex unseen-condition task (12 conditions, 3 unseen, d = 10, embedding
  table given) on generator seed 5 (the benchmarks use 0).

Each grid point is a set of config overrides (:data:`GRID`) trained at every ``--steps``; the
score per task is the mean over validation conditions of mean-delta R² on the top-20 changed
features, energy distance and ``r2_var``. Prints one JSON line with every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import _gen  # noqa: F401  (sets one JAX CPU device per core on import)
from condmonge import ConditionalMonge
from condmonge.config import Config
from condmonge.data.prepare import label_cells
from condmonge.data.spec import ConditionSpec
from condmonge.datasets import convex_task, norman_mcfaline
from condmonge.evaluate.baselines import make_baseline
from condmonge.evaluate.metrics import mean_delta_r2, moment_errors, top_de_features
from condmonge.ops import energy_distance

NAME = "sweep_defaults"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "norman_combination.yaml"
#: Grid points: name -> config overrides on top of the library defaults.
GRID: dict[str, dict] = {
    "default": {},
    "self": {"loss.fit_debias": "self"},
    "mg_eps0.005": {"loss.monge_gap_epsilon": 0.005},
    "mg_w0.3": {"loss.monge_gap_weight": 0.3},
    "noise0.1": {"train.input_noise": 0.1},
    "fit_eps0.03": {"loss.fit_epsilon": 0.03},
    "shift_head": {"model.shift_head": True},
    "pool_mean": {"model.pooling": "mean"},
    "pool_mean_shift_head": {"model.pooling": "mean", "model.shift_head": True},
    "prior": {"model.prior": "nearest"},
    "prior_linear": {"model.prior": "linear"},
    "library_lr": {"train.learning_rate": 1e-3, "train.cells_per_condition": 256},
    "auto_pca": {"data.n_pca": "auto"},
    "library": {
        "data.n_pca": "auto",
        "train.learning_rate": 1e-3,
        "train.cells_per_condition": 256,
    },  # fmt: skip
    "library_distinct": {
        "data.n_pca": "auto", "train.learning_rate": 1e-3,
        "train.cells_per_condition": 256, "train.cell_sampling": "distinct",
    },  # fmt: skip
    "library_lr3e-3": {
        "data.n_pca": "auto", "train.learning_rate": 3e-3, "train.cells_per_condition": 256,
    },  # fmt: skip
    "library_lr3e-3_distinct_auto": {
        "data.n_pca": "auto", "train.learning_rate": 3e-3,
        "train.cells_per_condition": "auto", "train.cell_sampling": "distinct",
    },  # fmt: skip
    "library_distinct_auto": {
        "data.n_pca": "auto", "train.learning_rate": 1e-3,
        "train.cells_per_condition": "auto", "train.cell_sampling": "distinct",
    },  # fmt: skip
}
#: Baselines scored on the same validation conditions (``--baselines``).
BASELINE_NAMES = ("identity", "mean_shift", "additive", "linear")


def norman_task():
    """K562 cells without the test pairs; 4 held-out training combinations."""
    adata = norman_mcfaline()
    test = set(yaml.safe_load(EXAMPLE.read_text())["split"]["holdout"])
    adata = adata[((adata.obs["cell_type"] == "k562") & ~adata.obs["condition"].isin(test))
                  .to_numpy()].copy()  # fmt: skip
    return adata, {"data.n_pca": 20}, _dev_pairs(set(adata.obs["condition"].astype(str))), None


def _dev_pairs(names: set[str], n: int = 4) -> list[str]:
    """Up to ``n`` combinations (sorted) each of whose genes stays in another training condition.

    Every pair whose two singles are measured is a test pair, so a development pair's genes are
    seen through other combinations (one-hot encoding cannot predict an unseen gene).
    """
    chosen: list[str] = []
    for pair in sorted(c for c in names if "+" in c):
        rest = names - {"control", pair, *chosen}
        seen = {g for c in rest for g in c.split("+")}
        if all(g in seen for g in pair.split("+")) and len(chosen) < n:
            chosen.append(pair)
    return chosen


def synthetic_task():
    """The convex task on a development seed, its unseen conditions held out."""
    task = convex_task(n_conditions=12, n_features=10, n_cells=200, n_unseen=3, seed=5)
    return (
        task.adata,
        {"data.modality": "generic"},
        list(task.unseen),
        {"condition": task.embeddings},
    )


TASKS = {"norman": norman_task, "synthetic": synthetic_task}


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def score(adata, overrides: dict, holdout: list[str], embeddings) -> dict[str, float]:
    """Train without ``holdout``, predict it from the controls, mean metrics over it.

    ``val_fit`` is the model's own best validation fitting term (on held-out *training*
    conditions; what ``tune`` minimises), for checking what validation would have chosen.
    """
    model = ConditionalMonge(Config().updated(overrides))
    model.fit(adata, "condition", "control", holdout=holdout, embeddings=embeddings)
    is_control = (adata.obs["condition"] == "control").to_numpy()
    row = metrics_of(adata, model.predict(adata[is_control], holdout), holdout)
    return row | {"val_fit": round(float(model.loop.best_val_loss), 4)}


def score_baseline(adata, name: str, holdout: list[str], embeddings) -> dict[str, float]:
    """A baseline fitted on the cells outside ``holdout``, scored like :func:`score`."""
    held = adata.obs["condition"].isin(holdout).to_numpy()
    baseline = make_baseline(name).fit(adata[~held].copy(), ConditionSpec(), embeddings=embeddings)
    # Conditions store their perturbations sorted; a label may list them in another order.
    by_set = {frozenset(c.perturbations): c for c in label_cells(adata, ConditionSpec()).conditions}
    is_control = (adata.obs["condition"] == "control").to_numpy()
    pred = baseline.predict(adata[is_control], [by_set[frozenset(h.split("+"))] for h in holdout])
    return metrics_of(adata, pred, holdout)


def metrics_of(adata, pred, holdout: list[str]) -> dict[str, float]:
    """Mean over ``holdout`` of the three metrics; ``pred`` stacks the controls per condition."""
    is_control = (adata.obs["condition"] == "control").to_numpy()
    x = dense(adata.X[is_control])
    rows = []
    for i, name in enumerate(holdout):
        true = dense(adata.X[(adata.obs["condition"] == name).to_numpy()])
        mapped = dense(pred.X[i * len(x) : (i + 1) * len(x)])
        rows.append({
            "r2_delta_top20": mean_delta_r2(mapped, true, x, top_de_features(true, x, 20)),
            "energy_distance": float(energy_distance(mapped, true)),
            "r2_var": float(moment_errors(mapped, true)["r2_var"]),
        })  # fmt: skip
    return pd.DataFrame(rows).mean().round(4).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="norman,synthetic")
    parser.add_argument("--steps", default="600,1200")
    parser.add_argument("--grid", default=",".join(GRID), help="names of GRID points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baselines", action="store_true", help="also score BASELINE_NAMES")
    args = parser.parse_args()
    start, results = time.perf_counter(), []
    for task in args.tasks.split(","):
        adata, data, holdout, embeddings = TASKS[task]()
        for name in BASELINE_NAMES if args.baselines else ():
            row = {"task": task, "point": name, **score_baseline(adata, name, holdout, embeddings)}
            results.append(row)
            print(json.dumps(row), flush=True, file=sys.stderr)
        for point in args.grid.split(","):
            for steps in (int(s) for s in args.steps.split(",")):
                # The sweep's fixed budget first, so that a grid point may override it.
                overrides = data | {
                    "train.steps": steps, "train.seed": args.seed, "train.progress": False,
                    "train.checkpoint_every": 10**6, "train.learning_rate": 0.003,
                    "train.cells_per_condition": 128,
                } | GRID[point]  # fmt: skip
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    metrics = score(adata, overrides, holdout, embeddings)
                row = {"task": task, "point": point, "steps": steps, **metrics,
                       "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True, file=sys.stderr)
    print(json.dumps({"benchmark": NAME, "seed": args.seed, "rows": results,
                      "seconds": round(time.perf_counter() - start, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
