"""Train/test splits of an AnnData for evaluating perturbation-response models.

Every split function returns a categorical :class:`pandas.Series` indexed by ``obs_names`` with
the values ``"train"`` and ``"test"``; :func:`make_split` is the common entry point and also
writes the split into ``adata.obs[key_added]``.

Conventions shared by every kind:

- **Controls are on both sides.** Control cells are the source of every map, so they are split
  at random *within each cell type*: ``control_test_fraction`` of them (at least one, at most all
  but one) go to test, so train and test both hold controls of every cell type. A cell type
  with a single control cell cannot be split and is an error.
- **Units.** A *condition* is a perturbation label, canonicalised (``"B+A"`` is ``A+B``), at
  every dose and in every cell type, as in ``ConditionalMonge.fit(holdout=...)``; a full
  :meth:`~condmonge.conditions.spec.Condition.key` (``"A+B|dose=10|cell_type=k562"``) selects
  one dose and cell type. A *perturbation* is one name in a label (``A`` in ``A+B``).
- **Perturbation-out** holds out *every* condition whose perturbation set contains a held-out
  perturbation: all its doses, cell types and combinations. K-fold over perturbations uses the
  same rule for the perturbations of one fold.
- **Seeded.** The same data, arguments and ``seed`` give the same split. Held-out names are drawn
  from sorted lists, so which conditions are held out does not depend on the order of the cells.
- Both sides must keep treated cells; a split that would leave one side without any is an
  error, as is a held-out name that does not occur in the data (with a "did you mean").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.conditions.spec import Condition, parse_perturbations
from condmonge.config import DataConfig
from condmonge.data.prepare import label_cells
from condmonge.errors import ConfigError, DataError, UnknownConditionError, suggest

__all__ = [
    "SPLIT_KINDS",
    "cell_type_split",
    "combination_split",
    "condition_split",
    "covariate_split",
    "dose_split",
    "kfold_split",
    "make_split",
    "perturbation_folds",
    "perturbation_split",
    "random_split",
    "split_summary",
]

SplitKind = Literal[
    "random", "condition", "perturbation", "dose", "combination", "cell_type", "kfold", "covariate"
]
SPLIT_KINDS: tuple[str, ...] = (
    "random",
    "condition",
    "perturbation",
    "dose",
    "combination",
    "cell_type",
    "kfold",
    "covariate",
)
_SIDES = ["train", "test"]


@dataclass(frozen=True)
class _Cells:
    """Per-cell view of the obs table needed by every split."""

    obs_names: pd.Index
    conditions: list[Condition]
    condition_of_cell: np.ndarray  # index into conditions, -1 for controls
    cell_type: np.ndarray  # object: str, or None without a cell-type key
    condition_key: str
    cell_type_key: str | None
    sep: str

    @property
    def is_control(self) -> np.ndarray:
        return self.condition_of_cell < 0

    def labels(self) -> list[str]:
        """Canonical label of each condition (``A+B``)."""
        return [c.label(self.sep) for c in self.conditions]

    def perturbations(self) -> list[str]:
        """Every perturbation name, sorted."""
        return sorted({p for c in self.conditions for p in c.perturbations})

    def cells_of(self, test_conditions: np.ndarray) -> np.ndarray:
        """Per-cell mask of treated cells whose condition is flagged in ``test_conditions``."""
        flags = np.append(np.asarray(test_conditions, bool), False)  # index -1: controls
        return flags[self.condition_of_cell]


def _require_column(adata: ad.AnnData, key: str | None, what: str) -> None:
    if key is not None and key not in adata.obs.columns:
        raise DataError(
            f"adata.obs has no column '{key}'{suggest(key, adata.obs.columns)} (the {what}); "
            f"columns: {', '.join(map(str, adata.obs.columns[:12]))}"
        )


def _cells(
    adata: ad.AnnData,
    condition_key: str,
    control: str,
    dose_key: str | None,
    cell_type_key: str | None,
    sep: str,
) -> _Cells:
    if not isinstance(adata, ad.AnnData):
        raise DataError(f"expected an AnnData, got {type(adata).__name__}")
    _require_column(adata, condition_key, "condition column, condition_key")
    _require_column(adata, dose_key, "dose column, dose_key")
    _require_column(adata, cell_type_key, "cell-type column, cell_type_key")
    labels = adata.obs[condition_key]
    if labels.isna().any():
        raise DataError(
            f"adata.obs['{condition_key}'] has {int(labels.isna().sum())} missing values; label "
            "every cell (controls with the control label)"
        )
    labels = labels.astype(str)
    if not (labels == control).any():
        raise DataError(
            f"control label '{control}' not found in adata.obs['{condition_key}']"
            f"{suggest(control, labels.unique())}; set control (--control) to the label of "
            "untreated cells"
        )
    cfg = DataConfig(
        condition_key=condition_key,
        control=control,
        dose_key=dose_key,
        cell_type_key=cell_type_key,
        combination_sep=sep,
    )
    labelled = label_cells(adata, cfg)
    return _Cells(
        adata.obs_names,
        labelled.conditions,
        labelled.condition_of_cell,
        labelled.cell_type_of_cell,
        condition_key,
        cell_type_key,
        sep,
    )


def _rng(seed: int, stream: int) -> np.random.Generator:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), stream])


def _check_fraction(value: float, name: str) -> float:
    if not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _count(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up, at least 1 and at most ``n - 1`` (``n >= 2``)."""
    return min(max(math.floor(fraction * n + 0.5), 1), n - 1)


def _choose(units: Sequence[str], fraction: float, seed: int, what: str) -> list[str]:
    """A seeded random ``fraction`` of the sorted ``units``: at least one, at most all but one."""
    fraction = _check_fraction(fraction, "fraction")
    units = sorted(units)
    if len(units) < 2:
        raise DataError(
            f"the data have {len(units)} {what}(s); holding out a fraction needs at least 2"
        )
    k = _count(fraction, len(units))
    picked = _rng(seed, 0).choice(len(units), size=k, replace=False)
    return [units[i] for i in sorted(picked)]


def _unknown(name: str, available: Sequence[str], what: str, where: str) -> UnknownConditionError:
    shown = ", ".join(sorted(available)[:10]) + (", ..." if len(available) > 10 else "")
    return UnknownConditionError(
        f"{what} '{name}' does not occur in {where}{suggest(name, available)}; available: {shown}"
    )


def _as_list(holdout: str | Sequence[Any] | None) -> list[Any]:
    if holdout is None:
        return []
    if isinstance(holdout, str | int | float):
        return [holdout]
    return list(holdout)


def _finish(
    cells: _Cells, test_treated: np.ndarray, control_test_fraction: float, seed: int
) -> pd.Series:
    """Add the per-cell-type control split to a treated-cell assignment; check both sides."""
    control_test_fraction = _check_fraction(control_test_fraction, "control_test_fraction")
    is_control = cells.is_control
    test = np.asarray(test_treated, bool) & ~is_control
    rng = _rng(seed, 2)
    control_rows = np.flatnonzero(is_control)
    control_types = cells.cell_type[control_rows]
    for cell_type in sorted(set(control_types), key=str):
        rows = control_rows[control_types == cell_type]
        if rows.size < 2:
            raise DataError(
                f"cell type '{cell_type}' has {rows.size} control cell; a split needs at least 2 "
                "so that train and test both have controls of every cell type"
            )
        n_test = _count(control_test_fraction, rows.size)
        test[rng.choice(rows, size=n_test, replace=False)] = True
    treated_types = set(cells.cell_type[~is_control]) - set(control_types)
    if treated_types:
        missing = sorted(treated_types, key=str)[0]
        raise DataError(
            f"cell type '{missing}' has treated cells but no control cells "
            f"(adata.obs['{cells.cell_type_key}']); add its controls or drop its cells"
        )
    for side, mask in (("test", test), ("train", ~test)):
        if not (mask & ~is_control).any():
            raise DataError(
                f"this split leaves no treated cells in {side}; hold out "
                f"{'more' if side == 'test' else 'fewer'} conditions"
            )
    values = pd.Categorical(np.where(test, "test", "train"), categories=_SIDES)
    return pd.Series(values, index=cells.obs_names.copy(), name="split")


def random_split(
    adata: ad.AnnData,
    *,
    fraction: float = 0.2,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """In-distribution split: ``fraction`` of the cells of every condition go to test.

    Stratified by condition (label, dose and cell type): a condition with ``n >= 2`` cells puts
    ``fraction * n`` of them (rounded half up), at least one and at most ``n - 1``, in test; a
    condition with one cell stays in train. Every condition of the test side is thus seen in
    training.
    """
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    fraction = _check_fraction(fraction, "fraction")
    rng = _rng(seed, 1)
    test = np.zeros(len(cells.obs_names), bool)
    order = np.argsort(cells.condition_of_cell, kind="stable")
    ids = np.arange(len(cells.conditions))
    bounds = np.searchsorted(cells.condition_of_cell[order], np.r_[ids, ids[-1:] + 1])
    for cid in ids:
        rows = order[bounds[cid] : bounds[cid + 1]]
        if rows.size < 2:
            continue
        n_test = _count(fraction, rows.size)
        test[rng.choice(rows, size=n_test, replace=False)] = True
    return _finish(cells, test, control_test_fraction, seed)


def _match_conditions(cells: _Cells, holdout: Sequence[str]) -> np.ndarray:
    """Mask over conditions matching a label (any order) or a full condition key."""
    labels = cells.labels()
    keys = [c.key(cells.sep) for c in cells.conditions]
    chosen = np.zeros(len(cells.conditions), bool)
    for item in holdout:
        item = str(item)
        if "|" in item:
            hit = np.array([k == item for k in keys], bool)
            available: list[str] = keys
        else:
            label = cells.sep.join(sorted(parse_perturbations(item, cells.sep)))
            hit = np.array([lab == label for lab in labels], bool)
            available = sorted(set(labels))
        if not hit.any():
            raise _unknown(item, available, "condition", f"adata.obs['{cells.condition_key}']")
        chosen |= hit
    return chosen


def condition_split(
    adata: ad.AnnData,
    holdout: Sequence[str] | None = None,
    *,
    fraction: float = 0.2,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """Condition-out: every cell of the held-out conditions goes to test.

    Args:
      holdout: condition labels (``"A+B"``, any order; all doses and cell types) or full
        condition keys (``"A+B|dose=10|cell_type=k562"``). ``None`` holds out a seeded random
        ``fraction`` of the distinct labels.
    """
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    items = _as_list(holdout)
    if not items:
        items = _choose(sorted(set(cells.labels())), fraction, seed, "condition")
    return _finish(
        cells, cells.cells_of(_match_conditions(cells, items)), control_test_fraction, seed
    )


def _perturbations_out(cells: _Cells, names: Sequence[str]) -> np.ndarray:
    available = cells.perturbations()
    for name in names:
        if name not in available:
            raise _unknown(name, available, "perturbation", f"adata.obs['{cells.condition_key}']")
    held = set(names)
    return np.array([bool(held & set(c.perturbations)) for c in cells.conditions], bool)


def perturbation_split(
    adata: ad.AnnData,
    holdout: Sequence[str] | None = None,
    *,
    fraction: float = 0.2,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """Perturbation-out: every condition containing a held-out perturbation goes to test.

    That is all doses of the drug, in every cell type, alone and in every combination, so the
    model has never seen the perturbation in training.

    Args:
      holdout: perturbation names (``"A"``); ``None`` holds out a seeded random ``fraction`` of
        the perturbations.
    """
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    names = [str(n) for n in _as_list(holdout)]
    if not names:
        names = _choose(cells.perturbations(), fraction, seed, "perturbation")
    test = cells.cells_of(_perturbations_out(cells, names))
    return _finish(cells, test, control_test_fraction, seed)


def perturbation_folds(
    adata: ad.AnnData,
    n_folds: int = 5,
    *,
    condition_key: str = "condition",
    control: str = "control",
    sep: str = "+",
    seed: int = 0,
) -> list[list[str]]:
    """Partition the perturbations into ``n_folds`` seeded folds of near-equal size."""
    cells = _cells(adata, condition_key, control, None, None, sep)
    return _folds(cells.perturbations(), n_folds, seed)


def _folds(perturbations: list[str], n_folds: int, seed: int) -> list[list[str]]:
    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if n_folds > len(perturbations):
        raise DataError(
            f"the data have {len(perturbations)} perturbations, too few for {n_folds} folds; "
            f"use n_folds <= {len(perturbations)}"
        )
    order = _rng(seed, 0).permutation(len(perturbations))
    return [sorted(perturbations[i] for i in part) for part in np.array_split(order, n_folds)]


def kfold_split(
    adata: ad.AnnData,
    *,
    n_folds: int = 5,
    fold: int = 0,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """Fold ``fold`` of a k-fold over perturbations, held out as in :func:`perturbation_split`.

    The folds (:func:`perturbation_folds`) partition the perturbations; a combination whose
    perturbations fall in two folds is in test for both.
    """
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    folds = _folds(cells.perturbations(), n_folds, seed)
    if not isinstance(fold, int | np.integer) or not 0 <= fold < n_folds:
        raise ConfigError(f"fold must be an integer in [0, {n_folds}), got {fold!r}")
    names = folds[fold]
    test = cells.cells_of(_perturbations_out(cells, names))
    return _finish(cells, test, control_test_fraction, seed)


def _parse_dose_holdout(
    holdout: Sequence[Any] | Mapping[str, Any], sep: str
) -> list[tuple[str | None, float]]:
    """``[(perturbation or None for every one, dose)]`` from numbers, ``"10"``, ``"A=10"``."""
    items: list[tuple[str | None, Any]] = []
    if isinstance(holdout, Mapping):
        for name, doses in holdout.items():
            items += [(str(name), d) for d in _as_list(doses)]
    else:
        for item in _as_list(holdout):
            if isinstance(item, str) and "=" in item:
                name, _, dose = item.partition("=")
                items.append((name.strip(), dose))
            else:
                items.append((None, item))
    parsed = []
    for name, dose in items:
        try:
            value = float(dose)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"held-out dose {dose!r} is not a number >= 0; give doses like 10 (every "
                "perturbation) or A=10 (one perturbation)"
            )
        parsed.append((name, value))
    return parsed


def dose_split(
    adata: ad.AnnData,
    holdout: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    dose_key: str | None = None,
    condition_key: str = "condition",
    control: str = "control",
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """Dose-out: conditions given at a held-out dose go to test.

    A condition goes to test when any of its (perturbation, dose) pairs is held out, so a
    combination is held out when one of its members is at a held-out dose.

    Args:
      holdout: doses held out for every perturbation (``[10, 100]``), per perturbation
        (``{"A": [10]}`` or ``["A=10"]``), or mixed. ``None`` holds out the highest dose of
        every perturbation given at two or more doses (dose extrapolation).
      dose_key: the obs column of doses (required).
    """
    if dose_key is None:
        raise DataError("a dose split needs the dose column: set dose_key (--dose-key)")
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    doses_of: dict[str, set[float]] = {}
    for cond in cells.conditions:
        for name, dose in zip(cond.perturbations, cond.doses, strict=True):
            doses_of.setdefault(name, set()).add(dose)
    if holdout is None or (not isinstance(holdout, Mapping) and not _as_list(holdout)):
        pairs = {(n, max(d)) for n, d in doses_of.items() if len(d) >= 2}
        if not pairs:
            raise DataError(
                f"no perturbation occurs at two or more doses in adata.obs['{dose_key}']; "
                "nothing to extrapolate to"
            )
    else:
        pairs = set()
        every = sorted({d for ds in doses_of.values() for d in ds})
        for name, dose in _parse_dose_holdout(holdout, sep):
            if name is not None and name not in doses_of:
                raise _unknown(
                    name, list(doses_of), "perturbation", f"adata.obs['{condition_key}']"
                )
            targets = [name] if name is not None else list(doses_of)
            hits = [(n, d) for n in targets for d in doses_of[n] if math.isclose(d, dose)]
            if not hits:
                where = f"perturbation '{name}'" if name is not None else "any perturbation"
                given = sorted(doses_of[name]) if name is not None else every
                raise UnknownConditionError(
                    f"dose {dose:g} does not occur for {where} in adata.obs['{dose_key}']; "
                    f"doses there: {', '.join(f'{d:g}' for d in given)}"
                )
            pairs.update(hits)
    test_conditions = np.array(
        [bool(set(zip(c.perturbations, c.doses, strict=True)) & pairs) for c in cells.conditions]
    )
    return _finish(cells, cells.cells_of(test_conditions), control_test_fraction, seed)


def combination_split(
    adata: ad.AnnData,
    holdout: Sequence[str] | None = None,
    *,
    fraction: float = 0.2,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """Combination-out: held-out combinations go to test; their singles stay in training.

    Only combinations whose every perturbation also occurs alone (as a single-perturbation
    condition, which this split keeps in training) can be held out; requesting another one is
    an error.

    Args:
      holdout: combination labels (``"A+B"``, any order; all doses and cell types). ``None``
        holds out a seeded random ``fraction`` of the eligible combinations.
    """
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    labels = cells.labels()
    singles = {c.perturbations[0] for c in cells.conditions if len(c.perturbations) == 1}
    combos = {c.label(sep): c.perturbations for c in cells.conditions if len(c.perturbations) > 1}
    if not combos:
        raise DataError(
            f"adata.obs['{condition_key}'] has no combinations (labels like 'A{sep}B'); use "
            "kind='condition' or 'perturbation'"
        )
    items = [str(i) for i in _as_list(holdout)]
    if not items:
        eligible = [lab for lab, names in combos.items() if set(names) <= singles]
        if not eligible:
            raise DataError(
                "no combination has all its perturbations also given alone; nothing can be held "
                "out with its singles seen in training"
            )
        items = eligible if len(eligible) == 1 else _choose(eligible, fraction, seed, "combination")
    chosen = set()
    for item in items:
        names = tuple(sorted(parse_perturbations(item, sep)))
        label = sep.join(names)
        if len(names) < 2:
            raise DataError(
                f"'{item}' is a single perturbation, not a combination; hold it out with "
                "kind='condition' or 'perturbation'"
            )
        if label not in combos:
            raise _unknown(item, sorted(combos), "combination", f"adata.obs['{condition_key}']")
        unseen = [n for n in names if n not in singles]
        if unseen:
            raise DataError(
                f"combination '{item}' cannot be held out: {', '.join(repr(n) for n in unseen)} "
                "never occur(s) alone, so not every single perturbation would be seen in "
                "training; use kind='condition' to hold it out anyway"
            )
        chosen.add(label)
    test_conditions = np.array([lab in chosen for lab in labels], bool)
    return _finish(cells, cells.cells_of(test_conditions), control_test_fraction, seed)


def cell_type_split(
    adata: ad.AnnData,
    holdout: Sequence[str] | None = None,
    *,
    cell_type_key: str | None = None,
    fraction: float = 0.2,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """Cell-type-out: every treated cell of the held-out cell types goes to test.

    Their control cells are split like every other cell type's, so the test side has the
    controls to predict from.

    Args:
      holdout: cell types; ``None`` holds out a seeded random ``fraction`` of the cell types
        that have treated cells.
      cell_type_key: the obs column of cell types (required).
    """
    if cell_type_key is None:
        raise DataError("a cell-type split needs the cell-type column: set cell_type_key")
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    treated_types = sorted({str(t) for t in cells.cell_type[~cells.is_control]})
    names = [str(n) for n in _as_list(holdout)]
    if not names:
        names = _choose(treated_types, fraction, seed, "cell type with treated cells")
    for name in names:
        if name not in treated_types:
            raise _unknown(
                name,
                treated_types,
                "cell type (with treated cells)",
                f"adata.obs['{cell_type_key}']",
            )
    test = np.isin(cells.cell_type.astype(str), names) & ~cells.is_control
    return _finish(cells, test, control_test_fraction, seed)


def covariate_split(
    adata: ad.AnnData,
    holdout: Sequence[Any] | None = None,
    *,
    covariate_key: str | None = None,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
) -> pd.Series:
    """Covariate-out: treated cells at held-out values of a numeric covariate go to test.

    E.g. a held-out time point: train on 6 h and 24 h, test on 48 h.

    Args:
      holdout: covariate values held out (``[48]``); ``None`` holds out the largest value
        (extrapolation).
      covariate_key: the numeric obs column (required).
    """
    if covariate_key is None:
        raise DataError(
            "a covariate split needs the covariate column: set covariate_key (--covariate-key)"
        )
    _require_column(adata, covariate_key, "covariate column, covariate_key")
    values = adata.obs[covariate_key]
    if not pd.api.types.is_numeric_dtype(values):
        raise DataError(
            f"adata.obs['{covariate_key}'] is a covariate and must be numeric; convert it "
            f"(e.g. '24h' -> 24) with pd.to_numeric"
        )
    cells = _cells(adata, condition_key, control, dose_key, cell_type_key, sep)
    treated = values.to_numpy(np.float64)[~cells.is_control]
    present = sorted(set(treated[np.isfinite(treated)].tolist()))
    wanted = [max(present)] if not _as_list(holdout) and present else []
    for item in _as_list(holdout):
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"held-out covariate value {item!r} is not a number") from None
        if not any(math.isclose(value, p) for p in present):
            raise UnknownConditionError(
                f"value {value:g} does not occur in adata.obs['{covariate_key}'] for treated "
                f"cells; values there: {', '.join(f'{p:g}' for p in present)}"
            )
        wanted.append(value)
    column = values.to_numpy(np.float64)
    test = np.zeros(len(column), bool)
    for value in wanted:
        test |= np.isclose(column, value)
    return _finish(cells, test & ~cells.is_control, control_test_fraction, seed)


def make_split(
    adata: ad.AnnData,
    kind: SplitKind | str,
    *,
    holdout: Sequence[Any] | Mapping[str, Any] | None = None,
    fraction: float | None = None,
    n_folds: int = 5,
    fold: int = 0,
    condition_key: str = "condition",
    control: str = "control",
    dose_key: str | None = None,
    cell_type_key: str | None = None,
    sep: str = "+",
    control_test_fraction: float = 0.25,
    seed: int = 0,
    key_added: str | None = "split",
    covariate_key: str | None = None,
) -> pd.Series:
    """Split ``adata`` into train and test and write it into ``adata.obs[key_added]``.

    Args:
      kind: ``"random"`` (:func:`random_split`), ``"condition"`` (:func:`condition_split`),
        ``"perturbation"`` (:func:`perturbation_split`), ``"dose"`` (:func:`dose_split`),
        ``"combination"`` (:func:`combination_split`), ``"cell_type"``
        (:func:`cell_type_split`), ``"kfold"`` (:func:`kfold_split`) or ``"covariate"``
        (:func:`covariate_split`: held-out values of ``covariate_key``, e.g. a time point).
      holdout: what to hold out (labels, perturbations, doses or cell types by ``kind``);
        ``None`` draws a random ``fraction`` (default 0.2). Not used by random and kfold.
      fraction: the random fraction (of cells for ``"random"``, else of the held-out units).
      n_folds, fold: the k-fold over perturbations.
      key_added: the obs column to write (categorical ``train``/``test``); ``None`` writes
        nothing. The arguments are recorded in ``adata.uns[key_added]``.

    Returns:
      The split, indexed by ``adata.obs_names``.
    """
    if kind not in SPLIT_KINDS:
        raise ConfigError(
            f"unknown split kind '{kind}'{suggest(kind, SPLIT_KINDS)}; use one of "
            f"{', '.join(SPLIT_KINDS)}"
        )
    common: dict[str, Any] = {
        "condition_key": condition_key,
        "control": control,
        "dose_key": dose_key,
        "cell_type_key": cell_type_key,
        "sep": sep,
        "control_test_fraction": control_test_fraction,
        "seed": seed,
    }
    if key_added is not None and key_added in (condition_key, dose_key, cell_type_key):
        raise ConfigError(
            f"key_added '{key_added}' would overwrite the obs column it is read from; pick "
            "another name (e.g. 'split')"
        )
    if kind in ("random", "kfold") and holdout is not None and _as_list(holdout):
        raise ConfigError(f"a '{kind}' split takes no holdout; drop it (or use another kind)")
    if kind in ("dose", "kfold", "covariate") and fraction is not None:
        raise ConfigError(f"a '{kind}' split takes no fraction; drop it")
    frac = {} if fraction is None else {"fraction": fraction}
    if kind == "random":
        split = random_split(adata, **frac, **common)
    elif kind == "kfold":
        split = kfold_split(adata, n_folds=n_folds, fold=fold, **common)
    elif kind == "dose":
        split = dose_split(adata, holdout, **common)
    elif kind == "covariate":
        split = covariate_split(adata, holdout, covariate_key=covariate_key, **common)
    else:
        function = {
            "condition": condition_split,
            "perturbation": perturbation_split,
            "combination": combination_split,
            "cell_type": cell_type_split,
        }[kind]
        split = function(adata, holdout, **frac, **common)
    if key_added is not None:
        split = split.rename(key_added)
        adata.obs[key_added] = split.array  # positional: robust to duplicate obs_names
        record = {"kind": kind, "seed": int(seed), "control_test_fraction": control_test_fraction}
        record.update(condition_key=condition_key, control=control, sep=sep)
        if dose_key is not None:
            record["dose_key"] = dose_key
        if cell_type_key is not None:
            record["cell_type_key"] = cell_type_key
        if fraction is not None:
            record["fraction"] = float(fraction)
        if kind == "kfold":
            record.update(n_folds=int(n_folds), fold=int(fold))
        if kind == "covariate":
            record["covariate_key"] = covariate_key
        if holdout is not None and (isinstance(holdout, Mapping) or _as_list(holdout)):
            items = (
                [f"{k}={v}" for k, vs in holdout.items() for v in _as_list(vs)]
                if isinstance(holdout, Mapping)
                else [str(h) for h in _as_list(holdout)]
            )
            record["holdout"] = items
        adata.uns[key_added] = record
    return split


def split_summary(
    adata: ad.AnnData,
    key: str = "split",
    *,
    condition_key: str | None = None,
    control: str | None = None,
    sep: str | None = None,
) -> pd.DataFrame:
    """Cells and conditions on each side of the split in ``adata.obs[key]``.

    The obs column names default to those recorded by :func:`make_split` in
    ``adata.uns[key]`` (else ``"condition"`` and ``"control"``).

    Returns:
      One row per side (``train``, ``test``) with the columns ``cells``, ``control_cells``,
      ``treated_cells``, ``conditions`` (distinct labels), ``perturbations`` and ``unseen``
      (conditions of the side absent from train: 0 for train).
    """
    _require_column(adata, key, "split column")
    record = adata.uns.get(key, {})
    record = record if isinstance(record, Mapping) else {}
    condition_key = condition_key or record.get("condition_key", "condition")
    control = control or record.get("control", "control")
    sep = sep or record.get("sep", "+")
    _require_column(adata, condition_key, "condition column, condition_key")
    side = adata.obs[key].astype(str).to_numpy()
    bad = sorted(set(side) - set(_SIDES))
    if bad:
        raise DataError(f"adata.obs['{key}'] holds '{bad[0]}'; a split holds only train and test")
    raw = adata.obs[condition_key].astype(str).to_numpy()
    is_control = raw == control
    labels = np.array(
        [
            "" if c else sep.join(sorted(parse_perturbations(r, sep)))
            for r, c in zip(raw, is_control, strict=True)
        ]
    )
    train_labels = set(labels[(side == "train") & ~is_control])
    rows = {}
    for name in _SIDES:
        mask = side == name
        treated = set(labels[mask & ~is_control])
        rows[name] = {
            "cells": int(mask.sum()),
            "control_cells": int((mask & is_control).sum()),
            "treated_cells": int((mask & ~is_control).sum()),
            "conditions": len(treated),
            "perturbations": len({p for lab in treated for p in lab.split(sep)}),
            "unseen": len(treated - train_labels),
        }
    return pd.DataFrame.from_dict(rows, orient="index")
