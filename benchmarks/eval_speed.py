"""Time the evaluation of many conditions at once: every metric, cold (compilation included).

    python benchmarks/eval_speed.py [--conditions 200] [--cells 500] [--features 50]

Two timings in one process: ``evaluate_populations`` (the distribution and mean metrics of
``condmonge.evaluate.metrics``) on arrays, then ``score_predictions`` (all of them plus the
published benchmark metrics and the DE test on truth and prediction, see docs/METRICS.md) on
AnnData with one shared control population. The second is the cost of ``condmonge evaluate``.
A third timing scores with the published metrics and DE only (``distributions=False``): the
cost the issue-14 metrics add. Prints one JSON line with wall and CPU seconds (CPU seconds of
all threads: less sensitive to other users of a shared machine), the load average and cores.
Target: the full scoring of 200 conditions x 500 cells x 50 features under 10 s.
"""

import argparse
import json
import os
import time

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.config import DataConfig
from condmonge.evaluate.metrics import evaluate_populations
from condmonge.evaluate.scoring import score_predictions


def _anndata(blocks, labels, genes):
    obs = pd.DataFrame({"condition": np.concatenate(labels)})
    obs.index = [f"c{i}" for i in range(len(obs))]
    return ad.AnnData(np.concatenate(blocks), obs=obs, var=pd.DataFrame(index=genes))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conditions", type=int, default=200)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    k, n, d = args.conditions, args.cells, args.features
    control = rng.normal(size=(n, d)).astype(np.float32)
    truths = [control + rng.normal(size=d).astype(np.float32) for _ in range(k)]
    truths = [t + 0.3 * rng.normal(size=t.shape).astype(np.float32) for t in truths]
    preds = [
        (control + 0.8 * (t.mean(0) - control.mean(0)) + 0.2 * rng.normal(size=(n, d))).astype(
            np.float32
        )
        for t in truths
    ]
    names = [f"drug_{i}" for i in range(k)]
    start, cpu = time.perf_counter(), time.process_time()
    table = evaluate_populations(
        preds, truths, [control] * k, names, chunk_size=args.chunk_size, max_cells=n
    )
    populations, populations_cpu = time.perf_counter() - start, time.process_time() - cpu
    genes = [f"gene{j}" for j in range(d)]
    truth = _anndata([control, *truths], [["control"] * n, *([m] * n for m in names)], genes)
    pred = _anndata(preds, [[m] * n for m in names], genes)
    start, cpu = time.perf_counter(), time.process_time()
    published = score_predictions({"model": pred}, truth, DataConfig(), max_cells=n,
                                  distributions=False)  # fmt: skip
    published_s, published_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    scores = score_predictions({"model": pred}, truth, DataConfig(), max_cells=n)
    full, full_cpu = time.perf_counter() - start, time.process_time() - cpu
    ids = ("method", "condition", "label", "cell_type", "n_pred", "n_true")
    metrics = [c for c in scores.columns if c not in ids]
    record = {
        "benchmark": "eval_speed",
        "conditions": k,
        "cells": n,
        "features": d,
        "seconds_populations_cold": round(populations, 2),
        "cpu_seconds_populations_cold": round(populations_cpu, 2),
        "seconds_published_metrics_and_de_only": round(published_s, 2),
        "cpu_seconds_published_metrics_and_de_only": round(published_cpu, 2),
        "published_columns": len(published.columns) - 6,
        "seconds_score_predictions_all_metrics": round(full, 2),
        "cpu_seconds_score_predictions_all_metrics": round(full_cpu, 2),
        "metrics": len(metrics),
        "ms_per_condition_all_metrics": round(1000 * full / k, 1),
        "finite_share": round(float(np.isfinite(scores[metrics].to_numpy(float)).mean()), 3),
        "finite_populations": bool(np.isfinite(table.to_numpy()).all()),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
