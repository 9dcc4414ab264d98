"""Higher moments: does the trained map keep the per-feature spread of the treated cells?

    python benchmarks/moments.py [--task scale|sciplex|norman] [--steps 600] [--seed 0]
        [--set loss.fit_epsilon=0.02 --set train.input_noise=0.1 ...]

Trains on a small development task and predicts its *training* conditions from the controls
(in distribution: the question is whether the fit itself blurs or shrinks the spread), then
compares per-feature variance and skewness of the prediction with the truth, against the
identity (the controls) and the mean shift (controls + the condition's true mean delta), both of
which carry the controls' spread. Tasks:

- ``scale``: d = 20 Gaussian controls; condition ``s<i>`` is the control population scaled by a
  known factor (0.6 to 1.6) about a shifted mean, so the variance change is known;
- ``sciplex``: sci-Plex-like (generator seed 11, one cell type, 8 drugs x 2 doses, d = 50);
- ``norman``: Norman K562 in 20 PCs, training on every K562 condition except the 5 reported
  test pairs of ``examples/norman_combination.yaml`` (never evaluated here).

Prints one JSON line: per method, the mean over conditions of ``r2_var``, ``mae_var``,
``r2_skew``, ``mae_skew`` and ``var_ratio`` (median over features of predicted / true variance:
below 1 is shrinkage; over features whose true variance is not ~0).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

import _gen  # noqa: F401  (sets one JAX CPU device per core on import)
from condmonge import ConditionalMonge
from condmonge.config import Config
from condmonge.datasets import norman_mcfaline, sciplex_like
from condmonge.evaluate.metrics import moment_errors, weighted_moments

NAME = "moments"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "norman_combination.yaml"


def scale_task(seed: int = 0, d: int = 20, n: int = 400) -> ad.AnnData:
    """Controls ``N(m, diag(s^2))`` and 6 conditions ``y = m + delta + a (x - m)``, known ``a``."""
    rng = np.random.default_rng(seed)
    mean, sd = rng.normal(0, 1, d), rng.uniform(0.5, 1.5, d)
    blocks, labels = [mean + sd * rng.normal(size=(n, d))], ["control"] * n
    for i, factor in enumerate((0.6, 0.8, 1.2, 1.4, 1.5, 1.6)):
        x = mean + sd * rng.normal(size=(n, d))
        blocks.append(mean + rng.normal(0, 0.7, d) + factor * (x - mean))
        labels += [f"s{i}"] * n
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(np.vstack(blocks).astype(np.float32), obs=obs)


def task_data(task: str) -> tuple[ad.AnnData, dict, list[str]]:
    """The task's cells, its data section and the obs columns of a condition."""
    if task == "scale":
        return scale_task(), {"modality": "generic"}, ["condition"]
    if task == "sciplex":
        t = sciplex_like(n_drugs=8, doses=(100, 10000), cell_types=("A549",), n_cells=150,
                         seed=11)  # fmt: skip
        return t.adata, {"dose_key": "dose", "modality": "generic"}, ["condition", "dose"]
    adata = norman_mcfaline()
    test = set(yaml.safe_load(EXAMPLE.read_text())["split"]["holdout"])
    keep = (adata.obs["cell_type"] == "k562") & ~adata.obs["condition"].isin(test)
    return adata[keep.to_numpy()].copy(), {"n_pca": 20}, ["condition"]


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Moment errors of one condition, plus the median variance ratio."""
    out = {k: float(v) for k, v in moment_errors(pred, true).items() if "kurt" not in k}
    vp, vt = weighted_moments(pred)[1], weighted_moments(true)[1]
    vp, vt = np.asarray(vp), np.asarray(vt)
    varies = vt > 1e-6 * max(float(vt.max()), 1e-12)  # unexpressed genes have no ratio
    out["var_ratio"] = float(np.median(vp[varies] / vt[varies]))
    return out


def evaluate(model: ConditionalMonge, adata: ad.AnnData, keys: list[str]) -> dict:
    """Mean moment scores over the training conditions, for the model and two baselines."""
    is_control = (adata.obs["condition"] == "control").to_numpy()
    controls, x = adata[is_control], dense(adata[is_control].X)
    query = adata.obs.loc[~is_control, keys].drop_duplicates().reset_index(drop=True)
    pred = model.predict(controls, query)
    assert pred.n_obs == len(query) * len(x)
    rows = {"condmonge": [], "identity": [], "mean_shift": []}
    for i, row in query.iterrows():
        mask = np.ones(adata.n_obs, bool) & ~is_control
        for key in keys:
            mask &= (adata.obs[key] == row[key]).to_numpy()
        true = dense(adata.X[mask])
        mapped = dense(pred.X[i * len(x) : (i + 1) * len(x)])  # one block per query row
        rows["condmonge"].append(scores(mapped, true))
        rows["identity"].append(scores(x, true))
        rows["mean_shift"].append(scores(x + true.mean(0) - x.mean(0), true))
    return {m: pd.DataFrame(r).mean().round(4).to_dict() for m, r in rows.items()}


def parse_value(text: str):
    return yaml.safe_load(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["scale", "sciplex", "norman"], default="scale")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    adata, data, keys = task_data(args.task)
    overrides = {f"data.{k}": v for k, v in data.items()}
    overrides |= {"train.steps": args.steps, "train.seed": args.seed, "train.progress": False,
                  "train.checkpoint_every": 10**6, "train.learning_rate": 0.003}  # fmt: skip
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    config = Config().updated(overrides)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ConditionalMonge(config).fit(adata, "condition", "control")
        result = evaluate(model, adata, keys)
    print(json.dumps({"benchmark": NAME, "task": args.task, "steps": args.steps,
                      "seed": args.seed, "set": args.set, "methods": result,
                      "seconds": round(time.perf_counter() - start, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
