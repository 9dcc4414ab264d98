"""Unseen combinations: Norman/McFaline combination-out (the 5 eligible K562 gene pairs).

    python benchmarks/gen_norman_combinations.py [--steps 600] [--seeds 0,1,2] [--oracle]
        [--out runs/gen_norman_combinations]

The held-out pairs are those whose two single perturbations are both measured (the only ones
the additive baseline can predict; ``examples/norman_combination.yaml``); training in 20 PCs.
condmonge vs additive, mean-shift, linear and identity on r2_delta_top20, energy distance and
MMD. ``--steps 1500`` is the longer run (worse: see docs/RESULTS.md). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import yaml

from _gen import MODEL, nested, pool, run, train_section, write_report

METRICS = ["r2_delta_top20", "r2_delta_all", "energy_distance", "mmd_rbf"]
NAME = "gen_norman_combinations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--oracle", action="store_true", help="add the monge_gap oracle")
    parser.add_argument("--out", default=f"runs/{NAME}")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs in --out")
    args = parser.parse_args()
    out = Path(args.out)
    example = Path(__file__).resolve().parents[1] / "examples" / "norman_combination.yaml"
    base = yaml.safe_load(example.read_text())
    base["baselines"] = ["identity", "mean_shift", "additive", "linear"] + (
        ["monge_gap"] if args.oracle else []
    )
    start = time.perf_counter()
    frames = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        tree = dict(base)
        tree["model"] = dict(base["model"], train=train_section(args.steps, 128, 8, seed))
        rows, _ = run(tree, out / f"seed{seed}", f"seed{seed}")
        frames.append(rows)
    import pandas as pd

    rows = pd.concat(frames)
    summary = pool(rows, METRICS)
    seconds = time.perf_counter() - start
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    wins = {}
    model = rows[rows["method"] == MODEL].set_index(["run", rows.index[rows["method"] == MODEL]])
    for rival in ("additive", "mean_shift"):
        other = rows[rows["method"] == rival].set_index(
            ["run", rows.index[rows["method"] == rival]]
        )
        wins[rival] = int((model["r2_delta_top20"] > other["r2_delta_top20"]).sum())
    write_report(
        out, "Unseen combinations: Norman/McFaline combination-out", command, summary, METRICS,
        rows, seconds,
        [f"condmonge beats {k} on r2_delta_top20 in {v} of {len(model)} (condition, seed) pairs"
         for k, v in wins.items()],
    )  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": NAME,
                "steps": args.steps,
                "seeds": args.seeds,
                "test_conditions": sorted(set(rows["label"])),
                "summary": nested(summary, METRICS),
                "model_beats_on_r2_delta_top20": {**wins, "of": len(model)},
                "seconds": round(seconds, 1),
                "report": str(out / "report.md"),
            }
        )
    )


if __name__ == "__main__":
    main()
