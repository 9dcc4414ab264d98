"""Assemble predicted cells into an AnnData: one block of rows per queried condition.

Shared by the model and every baseline, so that all predictions have the same layout and can
be evaluated side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.data.anndata_io import align_features, check_expression, require_unique_names
from condmonge.data.spec import Condition, ConditionSpec
from condmonge.errors import DataError, UnknownConditionError

__all__ = [
    "BatchTransport",
    "assemble_prediction",
    "control_rows",
    "per_condition",
    "query_features",
]


def query_features(
    adata: ad.AnnData,
    names: Sequence[str],
    spec: ConditionSpec,
    *,
    check_expression_values: bool = True,
) -> np.ndarray:
    """``[n_obs, d]`` features of a query in the model's order ``names``, checked.

    Args:
      adata: the query cells.
      names: ``[d]`` the model's genes (matched by name) or ``obsm`` columns.
      spec: its ``use_rep`` says where the features are.
      check_expression_values: run the raw-count / log checks (RNA models only).
    """
    x = align_features(adata, names, spec.use_rep)
    if not np.isfinite(x).all():
        raise DataError("the query's features contain NaN or inf; remove those cells")
    if spec.use_rep is None and check_expression_values:
        check_expression(x, "the query's adata.X")
    require_unique_names(adata.obs_names, "the query's adata.obs_names", "obs_names_make_unique")
    return x


def control_rows(adata: ad.AnnData, spec: ConditionSpec) -> tuple[np.ndarray, np.ndarray]:
    """Control mask ``[n]`` and cell type ``[n]`` (``None`` without a cell-type key) of a query.

    Without the condition column in ``obs`` every cell counts as a control.

    Args:
      adata: the query cells.
      spec: obs column names and the control label.
    """
    if spec.condition_key in adata.obs:
        is_control = adata.obs[spec.condition_key].astype(str).to_numpy() == spec.control
        if not is_control.any():
            raise DataError(
                f"adata.obs['{spec.condition_key}'] has no '{spec.control}' cells to predict from"
            )
    else:
        is_control = np.ones(adata.n_obs, bool)
    if spec.cell_type_key is not None:
        if spec.cell_type_key not in adata.obs:
            raise DataError(
                f"adata.obs has no column '{spec.cell_type_key}'; the model maps controls per "
                "cell type, so the query needs it"
            )
        types = adata.obs[spec.cell_type_key].astype(str).to_numpy().astype(object)
    else:
        types = np.full(adata.n_obs, None, dtype=object)
    return is_control, types


#: ``(x [n, d], which [j]) -> [j, n, d]``: cells ``x`` pushed through the conditions
#: ``which`` (indices into the query's conditions) at once.
BatchTransport = Callable[[np.ndarray, np.ndarray], np.ndarray]


def per_condition(
    transport: Callable[[np.ndarray, Condition], np.ndarray], conditions: Sequence[Condition]
) -> BatchTransport:
    """A :data:`BatchTransport` from a one-condition ``transport(x [n, d], condition)``."""

    def batch(x: np.ndarray, which: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(transport(x, conditions[i]), np.float32) for i in which])

    return batch


def assemble_prediction(  # noqa: PLR0913  the query's own columns (extra) ride along
    adata: ad.AnnData,
    x: np.ndarray,
    conditions: Sequence[Condition],
    transport: BatchTransport,
    spec: ConditionSpec,
    feature_names: Sequence[str],
    uns: Mapping[str, Any] | None = None,
    extra: pd.DataFrame | None = None,
    scores: Callable[[], pd.DataFrame] | None = None,
) -> ad.AnnData:
    """Push the control cells of ``adata`` through ``transport`` for every condition.

    The conditions of one cell type share their source cells, so each cell type's controls go
    through ``transport`` once, with all of its conditions.

    Args:
      adata: the query (its ``obs`` supplies control labels, cell types and names).
      x: ``[n_obs, d]`` features of ``adata`` already aligned to ``feature_names``.
      conditions: one predicted block per condition, sourced from controls of its cell type.
      transport: ``(x_controls [n, d], which [j]) -> [j, n, d]`` for the conditions ``which``
        (see :func:`per_condition` for a one-condition transport).
      spec: obs column names.
      feature_names: ``[d]`` names of the output's ``var``.
      uns: stored under ``uns['condmonge']``.
      extra: one row per condition (the query table): its other columns are copied into the
        ``obs`` of that condition's block.
      scores: called once every block is transported (so a transport may fill it in), it
        returns one row per condition with a ``condition_id`` column and per-condition scores
        (e.g. ``uncertainty``, ``ood_score``): every other numeric column is copied into the
        ``obs`` of that condition's block, and the table (indexed by condition id) is stored
        as ``uns['condmonge']['per_condition']``.

    Returns:
      AnnData whose ``obs`` holds the condition columns (doses as numbers when no condition is
      a combination with several doses), ``condition_id``, ``source_index`` and
      ``source_obs_name`` (the query cell each prediction came from), one block per condition
      in the order of ``conditions``; obs names read ``{condition}-{source cell}``; ``var`` is
      the query's ``var`` (gene metadata) when the features are its genes.
    """
    if not conditions:
        raise UnknownConditionError("no conditions to predict")
    is_control, types = control_rows(adata, spec)
    sources = _source_rows(conditions, is_control, types, spec)
    blocks: list[np.ndarray] = [np.empty(0)] * len(conditions)
    for rows, which in sources.values():
        for i, block in zip(which, transport(x[rows], np.asarray(which)), strict=True):
            blocks[i] = np.asarray(block, np.float32)
    numeric = all(len(c.doses) == 1 for c in conditions)
    frames = [
        _block_obs(adata, cond, sources[cond.cell_type][0], spec, numeric) for cond in conditions
    ]
    if extra is not None:  # the query's own columns, one row per condition
        _copy_extra(frames, extra)
    table = None if scores is None else _score_table(scores(), frames)
    obs = pd.concat(frames, ignore_index=True)
    obs.index = _readable_names(obs, spec)
    for column in [spec.condition_key, "condition_id", spec.dose_key, spec.cell_type_key]:
        if column and not (column == spec.dose_key and numeric):
            obs[column] = obs[column].astype("category")
    var = _output_var(adata, feature_names, spec)
    out = ad.AnnData(X=np.concatenate(blocks).astype(np.float32), obs=obs, var=var)
    if uns is not None or table is not None:
        out.uns["condmonge"] = dict(uns or {})
    if table is not None:
        out.uns["condmonge"]["per_condition"] = table
    return out


def _copy_extra(frames: list[pd.DataFrame], extra: pd.DataFrame) -> None:
    """Copy each query row's columns into its block's ``obs`` (existing columns win)."""
    for frame, (_, row) in zip(frames, extra.iterrows(), strict=True):
        for column, value in row.items():
            frame[column] = frame.get(column, value)


def _score_table(table: pd.DataFrame, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Copy the numeric per-condition scores into each block's ``obs``; index the table."""
    if len(table) != len(frames):
        raise ValueError(f"{len(table)} score rows for {len(frames)} predicted conditions")
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    for frame, (_, row) in zip(frames, table.iterrows(), strict=True):
        for column in numeric:
            frame[column] = float(row[column])
    table = table.copy()
    # Keyed by condition; a condition queried twice keeps one row per query.
    ids = pd.Index(table["condition_id"].astype(str).to_numpy(), dtype=str)
    table.index = ad.utils.make_index_unique(ids)
    table.index.name = None
    return table


def _source_rows(
    conditions: Sequence[Condition], is_control: np.ndarray, types: np.ndarray, spec: ConditionSpec
) -> dict[str | None, tuple[np.ndarray, list[int]]]:
    """Per cell type of the query: its control rows and the indices of its conditions."""
    sources: dict[str | None, tuple[np.ndarray, list[int]]] = {}
    for i, cond in enumerate(conditions):
        if cond.cell_type not in sources:
            mask = is_control & (types == cond.cell_type) if spec.cell_type_key else is_control
            rows = np.flatnonzero(mask)
            if rows.size == 0:
                raise DataError(
                    f"no control cells of cell type '{cond.cell_type}' in the query data for "
                    f"'{cond.label(spec.combination_sep)}'"
                )
            sources[cond.cell_type] = (rows, [])
        sources[cond.cell_type][1].append(i)
    return sources


def _readable_names(obs: pd.DataFrame, spec: ConditionSpec) -> pd.Index:
    """``{condition}-{source cell}``, with the dose when needed to tell blocks apart."""
    names = obs[spec.condition_key].astype(str) + "-" + obs["source_obs_name"]
    if names.duplicated().any() and spec.dose_key:
        dose = obs[spec.dose_key].map(
            lambda v: f"{v:g}" if isinstance(v, float | np.floating) else str(v)
        )
        names = obs[spec.condition_key].astype(str) + "@" + dose + "-" + obs["source_obs_name"]
    # A condition queried twice (or covariates that differ) still gets unique names.
    return ad.utils.make_index_unique(pd.Index(names.to_numpy(), dtype=str))


def _output_var(
    adata: ad.AnnData, feature_names: Sequence[str], spec: ConditionSpec
) -> pd.DataFrame:
    """The query's ``var`` rows of the output genes, or bare names for obsm features."""
    names = pd.Index([str(f) for f in feature_names], dtype=str)
    genes = adata.var_names.astype(str)
    if spec.use_rep is not None or not names.isin(genes).all() or genes.has_duplicates:
        return pd.DataFrame(index=names)
    var = adata.var.copy()
    var.index = genes
    return var.loc[names]


def _block_obs(
    adata: ad.AnnData, cond: Condition, rows: np.ndarray, spec: ConditionSpec, numeric: bool
) -> pd.DataFrame:
    """The ``obs`` rows of one predicted block."""
    frame = pd.DataFrame(
        {
            spec.condition_key: cond.label(spec.combination_sep),
            "condition_id": cond.key(spec.combination_sep),
            "source_index": rows,
            "source_obs_name": adata.obs_names[rows].astype(str),
        }
    )
    if spec.dose_key:
        frame[spec.dose_key] = cond.doses[0] if numeric else cond.dose_label(spec.combination_sep)
    if spec.cell_type_key:
        frame[spec.cell_type_key] = cond.cell_type
    for key, value in zip(spec.covariate_keys, cond.covariates, strict=True):
        frame[key] = value
    return frame
