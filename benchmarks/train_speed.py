"""Training-step throughput against the number of conditions K, cells n and features d.

    python benchmarks/train_speed.py [--conditions 10] [--cells 256] [--features 50] [--steps 20]
    python benchmarks/train_speed.py --grid [--quick] [--plot docs] [--steps 5]

One configuration: builds device-resident pools of K synthetic conditions (``--pool-cells`` cells
each) and times the real jitted training step of condmonge (sampling of k conditions x n cells,
Sinkhorn divergence + Monge gap of each, gradient, AdamW update). Prints one JSON line: compile
time (first call), steps/s and cells/s (cells mapped per second = k * n * steps/s, wall clock),
CPU seconds per step, peak RSS, traces of the step (1 = never recompiled), load average.

``--grid`` runs K in {10, 100, 1000} x n in {256, 1024} x d in {50, 1000}, each configuration in
its own process (its own peak RSS), and prints one JSON line holding every row; ``--plot DIR``
also writes ``DIR/train_speed_step_time.png`` and ``DIR/train_speed_memory.png``. A
configuration that fails or exceeds ``--timeout`` is recorded with the reason, not fatal.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

GRID = {"conditions": (10, 100, 1000), "cells": (256, 1024), "features": (50, 1000)}
QUICK_GRID = {"conditions": (10, 1000), "cells": (256,), "features": (50, 1000)}


def machine() -> dict:
    import jax

    return {
        "device": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "n_devices": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def synthetic_pools(n_conditions: int, pool_cells: int, n_features: int, seed: int = 0):
    """K conditions of ``pool_cells`` treated cells each, one control group; shifted Gaussians."""
    import numpy as np

    from condmonge.conditions.encoding import EncodedConditions
    from condmonge.data.prepare import CellPools

    rng = np.random.default_rng(seed)
    k, p, d = n_conditions, pool_cells, n_features
    features = rng.standard_normal((p * (k + 1), d), dtype=np.float32)
    shift = rng.normal(scale=1.0, size=(k, 1, d)).astype(np.float32)
    scale = rng.uniform(0.7, 1.3, size=(k, 1, d)).astype(np.float32)
    treated = features[p:].reshape(k, p, d)
    treated *= scale
    treated += shift
    counts = np.full(k, p, np.int32)
    pools = CellPools(
        features,
        np.arange(p, p * (k + 1), dtype=np.int32),
        (np.arange(k) * p).astype(np.int32),
        counts,
        np.arange(p, dtype=np.int32),
        np.zeros(k, np.int32),
        counts,
    )
    conditions = EncodedConditions(
        np.eye(k, dtype=np.float32)[:, None, :],
        np.zeros((k, 1), np.float32),
        np.ones((k, 1), np.float32),
        np.zeros((k, 0), np.float32),
    )
    return pools, conditions


def run_one(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from condmonge.config import Config
    from condmonge.models.networks import ConditionalResidualMap
    from condmonge.train.sharding import condition_mesh, replicate
    from condmonge.train.trainer import (
        TrainState,
        make_optimizer,
        make_train_step,
        use_scaling_domain,
    )

    k, n, d = args.conditions_per_step, args.cells, args.features
    cfg = Config().updated(
        {
            "train.conditions_per_step": k,
            "train.cells_per_condition": n,
            "train.precision": args.precision,
            "train.data_parallel": args.data_parallel,
            "loss.sinkhorn_scaling": False if args.log_domain else None,
        }
    )
    pools, conditions = synthetic_pools(args.conditions, args.pool_cells, d)
    module = ConditionalResidualMap(
        n_features=d, dtype=jnp.bfloat16 if args.precision == "bfloat16" else jnp.float32
    )
    optimizer = make_optimizer(cfg.train)
    one = jax.tree.map(lambda a: jnp.asarray(a[0]), conditions)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((2, d)), one)["params"]
    constants = {"feature_mean": jnp.zeros(d), "feature_scale": jnp.ones(d)}
    state = TrainState(
        jnp.zeros((), jnp.int32), params, constants, optimizer.init(params), jax.random.PRNGKey(1)
    )
    mesh = condition_mesh(k) if args.data_parallel else None
    state, pools, conditions = replicate((state, pools, conditions), mesh)
    if mesh is None:
        pools, conditions = jax.tree.map(jnp.asarray, (pools, conditions))
    traces = []
    step = make_train_step(module, optimizer, cfg.loss, cfg.train, lambda: traces.append(1), mesh)

    start = time.perf_counter()
    state, metrics = step(state, pools, conditions)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    fallbacks = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        state, metrics = step(state, pools, conditions)
        fallbacks += int(metrics["log_domain_fallback"])
    jax.block_until_ready((state, metrics))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps_per_s = args.steps / wall
    return {
        "benchmark": "train_speed",
        **machine(),
        "conditions": args.conditions,
        "cells_per_condition": n,
        "features": d,
        "conditions_per_step": k,
        "precision": args.precision,
        "data_parallel": bool(mesh is not None),
        "sinkhorn_scaling": use_scaling_domain(cfg.loss),
        "steps": args.steps,
        "compile_s": round(compile_s, 2),
        "step_ms": round(1000 * wall / args.steps, 1),
        "cpu_ms_per_step": round(1000 * cpu / args.steps, 1),
        "steps_per_s": round(steps_per_s, 3),
        "cells_per_s": round(steps_per_s * k * n, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "traces": len(traces),
        "log_domain_fallbacks": fallbacks,
        "final_loss": round(float(np.asarray(metrics["loss"])), 4),
    }


def run_grid(args: argparse.Namespace) -> dict:
    grid = dict(QUICK_GRID if args.quick else GRID)
    for key in grid:
        chosen = getattr(args, f"grid_{key}")
        if chosen:
            grid[key] = tuple(int(v) for v in chosen.split(","))
    rows = []
    for n_conditions, cells, features in itertools.product(
        grid["conditions"], grid["cells"], grid["features"]
    ):
        cmd = [
            sys.executable,
            __file__,
            "--conditions",
            str(n_conditions),
            "--cells",
            str(cells),
            "--features",
            str(features),
            "--steps",
            str(args.steps if cells <= 256 else max(2, args.steps // 2)),
            "--pool-cells",
            str(args.pool_cells),
            "--conditions-per-step",
            str(args.conditions_per_step),
            "--precision",
            args.precision,
        ] + (["--log-domain"] if args.log_domain else [])
        where = {"conditions": n_conditions, "cells_per_condition": cells, "features": features}
        if args.in_process:  # accelerator: one process, no per-config start-up (RSS cumulative)
            one = argparse.Namespace(**vars(args))
            one.conditions, one.cells, one.features = n_conditions, cells, features
            try:
                rows.append(run_one(one))
            except Exception as exc:  # e.g. out of device memory: record, go on
                rows.append({**where, "skipped": f"{type(exc).__name__}: {str(exc)[:200]}"})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            continue
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({**where, "skipped": f"exceeded --timeout {args.timeout}s"})
            continue
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["?"])[-1][:200]
            rows.append({**where, "skipped": f"exit {out.returncode}: {reason}"})
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"benchmark": "train_speed_grid", **machine(), "rows": rows}
    if args.plot:
        plot(rows, args.plot, args.plot_suffix)
    return result


def plot(rows: list[dict], folder: str, suffix: str = "") -> None:
    """Per-step time (CPU time on CPU, wall on accelerators) and peak RSS against K, per (n, d)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "step_ms" in r]
    platform = done[0]["device"] if done else "?"
    series = sorted({(r["cells_per_condition"], r["features"]) for r in done})
    # On a shared CPU wall time tracks the load of other processes; process CPU time does not
    # (it sums both cores: about 2x wall on a quiet 2-core machine).
    time_key, time_label = (
        ("cpu_ms_per_step", "process CPU time per training step (ms)")
        if platform == "cpu"
        else ("step_ms", "wall time per training step (ms)")
    )
    for key, label, name in (
        (time_key, time_label, "step_time"),
        ("peak_rss_mb", "peak RSS (MB)", "memory"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, d in series:
            pts = sorted(
                (r["conditions"], r[key])
                for r in done
                if (r["cells_per_condition"], r["features"]) == (n, d)
            )
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"n={n}, d={d}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("conditions K in the data")
        ax.set_ylabel(label)
        k = done[0]["conditions_per_step"] if done else "?"
        ax.set_title(f"condmonge training step, {k} conditions x n cells per step ({platform})")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        os.makedirs(folder, exist_ok=True)
        fig.savefig(os.path.join(folder, f"train_speed_{name}{suffix}.png"), dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, default=10, help="K: conditions in the data")
    parser.add_argument("--cells", type=int, default=256, help="n: cells per condition-batch")
    parser.add_argument("--features", type=int, default=50, help="d")
    parser.add_argument("--conditions-per-step", type=int, default=8, help="k")
    parser.add_argument("--pool-cells", type=int, default=200, help="cells per condition stored")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the first")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--data-parallel", action="store_true")
    parser.add_argument("--log-domain", action="store_true", help="loss.sinkhorn_scaling=false")
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--quick", action="store_true", help="grid subset (K 10/1000, n 256)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per grid config")
    parser.add_argument("--plot", default=None, help="folder for the grid's PNG plots")
    parser.add_argument("--plot-suffix", default="", help="e.g. _gpu")
    for key in GRID:
        parser.add_argument(f"--grid-{key}", default=None, help=f"comma list of {key} (grid)")
    parser.add_argument(
        "--in-process", action="store_true", help="grid in one process (for accelerators)"
    )
    args = parser.parse_args()
    print(json.dumps(run_grid(args) if args.grid else run_one(args)))


if __name__ == "__main__":
    main()
