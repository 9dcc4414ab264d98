"""Evaluate predicted AnnData against observed treated cells, condition by condition.

A prediction (from the model or a baseline) holds one block of rows per condition, identified by
``obs['condition_id']`` (:meth:`Condition.key`). The truth is an AnnData with the real treated
cells of those conditions and control cells; each condition is compared with the treated cells
of the same key, and mean deltas are taken against the truth's controls of the same cell type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.conditions.spec import Condition
from condmonge.config import DataConfig
from condmonge.data.anndata_io import align_features, feature_matrix
from condmonge.data.prepare import label_cells
from condmonge.errors import DataError, suggest
from condmonge.evaluate.metrics import DE_SIZES, evaluate_populations, l2_uvp

__all__ = ["TruthSets", "evaluate_prediction", "truth_sets"]


class TruthSets:
    """Observed treated and control cells of every condition of a truth AnnData.

    Attributes:
      conditions: ``{condition key: Condition}``.
      treated: ``{key: [m, d]}`` observed treated cells.
      control: ``{cell type: [n, d]}`` observed control cells.
      feature_names: the feature order of the arrays.
    """

    def __init__(self, conditions, treated, control, feature_names):
        self.conditions: dict[str, Condition] = conditions
        self.treated: dict[str, np.ndarray] = treated
        self.control: dict[str | None, np.ndarray] = control
        self.feature_names: list[str] = feature_names


def truth_sets(adata: ad.AnnData, cfg: DataConfig) -> TruthSets:
    """Group the cells of a truth AnnData by condition key (and controls by cell type)."""
    cells = label_cells(adata, cfg)
    x = feature_matrix(adata, cfg.use_rep)
    sep = cfg.combination_sep
    treated = {c.key(sep): x[cells.condition_of_cell == i] for i, c in enumerate(cells.conditions)}
    control = {}
    for ct in {c.cell_type for c in cells.conditions} | set(
        cells.cell_type_of_cell[cells.is_control].tolist()
    ):
        rows = cells.is_control & (
            (cells.cell_type_of_cell == ct) if ct is not None else np.ones(len(x), bool)
        )
        if rows.any():
            control[ct] = x[rows]
    names = (
        [str(v) for v in adata.var_names]
        if cfg.use_rep is None
        else [f"{cfg.use_rep}_{i}" for i in range(x.shape[1])]
    )
    return TruthSets({c.key(sep): c for c in cells.conditions}, treated, control, names)


def evaluate_prediction(
    prediction: ad.AnnData,
    truth: ad.AnnData | TruthSets,
    cfg: DataConfig,
    *,
    method: str | None = None,
    true_map: Callable[[Condition, np.ndarray], np.ndarray] | None = None,
    sources: np.ndarray | None = None,
    max_cells: int = 500,
    de_sizes: Sequence[int] = DE_SIZES,
    seed: int = 0,
) -> pd.DataFrame:
    """Every metric for every predicted condition: one row per condition.

    Args:
      prediction: predicted cells with ``obs['condition_id']`` (as written by ``predict``).
      truth: observed cells (AnnData, or :func:`truth_sets` of one, reused across methods).
      cfg: obs column names of the truth.
      method: written into a ``method`` column.
      true_map: ``(condition, x) -> T*(x)`` when the optimal maps are known (synthetic data);
        with ``sources`` (the query's features, indexed by ``obs['source_index']``) it adds
        ``l2_uvp``: percent of target variance left unexplained.
      max_cells: populations are subsampled to this size (seeded) for the distribution metrics.

    Returns:
      Table indexed by condition key, with ``label``, ``cell_type``, ``n_pred``, ``n_true`` and
      every metric of :func:`~condmonge.evaluate.metrics.population_metrics`.
    """
    sets = truth if isinstance(truth, TruthSets) else truth_sets(truth, cfg)
    pred_x, ids, keys = _predicted_blocks(prediction, sets)
    preds, truths, controls, rows = [], [], [], []
    for key in keys:
        cond = sets.conditions[key]
        if cond.cell_type not in sets.control:
            raise DataError(
                f"the truth has no control cells of cell type '{cond.cell_type}' (needed for "
                f"mean deltas of '{key}')"
            )
        block = ids == key
        preds.append(pred_x[block])
        truths.append(sets.treated[key])
        controls.append(sets.control[cond.cell_type])
        row = {
            "label": cond.label(cfg.combination_sep),
            "cell_type": cond.cell_type,
            "n_pred": int(block.sum()),
            "n_true": len(sets.treated[key]),
        }
        if true_map is not None and sources is not None:
            source_index = prediction.obs["source_index"].to_numpy()[block]
            row["l2_uvp"] = l2_uvp(pred_x[block], true_map(cond, sources[source_index]))
        rows.append(row)
    metrics = evaluate_populations(
        preds, truths, controls, keys, max_cells=max_cells, de_sizes=de_sizes, seed=seed
    )
    table = pd.concat([pd.DataFrame(rows, index=metrics.index), metrics], axis=1)
    if method is not None:
        table.insert(0, "method", method)
    return table


def _predicted_blocks(prediction: ad.AnnData, sets: TruthSets):
    """``(features [n, d], condition id of each cell [n], condition ids in order)``, checked."""
    if "condition_id" not in prediction.obs:
        raise DataError(
            "the prediction has no obs['condition_id']; evaluate AnnData written by "
            "`condmonge predict` or `ConditionalMonge.predict`, or score any prediction with "
            "`condmonge evaluate --condition-key ...` (condmonge.evaluate.score_predictions)"
        )
    pred_x = align_features(prediction, sets.feature_names, None)
    ids = prediction.obs["condition_id"].astype(str).to_numpy()
    keys = list(dict.fromkeys(ids))
    missing = [k for k in keys if k not in sets.treated]
    if missing:
        raise DataError(
            f"{len(missing)} predicted condition(s) have no observed cells in the truth, e.g. "
            f"'{missing[0]}'{suggest(missing[0], sets.treated)}; the truth must hold the "
            "treated cells of every predicted condition"
        )
    return pred_x, ids, keys
