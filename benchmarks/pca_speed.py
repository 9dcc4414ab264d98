"""Seconds of `condmonge.data.pca.fit_pca` (data.n_pca) on wide data; prints one JSON line.

Cases:
- ``kang``: Kang et al. 2018 PBMCs (1,975 cells x 6,998 genes, CSR; read from ../shared when
  present), ``solver="auto"`` (exact thin SVD here), plus the randomized solver on the same data
  and its largest deviation from the exact leading components;
- ``cells_7k``: 20,000 cells x 7,000 genes, CSR, randomized solver;
- ``cells_20k``: 100,000 cells x 20,000 genes, CSR at ``--density`` (default 5 %), randomized.

Synthetic cells: every cell belongs to one of 12 clusters with 200 marker genes each; a cell has
``density * genes`` nonzeros, 90 % at uniform genes (values in (0, 1]) and 10 % among its
cluster's markers (values in (2, 3]). ``--old`` also times the previous full eigendecomposition of
the ``[d, d]`` covariance on Kang (about two minutes).

Usage: ``nice python benchmarks/pca_speed.py [--cases kang,cells_7k,cells_20k] [--old]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from condmonge.data.pca import fit_pca, principal_axes

KANG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
KANG_FILE = "kang2018_pbmc_ifnb_scgen_valid.h5ad"


def synthetic_cells(n: int, d: int, density: float, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    per_row = max(int(density * d), 10)
    n_marker = max(per_row // 10, 1)
    markers = rng.choice(d, size=(12, 200))
    cluster = rng.integers(0, 12, n)
    cols = np.concatenate(
        [
            rng.integers(0, d, (n, per_row - n_marker), dtype=np.int32),
            markers[cluster[:, None], rng.integers(0, 200, (n, n_marker))].astype(np.int32),
        ],
        axis=1,
    )
    values = rng.random((n, per_row), dtype=np.float32)
    values[:, per_row - n_marker :] += 2.0
    order = np.argsort(cols, axis=1)
    cols = np.take_along_axis(cols, order, axis=1).ravel()
    values = np.take_along_axis(values, order, axis=1).ravel()
    indptr = np.arange(0, n * per_row + 1, per_row, dtype=np.int64)
    x = sp.csr_matrix((values, cols, indptr), shape=(n, d))
    x.sum_duplicates()
    return x


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def kang_case(n_pca: int, old: bool) -> dict:
    path = KANG / KANG_FILE
    if not path.is_file():
        return {"skipped": f"{KANG_FILE} not found under ../shared/data"}
    x = ad.read_h5ad(path).X
    x = sp.csr_matrix(x, dtype=np.float32)
    exact, seconds = timed(lambda: principal_axes(x, n_pca))
    randomized, r_seconds = timed(lambda: principal_axes(x, n_pca, solver="randomized"))
    top = 10
    out = {
        "shape": list(x.shape),
        "n_pca": n_pca,
        "auto_solver_seconds": seconds,
        "randomized_seconds": r_seconds,
        "randomized_iterations": randomized.iterations,
        "randomized_residual": float(randomized.residual),
        f"randomized_max_abs_diff_top{top}": float(
            np.abs(randomized.components[:, :top] - exact.components[:, :top]).max()
        ),
        "randomized_max_abs_diff_all": float(
            np.abs(randomized.components - exact.components).max()
        ),
    }
    if old:
        out["old_covariance_eigh_seconds"] = timed(lambda: fit_pca(x, n_pca, solver="covariance"))[
            1
        ]
    return out


def synthetic_case(n: int, d: int, density: float, n_pca: int) -> dict:
    x, gen_seconds = timed(lambda: synthetic_cells(n, d, density))
    result, seconds = timed(lambda: principal_axes(x, n_pca, solver="randomized"))
    return {
        "shape": [n, d],
        "nnz": int(x.nnz),
        "n_pca": n_pca,
        "generate_seconds": gen_seconds,
        "seconds": seconds,
        "iterations": result.iterations,
        "residual": float(result.residual),
        "top_variances": [round(float(v), 4) for v in result.variances[:5]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="kang,cells_7k,cells_20k")
    parser.add_argument("--n-pca", type=int, default=50)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--old", action="store_true")
    args = parser.parse_args()
    cases = args.cases.split(",")
    record: dict = {"benchmark": "pca_speed", "load_average": list(os.getloadavg())}
    if "kang" in cases:
        record["kang"] = kang_case(args.n_pca, args.old)
    if "cells_7k" in cases:
        record["cells_7k"] = synthetic_case(20_000, 7_000, args.density, args.n_pca)
    if "cells_20k" in cases:
        record["cells_20k"] = synthetic_case(100_000, 20_000, args.density, args.n_pca)
    record["load_average_after"] = list(os.getloadavg())
    print(json.dumps(record))


if __name__ == "__main__":
    main()
