"""Time every metric of `condmonge.evaluate` on many conditions at once.

    python benchmarks/eval_speed.py [--conditions 200] [--cells 500] [--features 50]

Prints one JSON line: total seconds (including compilation), compile seconds (first chunk),
seconds per condition, the machine's load average and core count. Target: < 30 s for
200 conditions x 500 cells x 50 features on 2 CPU cores.
"""

import argparse
import json
import os
import time

import numpy as np

from condmonge.evaluate.metrics import evaluate_populations


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conditions", type=int, default=200)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    k, n, d = args.conditions, args.cells, args.features
    controls = [rng.normal(size=(n, d)).astype(np.float32) for _ in range(k)]
    truths = [c + rng.normal(size=d).astype(np.float32) for c in controls]
    preds = [
        (c + 0.8 * (t.mean(0) - c.mean(0)) + 0.2 * rng.normal(size=(n, d))).astype(np.float32)
        for c, t in zip(controls, truths, strict=True)
    ]
    names = [f"drug_{i}" for i in range(k)]
    start = time.perf_counter()
    evaluate_populations(
        preds[: args.chunk_size],
        truths[: args.chunk_size],
        controls[: args.chunk_size],
        names[: args.chunk_size],
        chunk_size=args.chunk_size,
        max_cells=n,
    )
    compile_and_first = time.perf_counter() - start
    start = time.perf_counter()
    table = evaluate_populations(
        preds, truths, controls, names, chunk_size=args.chunk_size, max_cells=n
    )
    warm = time.perf_counter() - start
    record = {
        "benchmark": "eval_speed",
        "conditions": k,
        "cells": n,
        "features": d,
        "metrics": int(table.shape[1]),
        "seconds_total_cold": round(compile_and_first + warm, 2),
        "seconds_first_chunk_with_compile": round(compile_and_first, 2),
        "seconds_warm": round(warm, 2),
        "ms_per_condition_warm": round(1000 * warm / k, 1),
        "finite": bool(np.isfinite(table.to_numpy()).all()),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
