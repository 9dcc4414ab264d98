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

from condmonge.conditions.spec import Condition
from condmonge.config import DataConfig
from condmonge.errors import DataError, UnknownConditionError

__all__ = ["assemble_prediction", "control_rows"]


def control_rows(adata: ad.AnnData, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Control mask ``[n]`` and cell type ``[n]`` (``None`` without a cell-type key) of a query.

    Without the condition column in ``obs`` every cell counts as a control.
    """
    if cfg.condition_key in adata.obs:
        is_control = adata.obs[cfg.condition_key].astype(str).to_numpy() == cfg.control
        if not is_control.any():
            raise DataError(
                f"adata.obs['{cfg.condition_key}'] has no '{cfg.control}' cells to predict from"
            )
    else:
        is_control = np.ones(adata.n_obs, bool)
    if cfg.cell_type_key is not None:
        if cfg.cell_type_key not in adata.obs:
            raise DataError(
                f"adata.obs has no column '{cfg.cell_type_key}'; the model maps controls per "
                "cell type, so the query needs it"
            )
        types = adata.obs[cfg.cell_type_key].astype(str).to_numpy().astype(object)
    else:
        types = np.full(adata.n_obs, None, dtype=object)
    return is_control, types


def assemble_prediction(
    adata: ad.AnnData,
    x: np.ndarray,
    conditions: Sequence[Condition],
    transport: Callable[[np.ndarray, Condition], np.ndarray],
    cfg: DataConfig,
    feature_names: Sequence[str],
    uns: Mapping[str, Any] | None = None,
) -> ad.AnnData:
    """Push the control cells of ``adata`` through ``transport`` for each condition.

    Args:
      adata: the query (its ``obs`` supplies control labels, cell types and names).
      x: ``[n_obs, d]`` features of ``adata`` already aligned to ``feature_names``.
      conditions: one predicted block per condition, sourced from controls of its cell type.
      transport: ``(x_controls, condition) -> predicted [n, d]``.
      cfg: obs column names.
      uns: stored under ``uns['condmonge']``.

    Returns:
      AnnData whose ``obs`` holds the condition columns, ``condition_id``, ``source_index`` and
      ``source_obs_name`` (the query cell each prediction came from).
    """
    if not conditions:
        raise UnknownConditionError("no conditions to predict")
    is_control, types = control_rows(adata, cfg)
    blocks, frames = [], []
    for cond in conditions:
        mask = is_control & (types == cond.cell_type) if cfg.cell_type_key else is_control
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            raise DataError(
                f"no control cells of cell type '{cond.cell_type}' in the query data for "
                f"'{cond.label(cfg.combination_sep)}'"
            )
        blocks.append(np.asarray(transport(x[rows], cond), np.float32))
        frame = pd.DataFrame(
            {
                cfg.condition_key: cond.label(cfg.combination_sep),
                "condition_id": cond.key(cfg.combination_sep),
                "source_index": rows,
                "source_obs_name": adata.obs_names[rows].astype(str),
            }
        )
        if cfg.dose_key:
            frame[cfg.dose_key] = cond.dose_label(cfg.combination_sep)
        if cfg.cell_type_key:
            frame[cfg.cell_type_key] = cond.cell_type
        for key, value in zip(cfg.covariate_keys, cond.covariates, strict=True):
            frame[key] = value
        frames.append(frame)
    obs = pd.concat(frames, ignore_index=True)
    obs.index = [f"pred-{i}" for i in range(len(obs))]
    for column in [cfg.condition_key, "condition_id", cfg.dose_key, cfg.cell_type_key]:
        if column:
            obs[column] = obs[column].astype("category")
    var = pd.DataFrame(index=pd.Index([str(f) for f in feature_names], dtype=str))
    out = ad.AnnData(X=np.concatenate(blocks).astype(np.float32), obs=obs, var=var)
    if uns is not None:
        out.uns["condmonge"] = dict(uns)
    return out
