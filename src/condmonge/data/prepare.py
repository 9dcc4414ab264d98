"""From an AnnData to device-ready pools of cells grouped by condition.

The training step never touches AnnData: every cell lives once in ``features [N, d]`` and a
condition is an index range into ``target_rows`` (its treated cells) and ``source_rows`` (the
control cells of its cell type). Sampling a batch is then pure index arithmetic on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.data.selectors import match_selectors
from condmonge.data.spec import Condition, ConditionSpec, parse_doses, parse_perturbations
from condmonge.errors import DataError, UnknownConditionError

__all__ = ["CellPools", "LabelledCells", "build_pools", "label_cells", "select_conditions"]


@dataclass(frozen=True)
class LabelledCells:
    """Per-cell condition assignment of an AnnData.

    Attributes:
      conditions: the distinct treated conditions, sorted.
      condition_of_cell: ``[n_cells]`` index into ``conditions``; -1 for control cells.
      cell_type_of_cell: ``[n_cells]`` cell type (``None`` everywhere without a cell-type key).
    """

    conditions: list[Condition]
    condition_of_cell: np.ndarray
    cell_type_of_cell: np.ndarray

    @property
    def is_control(self) -> np.ndarray:
        """``[n_cells]`` boolean mask of control cells."""
        return self.condition_of_cell < 0


def label_cells(adata: ad.AnnData, spec: ConditionSpec) -> LabelledCells:
    """Parse condition, dose, cell type and covariates of every cell into :class:`Condition`.

    Args:
      adata: cells annotated as ``spec`` says (only ``obs`` is read).
      spec: the obs columns and the control label (a :class:`DataConfig` works too).
    """
    obs = adata.obs
    labels = obs[spec.condition_key].astype(str).to_numpy()
    doses = obs[spec.dose_key].astype(str).to_numpy() if spec.dose_key else np.full(len(obs), "1")
    cell_types = (
        obs[spec.cell_type_key].astype(str).to_numpy()
        if spec.cell_type_key
        else np.full(len(obs), None, dtype=object)
    )
    covariates = (
        obs[list(spec.covariate_keys)].to_numpy(np.float64)
        if spec.covariate_keys
        else np.zeros((len(obs), 0))
    )
    if covariates.size and not np.isfinite(covariates).all():
        raise DataError(f"adata.obs covariates {list(spec.covariate_keys)} contain NaN or inf")
    keys = pd.DataFrame({"label": labels, "dose": doses, "cell_type": cell_types.astype(str)})
    for j in range(covariates.shape[1]):
        keys[f"cov{j}"] = covariates[:, j]
    group_ids, uniques = pd.factorize(pd.MultiIndex.from_frame(keys))
    by_group: dict[int, Condition | None] = {}
    first_row = pd.Series(np.arange(len(obs))).groupby(group_ids).first()
    for group, row in first_row.items():
        if labels[row] == spec.control:
            by_group[group] = None
            continue
        by_group[group] = make_condition(
            labels[row],
            doses[row] if spec.dose_key else 1.0,
            cell_types[row],
            tuple(covariates[row]),
            spec.combination_sep,
            where=f"adata.obs['{spec.condition_key}'] row {row}",
        )
    conditions = sorted({c for c in by_group.values() if c is not None})
    index = {c: i for i, c in enumerate(conditions)}
    lookup = np.array(
        [-1 if by_group[g] is None else index[by_group[g]] for g in range(len(uniques))]
    )
    return LabelledCells(conditions, lookup[group_ids], cell_types)


def make_condition(
    label: str,
    dose: object,
    cell_type: str | None,
    covariates: tuple[float, ...] = (),
    sep: str = "+",
    where: str = "",
) -> Condition:
    """Build a canonical :class:`Condition` (perturbations sorted, doses aligned)."""
    try:
        names = parse_perturbations(label, sep)
        values = parse_doses(dose, len(names), sep)
    except UnknownConditionError as exc:
        raise UnknownConditionError(f"{exc} ({where})" if where else str(exc)) from None
    order = sorted(range(len(names)), key=lambda i: names[i])
    return Condition(
        tuple(names[i] for i in order),
        tuple(values[i] for i in order),
        None if cell_type is None else str(cell_type),
        tuple(float(c) for c in covariates),
    )


def select_conditions(
    conditions: Sequence[Condition],
    selectors: Sequence[str],
    sep: str = "+",
    control: str | None = None,
) -> list[int]:
    """Indices of ``conditions`` matching any holdout selector.

    The forms (``A+B`` in any order, ``A@NK``, partial or full keys) are those of
    :mod:`condmonge.data.selectors`, shared with the splits; ``control`` is refused.
    """
    mask = match_selectors(conditions, selectors, sep=sep, control=control)
    return [int(i) for i in np.flatnonzero(mask)]


class CellPools(NamedTuple):
    """Cells of ``k`` conditions as index ranges into one feature matrix (a pytree of arrays).

    Attributes:
      features: ``[N, d]`` every cell used, once.
      target_rows: ``[N_t]`` rows of ``features``, treated cells grouped by condition.
      target_start, target_count: ``[K]`` range of each condition in ``target_rows``.
      source_rows: ``[N_s]`` rows of control cells grouped by cell type.
      source_start, source_count: ``[K]`` range of each condition's controls in ``source_rows``.
    """

    features: np.ndarray
    target_rows: np.ndarray
    target_start: np.ndarray
    target_count: np.ndarray
    source_rows: np.ndarray
    source_start: np.ndarray
    source_count: np.ndarray


def _ranges(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.array([len(g) for g in groups], np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    rows = np.concatenate(groups).astype(np.int32) if groups else np.zeros(0, np.int32)
    return rows, starts, counts


def build_pools(
    features: np.ndarray,
    cells: LabelledCells,
    condition_ids: Sequence[int],
    validation_fraction: float,
    seed: int,
    validation_ids: Sequence[int] | None = None,
) -> tuple[CellPools, CellPools]:
    """Training and validation pools for the given conditions.

    Without ``validation_ids``, each condition's treated cells and each cell type's controls
    are split at random into a training and a validation part (``validation_fraction``; at
    least one cell stays in training); a group too small to spare a validation cell is
    validated on its training cells. With ``validation_ids`` (condition-level validation) the
    training pools hold every cell of ``condition_ids`` and the validation pools every cell of
    ``validation_ids``, each with all the controls of its cell type as sources.
    """
    rng = np.random.default_rng(seed)
    control_rows = np.flatnonzero(cells.is_control)
    by_conditions = validation_ids is not None
    control_split = {
        cell_type: _split_rows(
            rng,
            control_rows[cells.cell_type_of_cell[control_rows] == cell_type],
            0.0 if by_conditions else validation_fraction,
        )
        for cell_type in pd.unique(cells.cell_type_of_cell[control_rows])
    }
    train_t, val_t, train_s, val_s = [], [], [], []
    for cid in condition_ids:
        rows = _condition_rows(cells, cid, control_split)
        tr, va = (rows, rows) if by_conditions else _split_rows(rng, rows, validation_fraction)
        train_t.append(tr)
        val_t.append(va)
        train_s.append(control_split[cells.conditions[cid].cell_type][0])
        val_s.append(control_split[cells.conditions[cid].cell_type][1])
    if by_conditions:
        val_t = [_condition_rows(cells, cid, control_split) for cid in validation_ids]
        val_s = [control_split[cells.conditions[cid].cell_type][1] for cid in validation_ids]
    # Store each distinct cell row once and remap indices into the compact matrix.
    used = np.unique(
        np.concatenate(train_t + val_t + [r for pair in control_split.values() for r in pair])
    )
    remap = np.full(features.shape[0], -1, np.int64)
    remap[used] = np.arange(used.size)
    compact = np.ascontiguousarray(features[used], dtype=np.float32)
    return _pools(compact, remap, train_t, train_s), _pools(compact, remap, val_t, val_s)


def _condition_rows(cells: LabelledCells, cid: int, control_split: dict) -> np.ndarray:
    """The treated rows of condition ``cid``, checked to have cells and controls."""
    cond = cells.conditions[cid]
    rows = np.flatnonzero(cells.condition_of_cell == cid)
    if rows.size == 0:
        raise DataError(f"condition '{cond.key()}' has no cells")
    if cond.cell_type not in control_split:
        raise DataError(
            f"cell type '{cond.cell_type}' has treated cells ({cond.label()}) but no control "
            "cells; add its controls or drop its cells"
        )
    return rows


def _split_rows(
    rng: np.random.Generator, rows: np.ndarray, validation_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of one group; a group too small to spare one shares it."""
    rows = rng.permutation(rows)
    n_val = int(np.floor(validation_fraction * len(rows)))
    n_val = min(n_val, len(rows) - 1)
    return (rows[n_val:], rows[:n_val]) if n_val > 0 else (rows, rows)


def _pools(
    compact: np.ndarray, remap: np.ndarray, targets: list[np.ndarray], sources: list[np.ndarray]
) -> CellPools:
    """Index ranges into ``compact`` of each condition's targets and sources."""
    t_rows, t_start, t_count = _ranges([remap[t] for t in targets])
    # Conditions of one cell type share their controls: store each group once.
    unique_sources: dict[int, int] = {}
    groups, s_start, s_count = [], [], []
    offset = 0
    for s in sources:
        ident = id(s)
        if ident not in unique_sources:
            unique_sources[ident] = offset
            groups.append(remap[s])
            offset += len(s)
        s_start.append(unique_sources[ident])
        s_count.append(len(s))
    s_rows = np.concatenate(groups).astype(np.int32)
    return CellPools(
        compact,
        t_rows,
        t_start,
        t_count,
        s_rows,
        np.asarray(s_start, np.int32),
        np.asarray(s_count, np.int32),
    )
