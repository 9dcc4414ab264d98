"""Data sets shipped with condmonge and synthetic tasks."""

from __future__ import annotations

from importlib import resources

import anndata as ad

from condmonge.datasets.sciplex_like import SciplexLikeTask, sciplex_like
from condmonge.datasets.synthetic import AffineTask, ConvexTask, convex_task, spd_affine_task
from condmonge.evaluate.metrics import l2_uvp  # scores the tasks' known maps; kept here too

__all__ = [
    "AffineTask",
    "ConvexTask",
    "SciplexLikeTask",
    "convex_task",
    "l2_uvp",
    "norman_mcfaline",
    "sciplex_like",
    "spd_affine_task",
]

_NORMAN = "norman2019_mcfaline2023_perturbench_devel.h5ad"


def norman_mcfaline() -> ad.AnnData:
    """Norman et al. 2019 (CRISPRa, K562) + McFaline-Figueroa et al. 2023 (CRISPRi, 3 GBM lines).

    The PerturBench development subset: 5,961 cells x 500 HVGs, log1p-normalised, sparse X.
    ``obs['condition']`` names single genes and ``A+B`` combinations, ``control`` marks
    controls (100 per cell type), ``obs['cell_type']`` is one of k562, A172, T98G, U87MG.

    Source: altoslabs/perturbench ``src/perturbench/data/resources/devel.h5ad`` (commit
    4dd6a03), BSD-3-Clause, © 2024 Altos Labs; the licence is shipped beside the file.
    """
    with resources.as_file(resources.files(__package__) / "_files" / _NORMAN) as path:
        return ad.read_h5ad(path)
