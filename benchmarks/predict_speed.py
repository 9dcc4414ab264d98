"""Time ``ConditionalMonge.predict`` for 1, 10, 50 and 200 conditions on the same control cells.

    python benchmarks/predict_speed.py [--cells 1000] [--features 50] [--genes 0]

A model with the default network (hidden 128, 4 layers) is trained for a few steps on generated
data with doses, then asked for ``k`` distinct conditions (one drug at ``k`` doses) on ``--cells``
control cells. Each ``k`` is predicted once to compile and once timed. Prints one JSON line:
per ``k`` the warm seconds, seconds per 1,000 predicted cells (``seconds / (k * cells / 1000)``)
and the number of traces of the prediction apply so far. Target: the time per 1,000 cells flat
from 10 to 200 conditions, and one trace for 200 conditions. With ``--genes G`` the data have
G genes and the model trains in ``--features`` principal components (predictions in gene space).
"""

import argparse
import json
import os
import time

import anndata as ad
import numpy as np
import pandas as pd

import condmonge as cm
from condmonge.conditions.spec import Condition

COUNTS = (1, 10, 50, 200)


def _data(n_cells: int, width: int, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    shift = rng.normal(size=width)
    blocks, obs = [rng.normal(size=(n_cells, width))], [("control", 0.0)] * n_cells
    for dose in (1.0, 10.0):
        blocks.append(rng.normal(size=(200, width)) + np.log10(1 + dose) * shift)
        obs += [("A", dose)] * 200
    frame = pd.DataFrame(
        obs, columns=["condition", "dose"], index=[f"c{i}" for i in range(len(obs))]
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(width)])
    return ad.AnnData(np.concatenate(blocks).astype(np.float32), obs=frame, var=var)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--genes", type=int, default=0)
    args = parser.parse_args()
    width = args.genes or args.features
    overrides = {"train.steps": 3, "train.progress": False, "train.validate_every": 3}
    if args.genes:
        overrides["data.n_pca"] = args.features
    adata = _data(args.cells, width)
    model = cm.ConditionalMonge(cm.Config().updated(overrides))
    model.fit(adata, "condition", "control", dose_key="dose")
    controls = adata[adata.obs["condition"] == "control"].copy()
    rows = []
    for k in COUNTS:
        query = [Condition(("A",), (float(d),)) for d in np.linspace(0.5, 20.0, k)]
        model.predict(controls, query)  # compiles any new shape
        start = time.perf_counter()
        pred = model.predict(controls, query)
        seconds = time.perf_counter() - start
        assert pred.n_obs == k * args.cells
        rows.append(
            {
                "conditions": k,
                "seconds": round(seconds, 4),
                "seconds_per_1000_cells": round(seconds / (k * args.cells / 1000), 5),
                "traces_so_far": model.predict_traces,
            }
        )
    record = {
        "benchmark": "predict_speed",
        "cells": args.cells,
        "features": args.features,
        "genes": args.genes or None,
        "results": rows,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
