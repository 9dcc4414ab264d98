"""L2-UVP with float32 against bfloat16 matmuls (``train.precision``), same task, same seed.

    python benchmarks/precision_uvp.py [--conditions 10] [--features 50] [--steps 1000]

Prints one JSON line: mean L2-UVP (%) of each precision, their relative difference (the option
is acceptable when it is within 10%), training seconds of each and the identity map's L2-UVP.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

import condmonge as cm
from condmonge.datasets import l2_uvp, spd_affine_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conditions", type=int, default=10)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = spd_affine_task(args.conditions, args.features, n_cells=1000, seed=args.seed)
    controls = task.adata[task.adata.obs["condition"] == "control"]
    x = np.asarray(controls.X)
    out = {
        "benchmark": "precision_uvp",
        "device": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "conditions": args.conditions,
        "features": args.features,
        "steps": args.steps,
        "identity_l2_uvp": round(
            float(np.mean([l2_uvp(x, task.true_map(n, x)) for n in task.names])), 2
        ),
    }
    for precision in ("float32", "bfloat16"):
        cfg = cm.Config().updated(
            {
                "train.steps": args.steps,
                "train.precision": precision,
                "train.progress": False,
                "train.patience": None,
                "train.seed": args.seed,
            }
        )
        start = time.perf_counter()
        model = cm.ConditionalMonge(cfg).fit(task.adata, "condition", "control")
        seconds = time.perf_counter() - start
        pred = model.predict(controls, task.names)
        uvp = np.mean(
            [
                l2_uvp(np.asarray(pred[pred.obs["condition"] == n].X), task.true_map(n, x))
                for n in task.names
            ]
        )
        out[f"l2_uvp_{precision}"] = round(float(uvp), 3)
        out[f"train_s_{precision}"] = round(seconds, 1)
    out["relative_difference"] = round(
        abs(out["l2_uvp_bfloat16"] - out["l2_uvp_float32"]) / out["l2_uvp_float32"], 4
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
