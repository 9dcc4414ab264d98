"""AnnData input: reading, validation and feature access.

Every check raises :class:`~condmonge.errors.DataError` with one line naming the field
(``adata.obs['drug']``) and the fix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from condmonge.config import DataConfig
from condmonge.errors import DataError, DataWarning, suggest
from condmonge.files import replace_atomically

__all__ = [
    "RAW_COUNT_MAX",
    "align_features",
    "check_expression",
    "feature_matrix",
    "feature_names",
    "read_h5ad",
    "require_unique_names",
    "validate_adata",
    "write_h5ad_atomic",
]

# Integer-valued, non-negative X whose largest value exceeds this is taken for raw counts:
# log1p of library-size-normalised counts (target 1e4) stays below ~12.
RAW_COUNT_MAX = 50.0


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


def validate_adata(adata: ad.AnnData, cfg: DataConfig, *, require_treated: bool = True) -> None:
    """Check that ``adata`` can be trained on (or predicted from) with ``cfg``.

    Raises :class:`DataError` on: no cells, a missing obs column, a non-numeric covariate,
    missing or empty condition labels, an absent control label, only control cells, duplicate
    gene or cell names, negative or non-numeric doses of treated cells, NaN or inf in the
    features, and negative values in integer-valued (count-like) X. Warns
    (:class:`DataWarning`) when X looks like raw counts.
    """
    cfg.spec.validate(adata, require_treated=require_treated)  # the obs keys and labels
    labels = adata.obs[cfg.condition_key].astype(str)
    if cfg.use_rep is None:
        require_unique_names(adata.var_names, "adata.var_names", "var_names_make_unique")
    require_unique_names(adata.obs_names, "adata.obs_names", "obs_names_make_unique")
    if cfg.dose_key is not None:
        _check_doses(adata.obs[cfg.dose_key], labels != cfg.control, cfg)
    if cfg.n_pca is not None and cfg.use_rep is not None:
        raise DataError(
            f"set either use_rep ('{cfg.use_rep}') or n_pca ({cfg.n_pca}), not both: n_pca "
            "computes its own PCA of X"
        )
    x = adata.X if cfg.use_rep is None else feature_matrix(adata, cfg.use_rep)
    _check_finite(x, cfg.use_rep)
    if cfg.use_rep is None:
        check_expression(x)


def require_unique_names(names: pd.Index, where: str, fix: str) -> None:
    """Raise when ``names`` (``adata.var_names`` or ``obs_names``) has duplicates."""
    if names.has_duplicates:
        dup = names[names.duplicated()]
        raise DataError(f"{where} has {dup.size} duplicates (e.g. '{dup[0]}'); run `adata.{fix}()`")


def _check_doses(doses: pd.Series, treated: pd.Series, cfg: DataConfig) -> None:
    """Every treated cell needs finite doses >= 0 (``"1+10"`` for combinations)."""
    values = doses[treated.to_numpy()]
    bad = []
    for value in pd.unique(values.astype(object)):
        parts = str(value).split(cfg.combination_sep) if isinstance(value, str) else [value]
        try:
            ok = all(math.isfinite(float(p)) and float(p) >= 0 for p in parts)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(value)
    if bad:
        is_bad = values.astype(object).isin(bad).to_numpy()
        row = int(np.flatnonzero(treated.to_numpy())[np.flatnonzero(is_bad)[0]])
        raise DataError(
            f"adata.obs['{cfg.dose_key}'] has {int(is_bad.sum())} treated cells with a negative, "
            f"missing or non-numeric dose (e.g. '{bad[0]}' at row {row}); doses must be numbers "
            f">= 0 (combinations as '1{cfg.combination_sep}10')"
        )


def check_expression(x, where: str = "adata.X") -> None:
    """Flag expression that is not on the log-normalised scale condmonge expects.

    Log-normalised values are non-negative and small (``log1p`` of library-size-normalised
    counts stays below ~12). Outside that range:

    - integer values with a negative entry cannot be counts: :class:`DataError`;
    - non-negative integers above :data:`RAW_COUNT_MAX`: raw counts, :class:`DataWarning`;
    - non-negative non-integers above it: normalised but not log-transformed,
      :class:`DataWarning`;
    - non-integer values with negatives (scaled data, PCA scores) are accepted as they are.
    """
    if x is None:
        return
    values = (x.data if sp.issparse(x) else np.asarray(x)).reshape(-1)
    if values.size == 0:
        return
    low, high = values.min(), values.max()
    if low >= 0 and high <= RAW_COUNT_MAX:
        return
    integer = _is_integer_valued(values)
    if low < 0:
        if integer:
            raise DataError(
                f"{where} holds integer (count-like) values with negatives (min {low:g}); counts "
                "cannot be negative: check how the matrix was built, or pass log-normalised data"
            )
        return
    if integer:
        problem, fix = (
            f"looks like raw counts (integers up to {high:g})",
            "run `sc.pp.normalize_total(adata)` and `sc.pp.log1p(adata)` first",
        )
    else:
        problem, fix = (
            f"looks normalised but not log-transformed (values up to {high:.4g})",
            "run `sc.pp.log1p(adata)` first",
        )
    warnings.warn(
        f"{where} {problem}; condmonge expects log-normalised expression: {fix}, or train on a "
        "representation (use_rep)",
        DataWarning,
        stacklevel=3,
    )


def _is_integer_valued(values: np.ndarray) -> bool:
    if not np.issubdtype(values.dtype, np.floating):
        return True
    # A strided sample settles most real (non-integer) data without a full copy.
    sample = values[:: max(values.size // 10_000, 1)]
    return bool(
        np.array_equal(sample, np.round(sample)) and np.array_equal(values, np.round(values))
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
    require_unique_names(adata.var_names, "adata.var_names", "var_names_make_unique")
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
    return replace_atomically(path, adata.write_h5ad, suffix=".h5ad")
