"""L2-UVP of the conditional map on synthetic SPD-affine tasks with known optimal maps.

    python benchmarks/synthetic_uvp.py [--conditions 5] [--features 10] [--steps 250]

Prints one JSON line: per-condition L2-UVP (%) of condmonge and of the identity map.
"""

import argparse
import json
import time

import numpy as np

import condmonge as cm
from condmonge.datasets import l2_uvp, spd_affine_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conditions", type=int, default=5)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = spd_affine_task(args.conditions, args.features, n_cells=1000, seed=args.seed)
    cfg = cm.Config().updated(
        {
            "train.steps": args.steps,
            "train.conditions_per_step": min(args.conditions, 8),
            "train.learning_rate": 3e-3,
            "train.progress": False,
            "train.patience": None,
            "train.seed": args.seed,
            "loss.sinkhorn_max_iterations": 30,
        }
    )
    start = time.perf_counter()
    model = cm.ConditionalMonge(cfg).fit(task.adata, "condition", "control")
    seconds = time.perf_counter() - start
    controls = task.adata[task.adata.obs["condition"] == "control"]
    x = np.asarray(controls.X)
    pred = model.predict(controls, task.names)
    uvp = {
        n: round(l2_uvp(np.asarray(pred[pred.obs["condition"] == n].X), task.true_map(n, x)), 2)
        for n in task.names
    }
    identity = {n: round(l2_uvp(x, task.true_map(n, x)), 2) for n in task.names}
    print(
        json.dumps(
            {
                "benchmark": "synthetic_uvp",
                "conditions": args.conditions,
                "features": args.features,
                "steps": args.steps,
                "train_seconds": round(seconds, 1),
                "l2_uvp": uvp,
                "l2_uvp_max": max(uvp.values()),
                "identity_l2_uvp": identity,
            }
        )
    )


if __name__ == "__main__":
    main()
