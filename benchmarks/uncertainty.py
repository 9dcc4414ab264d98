"""Does the ensemble's uncertainty (and the OOD score) rank the errors on held-out conditions?

    nice python benchmarks/uncertainty.py [--members 5] [--steps 400] [--drugs 30]
        [--held-out 10] [--cells 50] [--features 50] [--seed 0] [--data-dir ../shared/data]

Task: ``condmonge.datasets.sciplex_like`` (known maps) with the first ``--drugs`` sci-Plex drugs
(``drug_metadata/trapnell_drugs_smiles.csv`` in ``--data-dir``; the ten built-in example drugs
when it is absent), 2 doses x 2 cell lines, drug-out: ``--held-out`` drugs (chosen with
``--seed``) are never trained on. Drugs are embedded by RDKit descriptors fitted on the
training drugs (10 principal components, fewer for fewer drugs).

An ensemble of ``--members`` maps (seeds 0, 1, ...) is trained once; the held-out conditions
are predicted with ``ensemble="mean"`` and ``"mixture"`` and by member 0 alone (the single
model). Per condition the errors are L2-UVP (% of target variance left unexplained against the
true map), ``1 - r2_delta_all`` and the energy distance. The JSON line reports, per way of
combining, the mean of r2_delta_top20, energy_distance, r2_var and l2_uvp, and the Spearman
rank correlation over held-out conditions between each error and ``uncertainty`` (the members'
spread relative to the predicted displacement), ``member_spread`` (the same spread in feature
units) and ``ood_score``. About 5 minutes on 2 shared cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import condmonge as cm  # noqa: E402
from condmonge.conditions.smiles import read_smiles_table, smiles_embedding  # noqa: E402
from condmonge.datasets.sciplex_like import sciplex_like  # noqa: E402
from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets  # noqa: E402

NAME = "uncertainty"
SMILES = "drug_metadata/trapnell_drugs_smiles.csv"
METRICS = ["r2_delta_top20", "energy_distance", "r2_var", "l2_uvp"]
ERRORS = ["l2_uvp", "one_minus_r2_delta_all", "energy_distance"]
SIGNALS = ("uncertainty", "member_spread", "ood_score")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--drugs", type=int, default=30)
    parser.add_argument("--held-out", type=int, default=10)
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    return parser.parse_args()


def smiles_source(data_dir: str | None) -> pd.Series | None:
    """The sci-Plex SMILES table of the shared data, or ``None`` (the built-in drugs)."""
    root = Path(data_dir) if data_dir else Path(__file__).resolve().parents[2] / "shared" / "data"
    path = root / SMILES
    return read_smiles_table(path) if path.is_file() else None


def config(args: argparse.Namespace) -> cm.Config:
    """A small, fixed training setup (not tuned on the held-out drugs)."""
    return cm.Config().updated(
        {
            "data.condition_key": "condition",
            "data.control": "control",
            "data.dose_key": "dose",
            "data.cell_type_key": "cell_type",
            "train.steps": args.steps,
            "train.n_members": args.members,
            "train.learning_rate": 3e-3,
            "train.conditions_per_step": 8,
            "train.cells_per_condition": 48,
            "train.validate_every": max(args.steps // 4, 1),
            "train.checkpoint_every": 10**6,
            "train.progress": False,
            "train.seed": args.seed,
            "model.hidden_dim": 64,
            "model.n_layers": 3,
            "loss.sinkhorn_max_iterations": 50,
        }
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho of two per-condition columns (``None`` when undefined)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return round(float(spearmanr(a[ok], b[ok]).statistic), 3)


def score(model, task, test, how: str | None) -> pd.DataFrame:
    """Per held-out condition: the metrics, ``uncertainty`` and ``ood_score``."""
    if how is None:  # member 0 alone: the single model of the same seed
        single = cm.ConditionalMonge(model.trained.config)
        single.trained = model.trained
        model, how = single, "mean"
    truth = truth_sets(test, model.spec)
    pred = model.predict(test, list(truth.conditions.values()), ensemble=how)
    x = np.asarray(test.X, np.float32)

    def true_map(cond, cells):
        return task.true_map(cond.perturbations[0], cond.doses[0], cond.cell_type, cells)

    rows = evaluate_prediction(pred, truth, model.spec, max_cells=200, true_map=true_map, sources=x)
    per = pred.uns["condmonge"]["per_condition"]
    rows = rows.join(per[list(SIGNALS)])
    rows["one_minus_r2_delta_all"] = 1.0 - rows["r2_delta_all"]
    return rows


def summary(rows: pd.DataFrame) -> dict:
    """Means of the metrics and the rank correlations of the scores with the errors."""
    out = {m: round(float(rows[m].mean()), 4) for m in METRICS}
    for signal in SIGNALS:
        out[f"spearman_{signal}"] = {
            e: spearman(rows[signal].to_numpy(), rows[e].to_numpy()) for e in ERRORS
        }
    return out


def main() -> None:
    args = arguments()
    smiles = smiles_source(args.data_dir)
    task = sciplex_like(
        smiles, n_drugs=args.drugs, doses=(100, 10000), cell_types=("A549", "MCF7"),
        n_cells=args.cells, n_features=args.features, seed=args.seed,
    )  # fmt: skip
    rng = np.random.default_rng(args.seed)
    held = sorted(rng.choice(task.drugs, size=args.held_out, replace=False).tolist())
    obs = task.adata.obs["condition"].astype(str)
    test = task.adata[obs.isin([*held, "control"]).to_numpy()].copy()

    def table(fit_names):
        n = min(10, len(fit_names) - 1)
        return smiles_embedding(task.smiles, n_components=n, fit_names=fit_names)

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cm.ConditionalMonge(config(args)).fit(
            task.adata, embeddings={"condition": table}, holdout=held
        )
        train_seconds = time.perf_counter() - start
        results = {
            name: summary(score(model, task, test, how))
            for name, how in (("single", None), ("mean", "mean"), ("mixture", "mixture"))
        }
    print(
        json.dumps(
            {
                "benchmark": NAME,
                "task": "sciplex_like drug-out",
                "drugs": len(task.drugs),
                "held_out_drugs": held,
                "held_out_conditions": int(len(held) * 2 * 2),
                "members": args.members,
                "steps": args.steps,
                "results": results,
                "train_seconds": round(train_seconds, 1),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
