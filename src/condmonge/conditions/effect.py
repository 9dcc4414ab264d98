"""Effect-based perturbation embeddings, computed without leaking held-out cells.

An effect-based embedding describes a drug by what it does to cells: its response signature.
It is only known for drugs that were measured, so it must be computed from the **training**
drugs alone (computing it on every drug, as the reference implementation does, leaks the
held-out drugs' responses into their own embedding). :func:`effect_embedding` reads only the
cells of the training conditions and the controls; :func:`infer_effect_embedding` then predicts
the embedding of unseen drugs from their structure (e.g. :func:`~condmonge.conditions.smiles.
smiles_embedding`), fitted on the seen drugs only.

Example:
  >>> effect = effect_embedding(adata, "condition", "control", train_conditions=seen,
  ...                           cell_type_key="cell_type", dose_key="dose")  # doctest: +SKIP
  >>> structure = smiles_embedding("drugs.csv", fit_names=seen, control="control")  # doctest: +SKIP
  >>> table = infer_effect_embedding(effect, structure)  # doctest: +SKIP
  >>> model.fit(adata, "condition", "control", embeddings={"condition": table})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from condmonge.errors import ConfigError, DataError, suggest

__all__ = ["effect_embedding", "infer_effect_embedding"]


def _labels(adata: ad.AnnData, key: str | None, what: str) -> np.ndarray | None:
    if key is None:
        return None
    if key not in adata.obs.columns:
        raise DataError(
            f"obs has no {what} column '{key}'{suggest(key, adata.obs.columns)}; columns: "
            f"{list(adata.obs.columns)[:10]}"
        )
    return adata.obs[key].astype(str).to_numpy()


def _read_rows(adata: ad.AnnData, rows: np.ndarray, use_rep: str | None) -> np.ndarray:
    """Expression of ``rows`` only (float64, dense): no other cell is touched."""
    if use_rep is None:
        source = adata.X
    elif use_rep in adata.obsm:
        source = adata.obsm[use_rep]
    else:
        raise DataError(
            f"obsm has no representation '{use_rep}'{suggest(use_rep, adata.obsm.keys())}"
        )
    values = source[rows]
    if sp.issparse(values):
        values = values.toarray()
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).all():
        raise DataError("the cells used for the effect embedding contain NaN or inf values")
    return values


def _pca(signatures: np.ndarray, n_components: int) -> np.ndarray:
    centred = signatures - signatures.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:n_components]
    signs = np.sign(axes[np.arange(n_components), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    return centred @ axes.T


def _energy(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (Euclidean norms, V-statistic)."""

    def mean_dist(a: np.ndarray, b: np.ndarray) -> float:
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return float(np.sqrt(np.maximum(sq, 0.0)).mean())

    return max(2.0 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y), 0.0)


def _mds(squared: np.ndarray, n_components: int) -> np.ndarray:
    """Classical (Torgerson) MDS of a matrix of squared distances."""
    n = squared.shape[0]
    centring = np.eye(n) - 1.0 / n
    gram = -0.5 * centring @ squared @ centring
    eigval, eigvec = np.linalg.eigh((gram + gram.T) / 2)
    order = np.argsort(eigval)[::-1][:n_components]
    vec = eigvec[:, order]
    signs = np.sign(vec[np.abs(vec).argmax(axis=0), np.arange(len(order))])
    vec = vec * np.where(signs == 0, 1.0, signs)
    return vec * np.sqrt(np.maximum(eigval[order], 0.0))


def effect_embedding(
    adata: ad.AnnData,
    condition_key: str,
    control: str,
    *,
    train_conditions: Iterable[str],
    cell_type_key: str | None = None,
    dose_key: str | None = None,
    n_components: int = 10,
    method: Literal["mean_shift", "energy_mds"] = "mean_shift",
    use_rep: str | None = None,
    max_cells: int = 300,
    seed: int = 0,
) -> pd.DataFrame:
    """Response signatures of the training drugs, reduced to ``n_components`` dimensions.

    Only the cells whose condition is in ``train_conditions`` or is ``control`` are read; every
    other cell (held-out drugs, combinations not listed) has no influence whatsoever, so the
    embedding of the seen drugs is the same whatever the held-out cells contain.

    Args:
      adata: cells; expression from ``X`` or ``obsm[use_rep]``.
      condition_key, control: obs column of conditions and the label of control cells.
      train_conditions: the training drugs (single perturbations; labels of the condition
        column). Each must have cells.
      cell_type_key: obs column of cell types: responses are taken against the controls of the
        same cell type and averaged over cell types.
      dose_key: obs column of doses: responses are computed per dose and averaged over doses.
      n_components: embedding dimension (at most the number of training drugs, and of
        features for ``"mean_shift"``).
      method: ``"mean_shift"``: per drug the mean expression shift from the matching controls,
        averaged over (cell type, dose) groups, then PCA over the training drugs;
        ``"energy_mds"``: per cell type the energy distance between every two drugs' treated
        populations (all doses pooled, at most ``max_cells`` cells each, drawn with ``seed``),
        averaged over cell types, then classical MDS (the paper's effect-based embedding uses
        entropic OT distances instead).
      max_cells: subsample size per population for ``"energy_mds"``.
      seed: seed of that subsampling.

    Returns:
      float32 table, index = training drugs (sorted), columns ``effect_1 ... effect_k``.
    """
    if method not in ("mean_shift", "energy_mds"):
        raise ConfigError(f"method must be 'mean_shift' or 'energy_mds', got '{method}'")
    train = sorted({str(c) for c in train_conditions} - {str(control)})
    if not train:
        raise DataError("train_conditions is empty; give the training drugs")
    conditions = _labels(adata, condition_key, "condition")
    present = set(conditions)
    if str(control) not in present:
        raise DataError(
            f"no control cells: '{control}' is not a value of obs['{condition_key}']"
            f"{suggest(control, present)}"
        )
    missing = [c for c in train if c not in present]
    if missing:
        raise DataError(
            f"{len(missing)} training conditions have no cells: "
            f"{', '.join(repr(m) for m in missing[:5])}{suggest(missing[0], present)}"
        )
    limit = len(train) if method == "energy_mds" else min(len(train), adata.n_vars)
    if use_rep is not None and use_rep in adata.obsm and method == "mean_shift":
        limit = min(len(train), adata.obsm[use_rep].shape[1])
    if not 1 <= n_components <= limit:
        raise ConfigError(
            f"n_components must be in [1, {limit}] with {len(train)} training drugs, got "
            f"{n_components}"
        )

    keep = np.flatnonzero(np.isin(conditions, [*train, str(control)]))
    x = _read_rows(adata, keep, use_rep)
    cond = conditions[keep]
    cells = _labels(adata, cell_type_key, "cell type")
    cells = cells[keep] if cells is not None else np.full(len(keep), "")
    if dose_key is not None:
        doses = _labels(adata, dose_key, "dose")[keep]
    else:
        doses = np.full(len(keep), "")

    is_control = cond == str(control)
    control_means = {}
    for cell_type in np.unique(cells):
        rows = is_control & (cells == cell_type)
        if rows.any():
            control_means[cell_type] = x[rows].mean(axis=0)

    if method == "mean_shift":
        signatures = np.empty((len(train), x.shape[1]))
        for i, drug in enumerate(train):
            mine = cond == drug
            shifts = []
            for cell_type in np.unique(cells[mine]):
                if cell_type not in control_means:
                    raise DataError(
                        f"drug '{drug}' has cells of type '{cell_type}' but that type has no "
                        "control cells"
                    )
                in_type = mine & (cells == cell_type)
                for dose in np.unique(doses[in_type]):
                    group = in_type & (doses == dose)
                    shifts.append(x[group].mean(axis=0) - control_means[cell_type])
            signatures[i] = np.mean(shifts, axis=0)
        embedded = _pca(signatures, n_components)
    else:
        rng = np.random.default_rng(seed)
        cell_types = sorted(np.unique(cells[~is_control]))
        total = np.zeros((len(train), len(train)))
        counts = np.zeros((len(train), len(train)))
        for cell_type in cell_types:
            pops = {}
            for i, drug in enumerate(train):
                rows = np.flatnonzero((cond == drug) & (cells == cell_type))
                if len(rows) > max_cells:
                    rows = np.sort(rng.choice(rows, max_cells, replace=False))
                if len(rows):
                    pops[i] = x[rows]
            for i in pops:
                for j in pops:
                    if i < j:
                        total[i, j] += _energy(pops[i], pops[j])
                        counts[i, j] += 1
        unpaired = [
            (train[i], train[j])
            for i in range(len(train))
            for j in range(i + 1, len(train))
            if counts[i, j] == 0
        ]
        if unpaired:
            raise DataError(
                f"drugs '{unpaired[0][0]}' and '{unpaired[0][1]}' share no cell type, so their "
                "effects cannot be compared; use method='mean_shift'"
            )
        squared = np.divide(total, counts, out=np.zeros_like(total), where=counts > 0)
        squared = squared + squared.T
        embedded = _mds(squared, n_components)

    return pd.DataFrame(
        embedded.astype(np.float32),
        index=pd.Index(train, name=condition_key),
        columns=[f"effect_{i + 1}" for i in range(n_components)],
    )


def infer_effect_embedding(
    effect_table: pd.DataFrame,
    structure_table: pd.DataFrame,
    method: Literal["knn", "ridge"] = "knn",
    k: int = 5,
    alpha: float = 1.0,
) -> pd.DataFrame:
    """Complete an effect embedding with predictions for drugs that were never measured.

    A regression from structure to effect is fitted on the drugs of ``effect_table`` (the seen
    drugs) and applied to the drugs of ``structure_table`` that are not in it. The structure
    columns are z-scored with the seen drugs' statistics.

    Args:
      effect_table: effect embeddings of the seen drugs (:func:`effect_embedding`).
      structure_table: structure features (e.g. :func:`~condmonge.conditions.smiles.
        smiles_embedding`) of the seen drugs and of the drugs to infer.
      method: ``"knn"``: inverse-distance weighted mean of the ``k`` nearest seen drugs in
        structure space; ``"ridge"``: kernel-form ridge regression, penalty ``alpha`` times the
        mean squared norm of the z-scored structure rows.

    Returns:
      float32 table: the rows of ``effect_table`` unchanged, then one predicted row per unseen
      drug (in ``structure_table`` order); usable as ``embeddings={condition_key: table}``.
    """
    if method not in ("knn", "ridge"):
        raise ConfigError(f"method must be 'knn' or 'ridge', got '{method}'")
    if k < 1 or alpha <= 0:
        raise ConfigError(f"k must be >= 1 and alpha > 0, got k={k}, alpha={alpha}")
    for name, table in (("effect", effect_table), ("structure", structure_table)):
        if not isinstance(table, pd.DataFrame) or table.empty:
            raise DataError(f"the {name} table must be a non-empty DataFrame (index = drug names)")
    effect = effect_table.copy()
    effect.index = effect.index.astype(str)
    structure = structure_table.copy()
    structure.index = structure.index.astype(str)
    missing = [d for d in effect.index if d not in structure.index]
    if missing:
        raise DataError(
            f"{len(missing)} seen drugs have no structure row: "
            f"{', '.join(repr(m) for m in missing[:5])}{suggest(missing[0], structure.index)}"
        )
    unseen = [d for d in structure.index if d not in set(effect.index)]
    if not unseen:
        return effect.astype(np.float32)
    s_seen = structure.loc[effect.index].to_numpy(np.float64)
    s_new = structure.loc[unseen].to_numpy(np.float64)
    if not (np.isfinite(s_seen).all() and np.isfinite(s_new).all()):
        raise DataError("the structure table contains NaN or inf")
    mean, std = s_seen.mean(axis=0), s_seen.std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)
    z_seen, z_new = (s_seen - mean) / scale, (s_new - mean) / scale
    y = effect.to_numpy(np.float64)
    if method == "knn":
        sq = (
            (z_new * z_new).sum(1)[:, None]
            + (z_seen * z_seen).sum(1)[None, :]
            - 2.0 * z_new @ z_seen.T
        )
        dist = np.sqrt(np.maximum(sq, 0.0))
        n = min(k, len(effect))
        nearest = np.argsort(dist, axis=1, kind="stable")[:, :n]
        d = np.take_along_axis(dist, nearest, axis=1)
        weights = 1.0 / (d + 1e-8 * (1.0 + d.max()))
        weights /= weights.sum(axis=1, keepdims=True)
        predicted = np.einsum("nk,nkj->nj", weights, y[nearest])
    else:
        y_mean = y.mean(axis=0)
        gram = z_seen @ z_seen.T
        penalty = alpha * max(float(np.trace(gram)) / len(gram), 1e-12)
        coef = np.linalg.solve(gram + penalty * np.eye(len(gram)), y - y_mean)
        predicted = z_new @ z_seen.T @ coef + y_mean
    inferred = pd.DataFrame(predicted, index=pd.Index(unseen), columns=effect.columns)
    out = pd.concat([effect, inferred]).astype(np.float32)
    out.index.name = effect_table.index.name
    return out
