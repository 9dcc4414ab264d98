"""AnnData input: reading, validation and feature access.

Every check raises :class:`~condmonge.errors.DataError` with one line naming the field
(``adata.obs['drug']``) and the fix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from condmonge.config import DataConfig
from condmonge.errors import DataError, DataWarning, suggest
from condmonge.files import replace_atomically

__all__ = [
    "MODALITIES",
    "PROTEIN_MAX_FEATURES",
    "RAW_COUNT_MAX",
    "Standardizer",
    "align_features",
    "check_expression",
    "check_features",
    "detect_modality",
    "feature_matrix",
    "feature_names",
    "fit_standardizer",
    "read_h5ad",
    "require_unique_names",
    "validate_adata",
    "write_h5ad_atomic",
]

# Integer-valued, non-negative X whose largest value exceeds this is taken for raw counts:
# log1p of library-size-normalised counts (target 1e4) stays below ~12.
RAW_COUNT_MAX = 50.0
#: What ``X`` can measure (``data.modality``; ``"auto"`` detects one of them).
MODALITIES = ("rna", "protein", "generic")
# Dense X with at most this many features is taken for a protein / imaging panel (4i, CODEX,
# CyTOF: tens of markers and morphology features); transcriptomes have hundreds or more genes.
PROTEIN_MAX_FEATURES = 200


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
    if isinstance(cfg.n_pca, int) and cfg.use_rep is not None:  # "auto" skips a use_rep
        raise DataError(
            f"set either use_rep ('{cfg.use_rep}') or n_pca ({cfg.n_pca}), not both: n_pca "
            "computes its own PCA of X"
        )
    x = adata.X if cfg.use_rep is None else feature_matrix(adata, cfg.use_rep)
    modality = detect_modality(adata, cfg)
    if modality != "rna" and x is not None and not sp.issparse(x):
        where = "adata.X" if cfg.use_rep is None else f"adata.obsm['{cfg.use_rep}']"
        check_features(np.asarray(x), feature_names(adata, cfg.use_rep), where)
    _check_finite(x, cfg.use_rep, [str(v) for v in adata.var_names] if cfg.use_rep is None else ())
    if cfg.use_rep is None and modality == "rna":
        check_expression(x)


def detect_modality(adata: ad.AnnData, cfg: DataConfig) -> str:
    """``cfg.modality``, or for ``"auto"`` what ``adata`` looks like.

    In order: ``uns['modality']`` when it names one; ``generic`` for a representation
    (``use_rep``); ``rna`` when X is sparse, has more than :data:`PROTEIN_MAX_FEATURES`
    features, is integer-valued (counts) or ``uns`` records a ``log1p``; ``protein`` for a
    small dense panel read from a table (``uns['condmonge_table']``, set by
    :mod:`condmonge.data.tables`), as a 4i or other imaging export; ``generic`` for other
    dense data with negative (scaled) values; ``rna`` otherwise, so that the count and log
    checks still guard small expression matrices.
    """
    if cfg.modality != "auto":
        return cfg.modality
    if adata.uns.get("modality") in MODALITIES:
        return str(adata.uns["modality"])
    if cfg.use_rep is not None:
        return "generic"
    x = adata.X
    if x is None or sp.issparse(x) or "log1p" in adata.uns or adata.n_vars > PROTEIN_MAX_FEATURES:
        return "rna"
    values = np.asarray(x).reshape(-1)
    if values.size == 0 or _is_integer_valued(values):
        return "rna"
    if "condmonge_table" in adata.uns:
        return "protein"
    return "generic" if values.min() < 0 else "rna"


def check_features(x: np.ndarray, names: Sequence[str], where: str = "adata.X") -> None:
    """Name all-NaN features (:class:`DataError`) and constant ones (:class:`DataWarning`).

    Args:
      x: ``[n_cells, d]`` dense features; names: their ``d`` names.
    """
    finite = np.isfinite(x)
    empty = np.flatnonzero(~finite.any(axis=0))
    if empty.size:
        shown = ", ".join(f"'{names[j]}'" for j in empty[:5])
        raise DataError(
            f"{where} has {empty.size} feature(s) with no finite value ({shown}); drop those "
            "features (columns) before training"
        )
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(np.where(finite, x, np.nan), axis=0) - np.nanmin(
            np.where(finite, x, np.nan), axis=0
        )
    constant = np.flatnonzero(spread == 0)
    if constant.size:
        shown = ", ".join(f"'{names[j]}'" for j in constant[:5])
        warnings.warn(
            f"{where} has {constant.size} constant feature(s) ({shown}); they carry no signal "
            "and are left unscaled: drop them to silence this warning",
            DataWarning,
            stacklevel=3,
        )


class Standardizer(NamedTuple):
    r"""Per-feature z-scoring :math:`z = (x - \mu) / \sigma`, fitted on training controls.

    Attributes:
      mean: ``[d]`` :math:`\mu`; scale: ``[d]`` :math:`\sigma` (1 for constant features).
    """

    mean: np.ndarray
    scale: np.ndarray

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``[n, d]`` features -> standardised ``[n, d]`` (float32)."""
        return ((np.asarray(x, np.float32) - self.mean) / self.scale).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Standardised ``[n, d]`` -> the original scale (float32)."""
        return (np.asarray(z, np.float32) * self.scale + self.mean).astype(np.float32)


def fit_standardizer(x: np.ndarray, rows: np.ndarray) -> Standardizer:
    """Mean and sd of ``x[rows]`` (``x [n, d]``, ``rows`` the training control cells)."""
    fit = np.asarray(x[rows], np.float64)
    if fit.shape[0] == 0:
        raise DataError("feature standardisation needs control cells in the training data")
    sd = fit.std(axis=0)
    return Standardizer(
        fit.mean(axis=0).astype(np.float32), np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
    )


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


def _check_finite(x, use_rep: str | None, names: Sequence[str] = ()) -> None:
    """Raise on NaN/inf; sparse matrices are checked on their stored values, without a copy."""
    if x is None:
        return
    column = None
    if sp.issparse(x):
        coo = x.tocoo()
        rows = np.unique(coo.row[~np.isfinite(coo.data)])
    else:
        bad = ~np.isfinite(np.asarray(x))
        rows = np.flatnonzero(bad.any(axis=1))
        column = int(np.flatnonzero(bad.any(axis=0))[0]) if rows.size else None
    if rows.size:
        where = "adata.X" if use_rep is None else f"adata.obsm['{use_rep}']"
        feature = ""
        if column is not None:
            feature = f" in feature {names[column]!r}" if names else f" in column {column}"
        raise DataError(
            f"{where} contains NaN or inf in {rows.size} cells (first at row {rows[0]}){feature}; "
            "remove or impute them before training"
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
