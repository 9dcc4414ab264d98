"""AnnData input: reading, validation and feature access.

Every check raises :class:`~condmonge.errors.DataError` with one line naming the field
(``adata.obs['drug']``) and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from condmonge.config import DataConfig
from condmonge.errors import DataError, suggest

__all__ = [
    "align_features",
    "feature_matrix",
    "feature_names",
    "read_h5ad",
    "validate_adata",
    "write_h5ad_atomic",
]


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an ``.h5ad`` file, turning I/O failures into a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a damaged or foreign file
        raise DataError(
            f"'{path}' is not a readable .h5ad file ({type(exc).__name__}); write it with "
            "anndata's `adata.write_h5ad(path)`"
        ) from None


def _require_obs(adata: ad.AnnData, key: str | None, flag: str) -> None:
    if key is not None and key not in adata.obs.columns:
        raise DataError(
            f"adata.obs has no column '{key}'{suggest(key, adata.obs.columns)}; set {flag} to one "
            f"of: {', '.join(map(str, adata.obs.columns[:12]))}"
        )


def validate_adata(adata: ad.AnnData, cfg: DataConfig, *, require_treated: bool = True) -> None:
    """Check that ``adata`` can be trained on (or predicted from) with ``cfg``.

    Raises on: a missing obs column, an absent control label, NaN or inf in the features,
    duplicate gene names, no treated cells.
    """
    if adata.n_obs == 0:
        raise DataError("the AnnData has no cells")
    _require_obs(adata, cfg.condition_key, "condition_key (--condition-key)")
    _require_obs(adata, cfg.dose_key, "dose_key (--dose-key)")
    _require_obs(adata, cfg.cell_type_key, "cell_type_key (--cell-type-key)")
    for key in cfg.covariate_keys:
        _require_obs(adata, key, "covariate_keys")
        if not pd.api.types.is_numeric_dtype(adata.obs[key]):
            raise DataError(f"adata.obs['{key}'] is a covariate and must be numeric")
    labels = adata.obs[cfg.condition_key]
    if labels.isna().any():
        raise DataError(
            f"adata.obs['{cfg.condition_key}'] has {int(labels.isna().sum())} missing values; "
            "label every cell (controls with the control label)"
        )
    labels = labels.astype(str)
    if not (labels == cfg.control).any():
        raise DataError(
            f"control label '{cfg.control}' not found in adata.obs['{cfg.condition_key}']"
            f"{suggest(cfg.control, labels.unique())}; set control (--control) to the label of "
            "untreated cells"
        )
    if require_treated and (labels == cfg.control).all():
        raise DataError(
            f"adata.obs['{cfg.condition_key}'] holds only control cells; nothing to learn"
        )
    if cfg.use_rep is None and adata.var_names.has_duplicates:
        dup = adata.var_names[adata.var_names.duplicated()][0]
        raise DataError(
            f"adata.var_names has duplicates (e.g. '{dup}'); run `adata.var_names_make_unique()`"
        )
    if cfg.n_pca is not None and cfg.use_rep is not None:
        raise DataError(
            f"set either use_rep ('{cfg.use_rep}') or n_pca ({cfg.n_pca}), not both: n_pca "
            "computes its own PCA of X"
        )
    _check_finite(
        adata.X if cfg.use_rep is None else feature_matrix(adata, cfg.use_rep), cfg.use_rep
    )


def _check_finite(x, use_rep: str | None) -> None:
    """Raise on NaN/inf; sparse matrices are checked on their stored values, without a copy."""
    if x is None:
        return
    if sp.issparse(x):
        coo = x.tocoo()
        rows = np.unique(coo.row[~np.isfinite(coo.data)])
    else:
        rows = np.flatnonzero(~np.isfinite(np.asarray(x)).all(axis=1))
    if rows.size:
        where = "adata.X" if use_rep is None else f"adata.obsm['{use_rep}']"
        raise DataError(
            f"{where} contains NaN or inf in {rows.size} cells (first at row {rows[0]}); remove "
            "or impute them before training"
        )


def feature_matrix(adata: ad.AnnData, use_rep: str | None = None) -> np.ndarray:
    """Dense ``float32`` features ``[n_cells, d]`` from ``X`` (dense or sparse) or ``obsm``."""
    if use_rep is None:
        x = adata.X
        if x is None:
            raise DataError("adata.X is empty; store expression in X or set use_rep")
    else:
        if use_rep not in adata.obsm:
            raise DataError(
                f"adata.obsm has no '{use_rep}'{suggest(use_rep, adata.obsm.keys())}; compute it "
                "(e.g. scanpy.pp.pca) or set use_rep to None to use X"
            )
        x = adata.obsm[use_rep]
    if sp.issparse(x):
        x = x.toarray()
    return np.asarray(x, dtype=np.float32)


def feature_names(adata: ad.AnnData, use_rep: str | None = None) -> list[str]:
    """Gene names for X, or ``REP_0..REP_{d-1}`` for an obsm representation."""
    if use_rep is None:
        return [str(v) for v in adata.var_names]
    return [f"{use_rep}_{i}" for i in range(feature_matrix(adata[:1], use_rep).shape[1])]


def align_features(adata: ad.AnnData, names: Sequence[str], use_rep: str | None) -> np.ndarray:
    """Features of ``adata`` in the order of the model's ``names`` (genes matched by name)."""
    if use_rep is not None:
        x = feature_matrix(adata, use_rep)
        if x.shape[1] != len(names):
            raise DataError(
                f"adata.obsm['{use_rep}'] has {x.shape[1]} columns, the model expects "
                f"{len(names)}; use the same representation as in training"
            )
        return x
    query = [str(v) for v in adata.var_names]
    if query == list(names):
        return feature_matrix(adata)
    if len(set(query)) != len(query):
        raise DataError("adata.var_names has duplicates; run `adata.var_names_make_unique()`")
    position = {name: i for i, name in enumerate(query)}
    missing = [name for name in names if name not in position]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} of the model's {len(names)} genes are missing from adata.var_names "
            f"({shown}); subset or reindex the data to the training genes"
        )
    columns = np.asarray([position[name] for name in names])
    x = adata.X[:, columns]
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def write_h5ad_atomic(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` to a temporary file beside ``path`` and rename it: never half-written."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".h5ad", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
