"""Leaderboard of the baselines on held-out Norman19 combinations, with the published metrics.

    python benchmarks/eval_leaderboard.py [--out-dir docs] [--max-cells 500]

Data: the shipped PerturBench development subset (Norman19 K562 CRISPRa part, log-normalised
expression of 500 genes). Every two-gene combination is held out: the baselines (identity,
mean shift, additive, linear) are fitted on the single perturbations and half of the controls,
and predict the combinations from the other half of the controls; ``score_predictions`` scores
them against the observed combination cells. Writes ``eval_leaderboard.png`` (methods x
metrics, coloured by rank) and ``eval_scatter.png`` (per-condition predicted vs true mean delta
of the top-20 DE genes) to ``--out-dir`` and prints one JSON line with the mean of each metric.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from condmonge.config import DataConfig
from condmonge.datasets import norman_mcfaline
from condmonge.evaluate.figures import (
    LEADERBOARD_METRICS,
    common_conditions,
    leaderboard,
    plot_leaderboard,
    plot_scatter,
)
from condmonge.evaluate.scoring import baseline_predictions, score_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    parser.add_argument("--max-cells", type=int, default=500)
    args = parser.parse_args()
    adata = norman_mcfaline()
    adata = adata[(adata.obs["dataset"] == "norman19").to_numpy()].copy()
    labels = adata.obs["condition"].astype(str).to_numpy()
    is_combo = np.char.find(labels.astype(str), "+") >= 0
    is_ctrl = labels == "control"
    rng = np.random.default_rng(0)
    query_ctrl = is_ctrl & (rng.random(len(labels)) < 0.5)
    train = adata[~is_combo & ~query_ctrl].copy()
    truth = adata[is_combo | query_ctrl].copy()
    cfg = DataConfig(condition_key="condition", control="control")
    start = time.perf_counter()
    preds = baseline_predictions(
        train, truth, cfg, ("identity", "mean_shift", "additive", "linear")
    )
    table = score_predictions(preds, truth, cfg, max_cells=args.max_cells)
    seconds = time.perf_counter() - start
    plot_leaderboard(table, args.out_dir / "eval_leaderboard.png")
    plot_scatter(table, args.out_dir / "eval_scatter.png", max_panels=8)
    board = leaderboard(table, LEADERBOARD_METRICS)
    record = {
        "benchmark": "eval_leaderboard",
        "conditions_scored": int(table["condition"].nunique()),
        "conditions_all_methods": len(common_conditions(table)),
        "genes": int(table.attrs["n_genes"]),
        "seconds": round(seconds, 1),
        "leaderboard": {
            m: {k: round(float(v), 4) for k, v in row.items()} for m, row in board.iterrows()
        },
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
