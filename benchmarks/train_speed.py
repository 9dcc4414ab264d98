"""Training throughput at the default config on a synthetic task.

    python benchmarks/train_speed.py [--conditions 10] [--features 50] [--steps 200]

Prints one JSON line: compile time, steps/s, cells/s (cells mapped per second) and peak RSS.
"""

import argparse
import json
import resource
import time

import jax
import numpy as np

import condmonge as cm
from condmonge.datasets import spd_affine_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conditions", type=int, default=10)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--cells", type=int, default=None, help="cells per condition-batch")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    task = spd_affine_task(args.conditions, args.features, n_cells=1000, seed=0)
    overrides = {
        "train.steps": args.steps + 1,
        "train.progress": False,
        "train.patience": None,
        "train.validate_every": 10**6,
    }
    if args.cells:
        overrides["train.cells_per_condition"] = args.cells
    cfg = cm.Config().updated(overrides)
    model = cm.ConditionalMonge(cfg)
    # Time the first step (compile) apart from the rest by training in two calls.
    start = time.perf_counter()
    model.fit(task.adata, "condition", "control", steps=1)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(task.adata, "condition", "control", steps=args.steps + 1)
    total = time.perf_counter() - start
    # The second fit compiles again (new jit closure); subtract one compile.
    run_s = max(total - compile_s, 1e-9)
    steps_per_s = args.steps / run_s
    k, n = cfg.train.conditions_per_step, cfg.train.cells_per_condition
    print(
        json.dumps(
            {
                "benchmark": "train_speed",
                "device": jax.devices()[0].platform,
                "conditions": args.conditions,
                "features": args.features,
                "conditions_per_step": k,
                "cells_per_condition": n,
                "compile_s": round(compile_s, 2),
                "steps_per_s": round(steps_per_s, 2),
                "cells_per_s": round(steps_per_s * k * n, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "final_loss": float(np.round(model.history["loss"].iloc[-1], 4)),
            }
        )
    )


if __name__ == "__main__":
    main()
