"""How many components ``data.n_pca: auto`` keeps on the real data, and how long it takes.

    python benchmarks/auto_pca.py [--data-dir ../shared/data]

The rule (:func:`condmonge.data.pca.fit_auto_pca`): for X with more than 200 features, fit the
top 100 principal components of the training cells and keep the smallest number explaining
90 % of *their* variance, at most 50. Here the "training cells" are every cell of the file (the
count barely moves with a split). Reports the components kept, the share of the top-100 and of
the total variance they explain, and the seconds. The Kang file (GPL-3) is read from the shared
directory, never copied. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from condmonge.data.pca import AUTO_SPECTRUM, auto_components, fit_auto_pca, principal_axes

NAME = "auto_pca"
FILES = {
    "norman_mcfaline": "norman2019_mcfaline2023_perturbench_devel.h5ad",
    "kang_scgen": "kang2018_pbmc_ifnb_scgen_valid.h5ad",
}


def _measure(x) -> dict:
    start = time.perf_counter()
    projection = fit_auto_pca(x)
    seconds = time.perf_counter() - start
    spectrum = principal_axes(x, min(AUTO_SPECTRUM, *x.shape)).variances
    dense = x.toarray() if sp.issparse(x) else np.asarray(x)
    total = float(np.var(dense, axis=0, ddof=1).sum())
    k = projection.components.shape[1]
    assert k == auto_components(spectrum)
    return {
        "cells": int(x.shape[0]),
        "features": int(x.shape[1]),
        "components": int(k),
        "share_of_top100": round(float(spectrum[:k].sum() / spectrum.sum()), 3),
        "share_of_total": round(float(spectrum[:k].sum() / total), 3),
        "top100_share_of_total": round(float(spectrum.sum() / total), 3),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    root = (
        Path(args.data_dir)
        if args.data_dir
        else Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    results = {}
    for name, file in FILES.items():
        if (root / file).is_file():
            results[name] = _measure(ad.read_h5ad(root / file).X)
    print(json.dumps({"benchmark": NAME, "rule": "90% of top-100, cap 50", "data": results}))


if __name__ == "__main__":
    main()
