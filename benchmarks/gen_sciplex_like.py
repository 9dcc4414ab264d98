"""Unseen drugs and doses: semi-synthetic sci-Plex (the 187 real sci-Plex drugs, known maps).

    python benchmarks/gen_sciplex_like.py [--quick] [--drugs N] [--folds 5] [--cells 100]
        [--steps 3000] [--conditions-per-step 32] [--dose-out 1000] [--only-folds 0,1]
        [--embeddings smiles,effect+smiles,effect,onehot] [--data-dir ../shared/data]
        [--out runs/gen_sciplex_like]

The default is the full benchmark: every drug of ``drug_metadata/trapnell_drugs_smiles.csv``
(187 drugs + the vehicle, DMSO, as control) x 4 doses x 3 cell lines = 2,244 conditions, drug-out
5-fold CV and dose-out, 13 trainings of 3,000 steps (about 35 min on 2 cores). ``--quick``: 40
drugs, 2 folds, 50 cells, 200 steps of 8 conditions (about 6 min).

``condmonge.datasets.sciplex_like``: each drug's response is a known OT map (gradient of a
convex function) parameterised by a hidden embedding computed from its RDKit descriptors and
modulated per cell line; the dose scales the displacement (``log10(1 + dose) / 4``).

- drug-out: ``--folds``-fold CV over drugs (``split.kind: kfold``, every fold run); embeddings
  ``smiles`` (RDKit descriptors, fitted on the training drugs) and ``effect+smiles`` (response
  signatures of the training drugs, unseen drugs inferred from structure by ridge).
- dose-out: every drug at dose ``--dose-out`` held out; embeddings ``smiles``, ``effect``
  (training split only) and ``onehot`` (no embedding: seen drugs only, so dose-out only).

Model vs identity, mean_shift (nearest training condition in embedding space) and linear (ridge
from the same embedding, dose and cell line to the mean shift); L2-UVP (%, lower is better)
against the true map. Prints one JSON line.
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

FILE = "drug_metadata/trapnell_drugs_smiles.csv"
NAME = "gen_sciplex_like"
METRICS = ["l2_uvp", "r2_delta_all", "energy_distance"]
FULL = {"drugs": None, "folds": 5, "cells": 100, "steps": 3000, "conditions_per_step": 32}
QUICK = {"drugs": 40, "folds": 2, "cells": 50, "steps": 200, "conditions_per_step": 8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small version (see above)")
    parser.add_argument("--drugs", type=int, default=None, help="first N drugs (default: all)")
    parser.add_argument("--folds", type=int, default=None, help="drug-out folds (default 5)")
    parser.add_argument("--cells", type=int, default=None, help="cells per drug, dose, line")
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    parser.add_argument("--conditions-per-step", type=int, default=None, help="default 32")
    parser.add_argument("--dose-out", type=float, default=1000.0)
    parser.add_argument("--only-folds", default="", help="comma list of drug-out folds to run")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: drug,dose")
    parser.add_argument(
        "--embeddings",
        default="smiles,effect+smiles,effect,onehot",
        help="comma list of the embeddings to run (drug-out uses smiles and effect+smiles)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=f"runs/{NAME}")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs in --out")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    root = data_dir(args.data_dir, NAME, FILE)
    smiles = str(root / FILE)
    out = Path(args.out)

    def tree(split, embedding):
        return {
            "dataset": "sciplex_like",
            "sciplex_like": {"smiles": smiles, "n_drugs": args.drugs, "n_cells": args.cells,
                             "n_features": args.features, "seed": args.seed},
            "split": {**split, "seed": args.seed},
            "embeddings": {} if embedding == "onehot" else {
                "condition": {"smiles": f"smiles:{smiles}", "effect": "effect",
                              "effect+smiles": f"effect+smiles:{smiles}"}[embedding]},
            "effect": {"n_components": 10},
            "baselines": ["identity", "mean_shift", "linear"],
            "evaluation": {"max_cells": 200, "headline_metric": "r2_delta_all"},
            "model": {
                "data": {"condition_key": "condition", "control": "control", "dose_key": "dose",
                         "cell_type_key": "cell_type"},
                "train": train_section(args.steps, 64, args.conditions_per_step, args.seed),
            },
        }  # fmt: skip

    skip = set(args.skip.split(","))
    chosen = set(args.embeddings.split(","))
    start = time.perf_counter()
    frames = []
    if "drug" not in skip:
        for embedding in [e for e in ("smiles", "effect+smiles") if e in chosen]:
            folds = [int(f) for f in args.only_folds.split(",") if f] or range(args.folds)
            for fold in folds:
                split = {"kind": "kfold", "n_folds": args.folds, "fold": fold}
                tag = f"drug-out/{embedding}/fold{fold}"
                rows, _ = run(tree(split, embedding), out / tag.replace("/", "_"), tag)
                rows.insert(0, "split", "drug-out")
                rows.insert(1, "embedding", embedding)
                frames.append(rows)
    if "dose" not in skip:
        for embedding in [e for e in ("smiles", "effect", "onehot") if e in chosen]:
            split = {"kind": "dose", "holdout": [args.dose_out]}
            tag = f"dose-out/{embedding}"
            rows, _ = run(tree(split, embedding), out / tag.replace("/", "_"), tag)
            rows.insert(0, "split", "dose-out")
            rows.insert(1, "embedding", embedding)
            frames.append(rows)
    rows = pd.concat(frames)
    summary = pool(rows, METRICS, by=["split", "embedding"])
    seconds = time.perf_counter() - start
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    notes = []
    for (split, embedding), group in rows.groupby(["split", "embedding"], sort=False):
        m = group[group["method"] == MODEL]["l2_uvp"].to_numpy()
        lin = group[group["method"] == "linear"]["l2_uvp"].to_numpy()
        notes.append(
            f"{split}, {embedding}: condmonge has a lower L2-UVP than linear on "
            f"{int((m < lin).sum())} of {len(m)} held-out conditions"
        )
    write_report(
        out, "Unseen drugs and doses: semi-synthetic sci-Plex", command, summary, METRICS, rows,
        seconds, notes,
    )  # fmt: skip
    by_method = pool(rows, METRICS, by=["split", "embedding"])
    print(
        json.dumps(
            {
                "benchmark": NAME,
                "drugs": args.drugs,
                "folds": args.folds,
                "cells": args.cells,
                "steps": args.steps,
                "dose_out": args.dose_out,
                "summary": nested(by_method, ["l2_uvp", "r2_delta_all"]),
                "seconds": round(seconds, 1),
                "report": str(out / "report.md"),
            }
        )
    )


if __name__ == "__main__":
    main()
