"""Unseen cell types: Kang 2018 PBMC IFN-beta, cell-type-out for each cell type in turn.

    python benchmarks/gen_kang_cell_type.py [--cell-types CD4T,CD14+Mono,FCGR3A+Mono]
        [--steps 150] [--data-dir ../shared/data] [--out runs/gen_kang_cell_type]

For each held-out cell type: train on the stimulated cells of the other six types (and every
type's training controls), predict the held-out type's stimulated cells from its test controls.
The model works in 30 PCs of the training cells; the held-out type is placed by its mean
control profile (``embeddings: {cell_type: controls}``). Baselines: identity, mean_shift (the
average shift of the other cell types) and linear. The data (GPL-3, scGen's validation file)
are read from the shared directory, never copied. ``--cell-types all`` runs all 7 (default: the
3 largest, to keep the default run within a few minutes on 2 CPU cores).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from _gen import MODEL, data_dir, nested, pool, run, train_section, write_report

FILE = "kang2018_pbmc_ifnb_scgen_valid.h5ad"
NAME = "gen_kang_cell_type"
ALL = ["CD4T", "FCGR3A+Mono", "CD14+Mono", "B", "NK", "CD8T", "Dendritic"]  # largest first
METRICS = ["r2_delta_top20", "r2_delta_all", "energy_distance", "mmd_rbf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell-types", default=",".join(ALL[:3]), help="comma list or 'all'")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--n-pca", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=f"runs/{NAME}")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs in --out")
    args = parser.parse_args()
    root = data_dir(args.data_dir, NAME, FILE)
    types = ALL if args.cell_types == "all" else [t for t in args.cell_types.split(",") if t]
    out = Path(args.out)
    start = time.perf_counter()
    frames = []
    for cell_type in types:
        tree = {
            "dataset": str(root / FILE),
            "split": {"kind": "cell_type", "holdout": [cell_type], "seed": args.seed},
            "embeddings": {"cell_type": "controls"},
            "effect": {"n_components": 5},
            "baselines": ["identity", "mean_shift", "linear"],
            "evaluation": {"max_cells": 500, "headline_metric": "r2_delta_top20"},
            "model": {
                "data": {
                    "condition_key": "condition",
                    "control": "control",
                    "cell_type_key": "cell_type",
                    "n_pca": args.n_pca,
                },
                "train": train_section(args.steps, 128, 6, args.seed),
            },
        }
        safe = cell_type.replace("+", "p")
        rows, _ = run(tree, out / safe, cell_type)
        frames.append(rows)
    rows = pd.concat(frames)
    summary = pool(rows, METRICS)
    per_type = pool(rows, ["r2_delta_top20", "energy_distance"], by=["run"])
    seconds = time.perf_counter() - start
    model = rows[rows["method"] == MODEL].set_index("run")["r2_delta_top20"]
    shift = rows[rows["method"] == "mean_shift"].set_index("run")["r2_delta_top20"]
    wins = int((model > shift).sum())
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    from _gen import table_markdown

    write_report(
        out, "Unseen cell types: Kang 2018 PBMC IFN-beta, cell-type-out", command, summary,
        METRICS, rows, seconds,
        [f"condmonge beats mean_shift on r2_delta_top20 for {wins} of {len(model)} cell types",
         "", "## Per held-out cell type", "", table_markdown(per_type, ["r2_delta_top20",
                                                                      "energy_distance"])],
    )  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": NAME,
                "cell_types": types,
                "steps": args.steps,
                "summary": nested(summary, METRICS),
                "per_cell_type_r2_delta_top20": {
                    t: {
                        "condmonge": round(float(model[t]), 4),
                        "mean_shift": round(float(shift[t]), 4),
                    }
                    for t in model.index
                },  # fmt: skip
                "model_beats_mean_shift": {"cell_types": wins, "of": len(model)},
                "seconds": round(seconds, 1),
                "report": str(out / "report.md"),
            }
        )
    )


if __name__ == "__main__":
    main()
