"""Training from a sparse ``.h5ad`` larger than memory (backed AnnData, streaming PCA).

    python benchmarks/large_data.py [--cells 200000] [--genes 2000] [--conditions 50]
                                    [--steps 300] [--workdir DIR]
    python benchmarks/large_data.py --cells 1000000   # 1M cells x 2,000 genes (8 GB dense)

Writes (once per size, in ``--workdir``, default a folder under the system temp dir) a synthetic
CSR ``.h5ad`` chunk by chunk: cells are a 10-d latent state (controls: 3 clusters; condition j:
a per-condition diagonal affine map of it) pushed through a random ReLU read-out to ``--genes``
genes, ~``--density`` non-zero. Then opens it with ``read_h5ad(backed="r")`` and fits
``ConditionalMonge`` with ``data.n_pca`` (two streaming passes over X, see
``condmonge.data.backed``), and predicts two conditions in gene space from 2,000 control cells
loaded in memory. Prints one JSON line: sizes, write / fit / predict seconds, peak RSS and the
Pearson correlation of predicted and observed mean expression change (treated - control) over
all genes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def write_synthetic(path: Path, args: argparse.Namespace) -> dict:
    """Write the synthetic sparse h5ad in chunks of ``args.chunk`` cells; never all in memory."""
    import pandas as pd
    import scipy.sparse as sp

    from _h5ad import write_sparse_h5ad

    rng = np.random.default_rng(args.seed)
    n, g, k, q = args.cells, args.genes, args.conditions, 10
    n_control = n // (k + 1) + n % (k + 1)
    treated = np.repeat(np.arange(1, k + 1, dtype=np.int32), n // (k + 1))
    labels = np.concatenate([np.zeros(n_control, np.int32), treated])
    rng.shuffle(labels)
    names = np.array(["control"] + [f"drug_{j}" for j in range(k)])
    centres = rng.normal(scale=1.5, size=(3, q))
    scale = rng.uniform(0.6, 1.5, size=(k + 1, q))
    shift = rng.normal(scale=0.8, size=(k + 1, q))
    scale[0], shift[0] = 1.0, 0.0
    readout = rng.normal(size=(q, g)) / np.sqrt(q)
    pre = (centres[rng.integers(0, 3, 5000)] + rng.normal(size=(5000, q))) @ readout
    threshold = float(np.quantile(pre, 1 - args.density))
    obs = pd.DataFrame(
        {"condition": pd.Categorical.from_codes(labels, categories=names)},
        index=pd.Index([f"cell{i}" for i in range(n)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{j}" for j in range(g)]))

    def blocks():
        for start in range(0, n, args.chunk):
            lab = labels[start : start + args.chunk]
            z = centres[rng.integers(0, 3, lab.size)] + rng.normal(size=(lab.size, q))
            z = z * scale[lab] + shift[lab]
            x = z @ readout - threshold + rng.normal(scale=0.1, size=(lab.size, g))
            yield sp.csr_matrix(np.maximum(x, 0.0).astype(np.float32))

    nnz = write_sparse_h5ad(path, obs, var, blocks())
    return {"nnz": int(nnz), "density": round(nnz / (n * g), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--conditions", type=int, default=50)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--n-pca", type=int, default=50)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=20_000, help="cells per written chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import anndata as ad

    import condmonge as cm

    workdir = args.workdir or Path(tempfile.gettempdir()) / "condmonge-large-data"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"synthetic_{args.cells}x{args.genes}_k{args.conditions}_s{args.seed}.h5ad"
    out: dict = {
        "benchmark": "large_data",
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "cells": args.cells,
        "genes": args.genes,
        "conditions": args.conditions,
        "dense_float32_gb": round(args.cells * args.genes * 4 / 2**30, 2),
    }
    start = time.perf_counter()
    if not path.exists():
        tmp = path.with_suffix(".partial")
        out.update(write_synthetic(tmp, args))
        tmp.rename(path)
        out["write_s"] = round(time.perf_counter() - start, 1)
    out["file_gb"] = round(path.stat().st_size / 2**30, 2)

    backed = ad.read_h5ad(path, backed="r")
    cfg = cm.Config().updated(
        {
            "data.n_pca": args.n_pca,
            "train.steps": args.steps,
            "train.progress": False,
            "train.patience": None,
        }
    )
    start = time.perf_counter()
    model = cm.ConditionalMonge(cfg).fit(backed, "condition", "control")
    out["fit_s"] = round(time.perf_counter() - start, 1)
    out["rss_after_fit_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    labels = backed.obs["condition"].astype(str).to_numpy()
    rng = np.random.default_rng(1)

    def sample(rows: np.ndarray) -> np.ndarray:
        return np.sort(rng.choice(rows, min(2000, rows.size), replace=False))

    control_rows = sample(np.flatnonzero(labels == "control"))
    controls = backed[control_rows].to_memory()
    start = time.perf_counter()
    names = ["drug_0", "drug_1"]
    pred = model.predict(controls, names)
    out["predict_s"] = round(time.perf_counter() - start, 1)
    x_ctrl = np.asarray(controls.X.toarray())
    corr = {}
    for name in names:
        rows = sample(np.flatnonzero(labels == name))
        observed = np.asarray(backed[rows].to_memory().X.toarray()).mean(0) - x_ctrl.mean(0)
        predicted = np.asarray(pred[pred.obs["condition"] == name].X).mean(0) - x_ctrl.mean(0)
        corr[name] = round(float(np.corrcoef(observed, predicted)[0, 1]), 4)
    out["mean_delta_pearson"] = corr
    out["prediction_shape"] = list(pred.shape)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    backed.file.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
