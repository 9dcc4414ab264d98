"""Unseen drugs and an unseen time point: semi-synthetic 4i (protein imaging, known maps).

    python benchmarks/gen_4i_like.py [--quick] [--drugs N] [--cells 1000] [--folds 5]
        [--steps 3000] [--conditions-per-step 16] [--only-folds 0,1] [--skip drug,time]
        [--baselines identity,mean_shift,additive,linear,monge_gap] [--out runs/gen_4i_like]

The default is the full benchmark: the 31 drugs of the 4i screen (``condmonge.datasets.
fouri_like``: 48 heavy-tailed, block-correlated, partly bimodal features, negative after
scaling) x 3 time points (6, 24, 48 h) x 1,000 cells + 6,000 controls = 99,000 cells; drug-out
5-fold CV (every fold) and time-out (train on 6 h and 24 h, predict 48 h for every drug): 6
trainings of 3,000 steps. ``--quick``: 12 drugs, 300 cells, 2 folds, 300 steps.

The model conditions on the drugs' RDKit descriptors (``smiles:`` embedding, fitted on the
training drugs) and on time (``covariate_keys: [time]``, ``log1p`` transform, neutral value 0:
the identity at t = 0), on protein-standardised features (``data.modality: protein``). The
baselines get the same drug table and the time as a numeric feature (mean_shift: the nearest
training condition, i.e. the same drug at the nearest time for time-out; linear: ridge from
drug features and time to the mean shift); ``monge_gap`` is the per-condition oracle fitted
on the test cells (an in-sample reference, not a competitor). Metrics: L2-UVP against the
true map (%, lower is better), R² of mean deltas, energy distance and per-feature moments
(variance and skewness). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from _gen import MODEL, nested, pool, train_section, write_report  # first: JAX CPU devices
from condmonge.conditions.smiles import parse_smiles_spec
from condmonge.config import Config
from condmonge.data.anndata_io import feature_matrix
from condmonge.data.spec import ConditionSpec
from condmonge.data.splits import make_split
from condmonge.datasets import fouri_like
from condmonge.evaluate.baselines import MongeGapPerCondition, make_baseline
from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets
from condmonge.model import ConditionalMonge

NAME = "gen_4i_like"
METRICS = ["l2_uvp", "r2_delta_all", "energy_distance", "r2_var", "mae_var", "mae_skew"]
FULL = {"drugs": None, "folds": 5, "cells": 1000, "steps": 3000, "conditions_per_step": 16}
QUICK = {"drugs": 12, "folds": 2, "cells": 300, "steps": 300, "conditions_per_step": 8}
BASELINES = "identity,mean_shift,additive,linear,monge_gap"
SPEC = ConditionSpec(condition_key="drug", control="control", covariate_keys=("time",))


def arguments() -> argparse.Namespace:
    """Command-line arguments, with the FULL or QUICK sizes filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small version (see above)")
    parser.add_argument("--drugs", type=int, default=None, help="first N drugs (default: all)")
    parser.add_argument("--folds", type=int, default=None, help="drug-out folds (default 5)")
    parser.add_argument("--cells", type=int, default=None, help="cells per drug and time")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    parser.add_argument("--conditions-per-step", type=int, default=None, help="default 16")
    parser.add_argument("--time-out", type=float, default=48.0, help="held-out time point")
    parser.add_argument("--only-folds", default="", help="comma list of drug-out folds to run")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: drug,time")
    parser.add_argument("--baselines", default=BASELINES, help="comma list")
    parser.add_argument("--monge-gap-steps", type=int, default=300)
    parser.add_argument("--max-cells", type=int, default=300, help="cells per population scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=f"runs/{NAME}")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def model_config(args: argparse.Namespace) -> Config:
    """The model's :class:`condmonge.Config` (protein data, time as a log1p covariate)."""
    return Config().updated(
        {
            "data.condition_key": "drug",
            "data.control": "control",
            "data.covariate_keys": ("time",),
            "data.covariate_transforms": {"time": "log1p"},
            "data.covariate_neutral": {"time": 0.0},
            "data.modality": "protein",
            **{f"train.{k}": v for k, v in train_section(
                args.steps, 64, args.conditions_per_step, args.seed).items()},
        }
    )  # fmt: skip


def run_split(task, split, args, smiles_path: str, tag: str) -> pd.DataFrame:
    """Train, predict and score the model and every baseline on one split."""
    adata = task.adata
    train = adata[(split == "train").to_numpy()].copy()
    test = adata[(split == "test").to_numpy()].copy()
    fit_names = sorted(set(train.obs["drug"].astype(str)) - {"control"})
    table = parse_smiles_spec(f"smiles:{smiles_path}").load(fit_names=fit_names, control="control")
    cfg = model_config(args)
    truth = truth_sets(test, cfg.data.spec)
    conditions = list(truth.conditions.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ConditionalMonge(cfg).fit(train, embeddings={"drug": table})
    predictions = {MODEL: model.predict(test, conditions)}
    keys = {"spec": SPEC}
    for name in args.baselines.split(","):
        if name == "monge_gap":
            oracle = MongeGapPerCondition(steps=args.monge_gap_steps, seed=args.seed)
            predictions["monge_gap_oracle"] = oracle.fit(test, **keys).predict(test, conditions)
        elif name:
            baseline = make_baseline(name).fit(train, embeddings={"drug": table}, **keys)
            predictions[name] = baseline.predict(test, conditions)
    sources = feature_matrix(test)

    def true_map(cond, x):
        return task.true_map(cond.label(), cond.covariates[0], x)

    rows = pd.concat(
        [
            evaluate_prediction(
                pred, truth, cfg.data.spec, method=method, true_map=true_map, sources=sources,
                max_cells=args.max_cells, seed=args.seed,
            )
            for method, pred in predictions.items()
        ]
    )  # fmt: skip
    rows["time"] = [truth.conditions[k].covariates[0] for k in rows.index]
    rows.insert(0, "run", tag)
    return rows


def main() -> None:
    """Run every split and print the one JSON line."""
    args = arguments()
    out = Path(args.out)
    start = time.perf_counter()
    task = fouri_like(n_drugs=args.drugs, n_cells=args.cells, seed=args.seed)
    with resources.as_file(
        resources.files("condmonge.datasets") / "_files" / "bunne2023_4i_drug_smiles.csv"
    ) as path:
        smiles_path = str(path)
    common = {"seed": args.seed, "key_added": None}
    skip = set(args.skip.split(","))
    frames = []
    if "drug" not in skip:
        folds = [int(f) for f in args.only_folds.split(",") if f] or range(args.folds)
        for fold in folds:
            split = make_split(task.adata, "kfold", SPEC, n_folds=args.folds, fold=fold, **common)
            rows = run_split(task, split, args, smiles_path, f"drug-out/fold{fold}")
            rows.insert(0, "split", "drug-out")
            frames.append(rows)
    if "time" not in skip:
        split = make_split(task.adata, "covariate", SPEC, holdout=[args.time_out], **common)
        rows = run_split(task, split, args, smiles_path, f"time-out/{args.time_out:g}h")
        rows.insert(0, "split", "time-out")
        frames.append(rows)
    rows = pd.concat(frames)
    summary = pool(rows, METRICS, by=["split"])
    seconds = time.perf_counter() - start
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    notes = []
    for split, group in rows.groupby("split", sort=False):
        model = group[group["method"] == MODEL]["l2_uvp"].to_numpy()
        for rival in ("mean_shift", "linear"):
            other = group[group["method"] == rival]["l2_uvp"].to_numpy()
            if len(other) == len(model):
                notes.append(
                    f"{split}: condmonge has a lower L2-UVP than {rival} on "
                    f"{int((model < other).sum())} of {len(model)} held-out conditions"
                )
    write_report(
        out, "Unseen drugs and time points: semi-synthetic 4i", command, summary, METRICS, rows,
        seconds, notes,
    )  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": NAME,
                "drugs": len(task.drugs),
                "cells": int(task.adata.n_obs),
                "folds": args.folds,
                "steps": args.steps,
                "time_out": args.time_out,
                "summary": nested(summary, ["l2_uvp", "r2_delta_all", "r2_var", "mae_skew"]),
                "seconds": round(seconds, 1),
                "report": str(out / "report.md"),
            }
        )
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
