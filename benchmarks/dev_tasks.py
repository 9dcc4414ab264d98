"""Development twins of the synthetic leaderboard tasks, for choosing settings without the tests.

    python benchmarks/dev_tasks.py [--tasks sciplex_drug_out,sciplex_dose_out,synthetic_unseen
        (,in_distribution)]
        [--grid default,prior_linear] [--seeds 0,1,2] [--steps 300] [--out runs/dev_tasks]
        [--data-dir ../shared/data]

Each task is the leaderboard's (``benchmarks/tasks.py``: the same split kind, sizes, embeddings
and baselines) built from a different *generator seed* (``DEV_SEED``): other drug maps, another
hidden embedding, other cells. Nothing here is a test condition of ``leaderboard.py``, whose
generators use seed 0; a setting chosen here has not seen them. ``in_distribution`` is the
leaderboard's in-distribution claim (whose generator uses seed 1) built from seed 2. Each grid
point is a set of ``model`` overrides on top of the library's defaults (plus the step budget
and the training seed); the baselines are fitted once. Prints one JSON line: per (task, point)
the mean over seeds of the per-seed means over held-out conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import pandas as pd  # noqa: E402

import tasks as T  # noqa: E402
from _gen import MODEL, data_dir, run  # noqa: E402
from leaderboard import METRICS, with_model  # noqa: E402

#: The generators' seed here; the leaderboard's tasks use 0.
DEV_SEED = 1
#: The in-distribution claim's generator seed here: the leaderboard's claim uses 1 (DEV_SEED).
IN_DISTRIBUTION_DEV_SEED = 2
SIZES = {"drugs": 40, "cells": 50, "synthetic_cells": 200}
#: Grid points: dotted overrides of the model config (``section.key``).
GRID = {
    "default": {},
    "prior_linear": {"model.prior": "linear"},
    "prior_nearest": {"model.prior": "nearest"},
    "distinct": {"train.cell_sampling": "distinct"},
    "distinct_auto": {"train.cell_sampling": "distinct", "train.cells_per_condition": "auto"},
    "auto": {"train.cells_per_condition": "auto"},
    "lr1e-3": {"train.learning_rate": 1e-3},
    "lr3e-3": {"train.learning_rate": 3e-3},
    "lr3e-3_c128": {"train.learning_rate": 3e-3, "train.cells_per_condition": 128},
    "lr3e-3_distinct_auto": {
        "train.learning_rate": 3e-3, "train.cell_sampling": "distinct",
        "train.cells_per_condition": "auto",
    },  # fmt: skip
    "lr3e-3_prior_linear": {"train.learning_rate": 3e-3, "model.prior": "linear"},
}


def dev_task(name: str, root: Path) -> T.Task:
    """The leaderboard task ``name`` with its generator's seed set to :data:`DEV_SEED`."""
    task = {
        "sciplex_drug_out": lambda: T.sciplex_drug_out(root, SIZES["drugs"], SIZES["cells"]),
        "sciplex_dose_out": lambda: T.sciplex_dose_out(root, SIZES["drugs"], SIZES["cells"]),
        "synthetic_unseen": lambda: T.synthetic_unseen(SIZES["synthetic_cells"], oracle=False),
        # The leaderboard's in-distribution claim (held-out cells of 6 seen conditions, against
        # one Monge gap map per condition) at its own size, 300 cells per condition.
        "in_distribution": lambda: T.Task(
            "in_distribution", "In distribution (development)", "random",
            {"synthetic": T.in_distribution(300, 6)}, real=False,
        ),  # fmt: skip
    }[name]()
    for tree in task.experiments.values():
        generator = tree["sciplex_like" if name.startswith("sciplex") else "synthetic"]
        generator["seed"] = IN_DISTRIBUTION_DEV_SEED if name == "in_distribution" else DEV_SEED
    return task


def with_point(tree: dict, steps: int, seed: int, point: dict) -> dict:
    """The experiment tree with the defaults, the budget, the seed and ``point``'s overrides."""
    full = with_model(tree, steps, seed)
    for dotted, value in point.items():
        section, key = dotted.split(".")
        full["model"].setdefault(section, {})[key] = value
    return full


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="sciplex_drug_out,sciplex_dose_out,synthetic_unseen")
    parser.add_argument("--grid", default="default,prior_linear")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("runs/dev_tasks"))
    parser.add_argument("--data-dir", default=None, help="the shared data (sci-Plex SMILES)")
    args, _ = parser.parse_known_args()
    root = data_dir(args.data_dir, "dev_tasks", T.SMILES)
    seeds = [int(s) for s in args.seeds.split(",")]
    frames = []
    for name in args.tasks.split(","):
        task = dev_task(name, root)
        for p, point in enumerate(args.grid.split(",")):
            for i, seed in enumerate(seeds):
                for tag, tree in task.experiments.items():
                    full = with_point(tree, args.steps, seed, GRID[point])
                    if p or i:  # baselines once per task
                        full["baselines"] = []
                    where = args.out / name / point / f"{tag}_seed{seed}"
                    rows, _ = run(full, where, f"{name}/{point}")
                    rows["task"], rows["seed"] = name, seed
                    rows["point"] = rows["method"].where(rows["method"] != MODEL, point)
                    frames.append(rows)
                    print(name, point, seed, file=sys.stderr, flush=True)
    rows = pd.concat(frames, ignore_index=True)
    metrics = [m for m in METRICS if m in rows]
    per_seed = rows.groupby(["task", "point", "seed"])[metrics].mean()
    table = per_seed.astype("float64").groupby(level=["task", "point"]).mean().round(4)
    args.out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out / "rows.csv", index=False)
    summary = {f"{t}/{p}": v for (t, p), v in table.to_dict("index").items()}
    print(json.dumps({"benchmark": "dev_tasks", "steps": args.steps, "seeds": seeds,
                      "generator_seed": DEV_SEED, "in_distribution_seed": IN_DISTRIBUTION_DEV_SEED,
                      "results": summary}))  # fmt: skip


if __name__ == "__main__":
    main()
