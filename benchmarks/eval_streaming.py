"""Stream the scoring of a large prediction from backed ``.h5ad`` files (bounded memory).

    python benchmarks/eval_streaming.py [--conditions 2000] [--cells 1000] [--genes 2000]
                                        [--controls 5000] [--density 0.1] [--max-cells 500]
                                        [--distributions] [--workdir DIR]

Writes (once per size, in ``--workdir``) a truth and a prediction as sparse CSR float32 ``.h5ad``
files, chunk by chunk in a child process, cells grouped by condition: a Gaussian noise bank
shifted per condition on 50 genes and thresholded to ~``--density`` non-zeros (the prediction:
other noise rows, 0.8 x the shift). Then opens both with ``read_h5ad(backed="r")`` and runs
``score_predictions`` with a progress bar (stderr), 32 conditions in memory at a time. The
distribution metrics (Sinkhorn, MMD, ... in 2,000 dimensions) are off unless
``--distributions``. Prints one JSON line: sizes, file sizes, write and score seconds, the peak
RSS of the scoring process (the writer's is separate), load averages, and a sanity value.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _write(path: Path, args: argparse.Namespace, prediction: bool) -> None:
    """Write one sparse h5ad, ``--chunk`` conditions at a time; never all in memory."""
    import pandas as pd
    import scipy.sparse as sp

    from _h5ad import write_sparse_h5ad

    rng = np.random.default_rng(args.seed)  # same shifts for truth and prediction
    k, n, g = args.conditions, args.cells, args.genes
    shifts = np.zeros((k, g), np.float32)
    for j in range(k):
        shifts[j, rng.choice(g, 50, replace=False)] = rng.choice([-1.5, 2.0], 50)
    bank = rng.normal(size=(20_000, g)).astype(np.float32)
    threshold = float(-np.quantile(rng.normal(size=100_000), 1 - args.density))
    noise = np.random.default_rng(args.seed + 1 + int(prediction))
    labels = ([] if prediction else ["control"] * args.controls) + [
        f"drug_{j}" for j in range(k) for _ in range(n)
    ]
    obs = pd.DataFrame({"condition": pd.Categorical(labels)})
    obs.index = [f"cell{i}" for i in range(len(labels))]
    var = pd.DataFrame(index=[f"gene{j}" for j in range(g)])

    def block(j):  # j = -1: control cells
        rows = noise.integers(0, len(bank), args.controls if j < 0 else n)
        x = bank[rows] + threshold
        if j >= 0:
            x += (0.8 if prediction else 1.0) * shifts[j]
        return sp.csr_matrix(np.maximum(x, 0.0))

    order = ([] if prediction else [-1]) + list(range(k))
    chunks = (
        sp.vstack([block(j) for j in order[start : start + args.chunk]]).tocsr()
        for start in range(0, len(order), args.chunk)
    )
    write_sparse_h5ad(path, obs, var, chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, default=2000)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--controls", type=int, default=5000)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--max-cells", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=20, help="conditions per written chunk")
    parser.add_argument("--distributions", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.gettempdir()) / "condmonge-eval-streaming"
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.conditions}x{args.cells}x{args.genes}_d{args.density}_s{args.seed}"
    paths = {side: workdir / f"{side}_{tag}.h5ad" for side in ("truth", "pred")}
    record: dict = {"benchmark": "eval_streaming", "cpu_count": os.cpu_count(),
                    "loadavg_start": [round(v, 2) for v in os.getloadavg()],
                    "conditions": args.conditions, "cells": args.cells, "genes": args.genes,
                    "controls": args.controls, "max_cells": args.max_cells,
                    "distributions": args.distributions}  # fmt: skip
    start = time.perf_counter()
    for side, path in paths.items():
        if not path.is_file():
            # A child process: the writer's memory is not counted in the scorer's peak RSS.
            child = multiprocessing.get_context("fork").Process(
                target=_write, args=(path, args, side == "pred")
            )
            child.start()
            child.join()
    record["write_seconds"] = round(time.perf_counter() - start, 1)
    record["file_gb"] = {s: round(p.stat().st_size / 2**30, 2) for s, p in paths.items()}
    record["dense_float32_gb_per_file"] = round(
        args.conditions * args.cells * args.genes * 4 / 2**30, 1
    )

    import anndata as ad

    from condmonge.config import DataConfig
    from condmonge.evaluate.scoring import score_predictions

    truth = ad.read_h5ad(paths["truth"], backed="r")
    pred = ad.read_h5ad(paths["pred"], backed="r")
    start = time.perf_counter()
    table = score_predictions(
        {"pred": pred}, truth, DataConfig(), max_cells=args.max_cells,
        distributions=args.distributions, chunk_conditions=32, progress=True,
    )  # fmt: skip
    record["score_seconds"] = round(time.perf_counter() - start, 1)
    record["scored_conditions"] = int(len(table))
    record["peak_rss_gb_scoring_process"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
    )
    record["mean_pearson_delta"] = round(float(table["pearson_delta"].mean()), 4)
    record["mean_de_overlap_at_N"] = round(float(table["de_overlap_at_N"].mean()), 4)
    record["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(record))


if __name__ == "__main__":
    main()
