"""Scaling: accuracy on a fixed set of unseen drugs as the number of training drugs grows.

    python benchmarks/gen_scaling.py [--sizes 10,30,100,300] [--unseen 20] [--steps 1500]
        [--cells 100] [--out runs/gen_scaling] [--plot docs/gen_scaling.png]

One synthetic convex task (``condmonge.datasets.convex_task``: known non-affine OT maps driven
by an 8-dimensional drug embedding that every method is given) with ``max(sizes) + unseen``
drugs. The last ``--unseen`` drugs are always the test set; training uses the first N of the
others (nested sets) and the same number of steps for every N. Training and test controls are
disjoint halves. condmonge vs identity, mean_shift (nearest training drug) and linear (ridge
from the embedding to the mean shift): L2-UVP (%) and r2_delta_all on the unseen drugs.
Prints one JSON line; writes the curve to ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from _gen import MODEL, nested, pool, write_report

NAME = "gen_scaling"
METRICS = ["l2_uvp", "r2_delta_all", "energy_distance"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,30,100,300")
    parser.add_argument("--unseen", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--cells", type=int, default=100, help="cells per drug (and controls)")
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=f"runs/{NAME}")
    parser.add_argument("--plot", default="docs/gen_scaling.png")
    args = parser.parse_args()

    import condmonge as cm
    from condmonge.data.anndata_io import feature_matrix
    from condmonge.datasets import convex_task
    from condmonge.evaluate.baselines import make_baseline
    from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets

    sizes = sorted(int(s) for s in args.sizes.split(","))
    task = convex_task(
        n_conditions=max(sizes) + args.unseen,
        n_features=args.features,
        n_cells=2 * args.cells,
        embedding_dim=8,
        n_unseen=args.unseen,
        seed=args.seed,
    )
    adata = task.adata
    condition = adata.obs["condition"].astype(str).to_numpy()
    is_control = condition == "control"
    rng = np.random.default_rng(args.seed)
    test_control = is_control & (rng.random(adata.n_obs) < 0.5)
    # Half of each drug's cells (the truth does not need more; training gets the same count).
    keep = ~is_control & (rng.random(adata.n_obs) < 0.5)
    test = adata[test_control | (keep & np.isin(condition, task.unseen))].copy()
    embeddings = {"condition": task.embeddings}
    cfg = cm.Config().updated(
        {
            "train.steps": args.steps,
            "train.learning_rate": 0.003,
            "train.cells_per_condition": 64,
            "train.conditions_per_step": 8,
            "train.validate_every": max(args.steps // 3, 1),
            "train.progress": False,
            "train.seed": args.seed,
        }
    )
    truth = truth_sets(test, cfg.data)
    conditions = list(truth.conditions.values())
    sources = feature_matrix(test)

    def true_map(cond, x):
        return task.true_map(cond.label(), x)

    start = time.perf_counter()
    frames, train_seconds = [], {}
    for n in sizes:
        names = task.seen[:n]
        train = adata[(is_control & ~test_control) | (keep & np.isin(condition, names))].copy()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cm.ConditionalMonge(cfg).fit(
                train, "condition", "control", embeddings=embeddings
            )
        train_seconds[n] = round(time.perf_counter() - t0, 1)
        predictions = {MODEL: model.predict(test, conditions)}
        for name in ("identity", "mean_shift", "linear"):
            baseline = make_baseline(name).fit(train, embeddings=embeddings)
            predictions[name] = baseline.predict(test, conditions)
        for method, pred in predictions.items():
            rows = evaluate_prediction(
                pred, truth, cfg.data, method=method, true_map=true_map, sources=sources,
                max_cells=200, seed=args.seed,
            )  # fmt: skip
            rows.insert(0, "train_drugs", n)
            frames.append(rows)
    rows = pd.concat(frames)
    summary = pool(rows, METRICS, by=["train_drugs"])
    seconds = time.perf_counter() - start
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    plot = Path(args.plot)
    _plot(summary, plot)
    out = Path(args.out)
    write_report(
        out, "Scaling with the number of training drugs (synthetic convex task)", command,
        summary, METRICS, rows, seconds,
        [f"{args.unseen} fixed unseen drugs; training seconds per size: {train_seconds}",
         f"![curve]({plot.resolve()})"],
    )  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": NAME,
                "sizes": sizes,
                "unseen": args.unseen,
                "steps": args.steps,
                "summary": nested(summary, ["l2_uvp", "r2_delta_all"]),
                "train_seconds": train_seconds,
                "seconds": round(seconds, 1),
                "plot": str(plot),
                "report": str(out / "report.md"),
            }
        )
    )


def _plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = summary.reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric, label in (
        (axes[0], "l2_uvp", "L2-UVP (%) on unseen drugs (lower is better)"),
        (axes[1], "r2_delta_all", "R² of mean delta on unseen drugs"),
    ):
        for method, group in frame.groupby("method", sort=False):
            ax.errorbar(
                group["train_drugs"], group[metric], yerr=group[metric + "_sd"], marker="o",
                capsize=3, label=method,
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("training drugs")
        ax.set_title(label, fontsize=9)
    axes[0].set_yscale("log")
    axes[1].set_ylim(-0.5, 1.05)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
