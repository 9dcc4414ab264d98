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

from condmonge.data.prepare import label_cells
from condmonge.data.selectors import match_selectors
from condmonge.data.spec import Condition, ConditionSpec, parse_perturbations
from condmonge.errors import ConfigError, DataError, UnknownConditionError, suggest

__all__ = [
    "SPLIT_KINDS",
    "SplitPlan",
    "cell_type_split",
    "combination_split",
    "condition_split",
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
class SplitPlan:
    """What a split holds out: every argument of :func:`make_split` but the data's meaning.

    Attributes:
      kind: one of :data:`SPLIT_KINDS`.
      holdout: what to hold out (labels, perturbations, doses or cell types by ``kind``);
        ``None`` draws a random ``fraction``. Not used by ``random`` and ``kfold``.
      fraction: the random fraction (of cells for ``random``, else of the held-out units);
        ``None`` is 0.2.
      n_folds, fold: the k-fold over perturbations.
      control_test_fraction: share of each cell type's controls put in test.
      seed: seeds every random choice.
    """

    kind: str = "random"
    holdout: Any = None
    fraction: float | None = None
    n_folds: int = 5
    fold: int = 0
    control_test_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ConfigError(
                f"unknown split kind '{self.kind}'{suggest(self.kind, SPLIT_KINDS)}; use one of "
                f"{', '.join(SPLIT_KINDS)}"
            )
        if self.kind in ("random", "kfold") and self.holdout_items():
            raise ConfigError(
                f"a '{self.kind}' split takes no holdout; drop it (or use another kind)"
            )
        if self.kind in ("dose", "kfold", "covariate") and self.fraction is not None:
            raise ConfigError(f"a '{self.kind}' split takes no fraction; drop it")

    @property
    def share(self) -> float:
        """The random fraction, 0.2 unless given."""
        return 0.2 if self.fraction is None else self.fraction

    def holdout_items(self) -> list[Any]:
        """The held-out names as a list (a mapping of doses as ``name=dose`` strings)."""
        if isinstance(self.holdout, Mapping):
            return [f"{k}={v}" for k, vs in self.holdout.items() for v in _as_list(vs)]
        return _as_list(self.holdout)

    def record(self, spec: ConditionSpec) -> dict[str, Any]:
        """The plan and the spec's keys, as written to ``adata.uns[key_added]``."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "seed": int(self.seed),
            "control_test_fraction": self.control_test_fraction,
            "condition_key": spec.condition_key,
            "control": spec.control,
            "sep": spec.combination_sep,
        }
        for key in ("dose_key", "cell_type_key"):
            if getattr(spec, key) is not None:
                record[key] = getattr(spec, key)
        if self.fraction is not None:
            record["fraction"] = float(self.fraction)
        if self.kind == "kfold":
            record.update(n_folds=int(self.n_folds), fold=int(self.fold))
        if self.kind == "covariate" and spec.covariate_keys:
            record["covariate_key"] = spec.covariate_keys[0]
        if self.holdout_items():
            record["holdout"] = [str(h) for h in self.holdout_items()]
        return record


@dataclass(frozen=True)
class _Cells:
    """Per-cell view of the obs table needed by every split."""

    obs_names: pd.Index
    conditions: list[Condition]
    condition_of_cell: np.ndarray  # index into conditions, -1 for controls
    cell_type: np.ndarray  # object: str, or None without a cell-type key
    spec: ConditionSpec

    @property
    def sep(self) -> str:
        """The separator of combination labels."""
        return self.spec.combination_sep

    @property
    def where(self) -> str:
        """Where the condition labels live, for messages."""
        return f"adata.obs['{self.spec.condition_key}']"

    @property
    def is_control(self) -> np.ndarray:
        """``[n_cells]`` mask of control cells."""
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


def _cells(adata: ad.AnnData, spec: ConditionSpec) -> _Cells:
    labelled = label_cells(adata, spec.validate(adata))
    return _Cells(
        adata.obs_names,
        labelled.conditions,
        labelled.condition_of_cell,
        labelled.cell_type_of_cell,
        spec,
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


def _finish(cells: _Cells, test_treated: np.ndarray, plan: SplitPlan) -> pd.Series:
    """Add the per-cell-type control split to a treated-cell assignment; check both sides."""
    control_test_fraction = _check_fraction(plan.control_test_fraction, "control_test_fraction")
    seed = plan.seed
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
            f"(adata.obs['{cells.spec.cell_type_key}']); add its controls or drop its cells"
        )
    for side, mask in (("test", test), ("train", ~test)):
        if not (mask & ~is_control).any():
            raise DataError(
                f"this split leaves no treated cells in {side}; hold out "
                f"{'more' if side == 'test' else 'fewer'} conditions"
            )
    values = pd.Categorical(np.where(test, "test", "train"), categories=_SIDES)
    return pd.Series(values, index=cells.obs_names.copy(), name="split")


# --- the test side of each kind: (cells, plan) -> [n_cells] mask of held-out treated cells ----


def _random_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    """``fraction`` of the cells of every condition (one-cell conditions stay in train)."""
    fraction = _check_fraction(plan.share, "fraction")
    rng = _rng(plan.seed, 1)
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
    return test


def _match_conditions(cells: _Cells, holdout: Sequence[str]) -> np.ndarray:
    """Mask over conditions matching a selector (see :mod:`condmonge.data.selectors`)."""
    items = [str(item) for item in holdout]
    return match_selectors(
        cells.conditions, items, sep=cells.sep, control=cells.spec.control, where=cells.where
    )


def _condition_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    items = plan.holdout_items()
    if not items:
        items = _choose(sorted(set(cells.labels())), plan.share, plan.seed, "condition")
    return cells.cells_of(_match_conditions(cells, items))


def _perturbations_out(cells: _Cells, names: Sequence[str]) -> np.ndarray:
    available = cells.perturbations()
    for name in names:
        if name not in available:
            raise _unknown(name, available, "perturbation", cells.where)
    held = set(names)
    return np.array([bool(held & set(c.perturbations)) for c in cells.conditions], bool)


def _perturbation_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    names = [str(n) for n in plan.holdout_items()]
    if not names:
        names = _choose(cells.perturbations(), plan.share, plan.seed, "perturbation")
    return cells.cells_of(_perturbations_out(cells, names))


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


def _kfold_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    folds = _folds(cells.perturbations(), plan.n_folds, plan.seed)
    if not isinstance(plan.fold, int | np.integer) or not 0 <= plan.fold < plan.n_folds:
        raise ConfigError(f"fold must be an integer in [0, {plan.n_folds}), got {plan.fold!r}")
    return cells.cells_of(_perturbations_out(cells, folds[plan.fold]))


def _parse_dose_holdout(holdout: Sequence[Any]) -> list[tuple[str | None, float]]:
    """``[(perturbation or None for every one, dose)]`` from numbers, ``"10"``, ``"A=10"``."""
    parsed = []
    for item in holdout:
        name, dose = (None, item)
        if isinstance(item, str) and "=" in item:
            name, _, dose = item.partition("=")
            name = name.strip()
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


def _held_dose_pairs(
    cells: _Cells, doses_of: dict[str, set[float]], holdout: Sequence[Any]
) -> set[tuple[str, float]]:
    """The (perturbation, dose) pairs that ``holdout`` names; unknown ones are errors."""
    pairs: set[tuple[str, float]] = set()
    every = sorted({d for ds in doses_of.values() for d in ds})
    for name, dose in _parse_dose_holdout(holdout):
        if name is not None and name not in doses_of:
            raise _unknown(name, list(doses_of), "perturbation", cells.where)
        targets = [name] if name is not None else list(doses_of)
        hits = [(n, d) for n in targets for d in doses_of[n] if math.isclose(d, dose)]
        if not hits:
            where = f"perturbation '{name}'" if name is not None else "any perturbation"
            given = sorted(doses_of[name]) if name is not None else every
            raise UnknownConditionError(
                f"dose {dose:g} does not occur for {where} in "
                f"adata.obs['{cells.spec.dose_key}']; doses there: "
                f"{', '.join(f'{d:g}' for d in given)}"
            )
        pairs.update(hits)
    return pairs


def _dose_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    doses_of: dict[str, set[float]] = {}
    for cond in cells.conditions:
        for name, dose in zip(cond.perturbations, cond.doses, strict=True):
            doses_of.setdefault(name, set()).add(dose)
    items = plan.holdout_items()
    if items:
        pairs = _held_dose_pairs(cells, doses_of, items)
    else:
        pairs = {(n, max(d)) for n, d in doses_of.items() if len(d) >= 2}
        if not pairs:
            raise DataError(
                f"no perturbation occurs at two or more doses in "
                f"adata.obs['{cells.spec.dose_key}']; nothing to extrapolate to"
            )
    test_conditions = np.array(
        [bool(set(zip(c.perturbations, c.doses, strict=True)) & pairs) for c in cells.conditions]
    )
    return cells.cells_of(test_conditions)


def _check_combination(item: str, cells: _Cells, combos: Mapping[str, Any], singles) -> str:
    """The canonical label of a held-out combination whose singles all stay in training."""
    names = tuple(sorted(parse_perturbations(item, cells.sep)))
    if len(names) < 2:
        raise DataError(
            f"'{item}' is a single perturbation, not a combination; hold it out with "
            "kind='condition' or 'perturbation'"
        )
    label = cells.sep.join(names)
    if label not in combos:
        raise _unknown(item, sorted(combos), "combination", cells.where)
    unseen = [n for n in names if n not in singles]
    if unseen:
        raise DataError(
            f"combination '{item}' cannot be held out: {', '.join(repr(n) for n in unseen)} "
            "never occur(s) alone, so not every single perturbation would be seen in "
            "training; use kind='condition' to hold it out anyway"
        )
    return label


def _combination_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    singles = {c.perturbations[0] for c in cells.conditions if len(c.perturbations) == 1}
    combos = {
        c.label(cells.sep): c.perturbations for c in cells.conditions if len(c.perturbations) > 1
    }
    if not combos:
        raise DataError(
            f"{cells.where} has no combinations (labels like 'A{cells.sep}B'); use "
            "kind='condition' or 'perturbation'"
        )
    items = [str(i) for i in plan.holdout_items()]
    if not items:
        eligible = [lab for lab, names in combos.items() if set(names) <= singles]
        if not eligible:
            raise DataError(
                "no combination has all its perturbations also given alone; nothing can be held "
                "out with its singles seen in training"
            )
        items = (
            eligible
            if len(eligible) == 1
            else _choose(eligible, plan.share, plan.seed, "combination")
        )
    chosen = {_check_combination(item, cells, combos, singles) for item in items}
    return cells.cells_of(np.array([lab in chosen for lab in cells.labels()], bool))


def _cell_type_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    treated_types = sorted({str(t) for t in cells.cell_type[~cells.is_control]})
    names = [str(n) for n in plan.holdout_items()]
    if not names:
        names = _choose(treated_types, plan.share, plan.seed, "cell type with treated cells")
    for name in names:
        if name not in treated_types:
            raise _unknown(
                name,
                treated_types,
                "cell type (with treated cells)",
                f"adata.obs['{cells.spec.cell_type_key}']",
            )
    return np.isin(cells.cell_type.astype(str), names) & ~cells.is_control


def _covariate_test(cells: _Cells, plan: SplitPlan) -> np.ndarray:
    """Treated cells at held-out values of the first covariate (e.g. a time point) go to test.

    ``holdout`` lists the values (``[48]``); ``None`` holds out the largest (extrapolation).
    """
    if not cells.spec.covariate_keys:
        raise DataError(
            "a covariate split needs the covariate column: set covariate_keys (--covariate-key)"
        )
    key = cells.spec.covariate_keys[0]
    present = sorted({c.covariates[0] for c in cells.conditions})
    wanted = []
    for item in plan.holdout_items() or [present[-1]]:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"held-out covariate value {item!r} is not a number") from None
        if not any(math.isclose(value, p) for p in present):
            raise UnknownConditionError(
                f"value {value:g} does not occur in adata.obs['{key}'] for treated cells; "
                f"values there: {', '.join(f'{p:g}' for p in present)}"
            )
        wanted.append(value)
    held = [any(math.isclose(c.covariates[0], w) for w in wanted) for c in cells.conditions]
    return cells.cells_of(np.array(held, bool))


_TEST_SIDE = {
    "random": _random_test,
    "condition": _condition_test,
    "perturbation": _perturbation_test,
    "dose": _dose_test,
    "combination": _combination_test,
    "cell_type": _cell_type_test,
    "kfold": _kfold_test,
    "covariate": _covariate_test,
}

#: The obs column each kind cannot do without.
_REQUIRED = {
    "dose": ("dose_key", "a dose split needs the dose column: set dose_key (--dose-key)"),
    "cell_type": (
        "cell_type_key",
        "a cell-type split needs the cell-type column: set cell_type_key",
    ),
}


def make_split(
    adata: ad.AnnData,
    kind: SplitKind | str | SplitPlan = "random",
    spec: ConditionSpec | None = None,
    *,
    key_added: str | None = "split",
    **plan: Any,
) -> pd.Series:
    """Split ``adata`` into train and test and write it into ``adata.obs[key_added]``.

    Args:
      adata: cells with the obs columns that ``spec`` names (``X`` is not read).
      kind: a :class:`SplitPlan`, or its ``kind``: ``"random"`` (stratified by condition),
        ``"condition"``, ``"perturbation"``, ``"dose"``, ``"combination"``, ``"cell_type"`` or
        ``"kfold"`` (see the module docstring and the functions of the same names), or
        ``"covariate"``: held-out values of the spec's first covariate (e.g. a time point).
      spec: the meaning of ``adata.obs``; ``None`` is the default spec (``condition`` /
        ``control``).
      key_added: the obs column to write (categorical ``train``/``test``); ``None`` writes
        nothing. The plan and the spec's keys are recorded in ``adata.uns[key_added]``.
      **plan: the fields of :class:`SplitPlan` (``holdout``, ``fraction``, ``n_folds``,
        ``fold``, ``control_test_fraction``, ``seed``) when ``kind`` is a name.

    Returns:
      The split ``[n_obs]``, indexed by ``adata.obs_names``.
    """
    plan_ = kind if isinstance(kind, SplitPlan) else _plan(kind, plan)
    spec = spec if spec is not None else ConditionSpec()
    if key_added is not None and key_added in spec.obs_keys:
        raise ConfigError(
            f"key_added '{key_added}' would overwrite the obs column it is read from; pick "
            "another name (e.g. 'split')"
        )
    if plan_.kind in _REQUIRED and getattr(spec, _REQUIRED[plan_.kind][0]) is None:
        raise DataError(_REQUIRED[plan_.kind][1])
    cells = _cells(adata, spec)
    split = _finish(cells, _TEST_SIDE[plan_.kind](cells, plan_), plan_)
    if key_added is not None:
        split = split.rename(key_added)
        adata.obs[key_added] = split.array  # positional: robust to duplicate obs_names
        adata.uns[key_added] = plan_.record(spec)
    return split


def _plan(kind: str, fields_: Mapping[str, Any]) -> SplitPlan:
    known = set(SplitPlan.__dataclass_fields__) - {"kind"}
    unknown = sorted(set(fields_) - known)
    if unknown:
        raise ConfigError(
            f"make_split got an unknown argument '{unknown[0]}'{suggest(unknown[0], known)}; "
            "the obs keys go in spec=ConditionSpec(...)"
        )
    return SplitPlan(kind, **fields_)


def random_split(adata: ad.AnnData, spec: ConditionSpec | None = None, **plan: Any) -> pd.Series:
    """In-distribution split: ``fraction`` of the cells of every condition go to test.

    Stratified by condition (label, dose and cell type): a condition with ``n >= 2`` cells puts
    ``fraction * n`` of them (rounded half up), at least one and at most ``n - 1``, in test; a
    condition with one cell stays in train. Every condition of the test side is thus seen in
    training.

    Args:
      adata: cells annotated as ``spec`` says.
      spec: the meaning of ``adata.obs``.
      **plan: ``fraction``, ``control_test_fraction``, ``seed`` (see :class:`SplitPlan`).
    """
    return make_split(adata, "random", spec, key_added=None, **plan)


def condition_split(
    adata: ad.AnnData, holdout: Any = None, spec: ConditionSpec | None = None, **plan: Any
) -> pd.Series:
    """Condition-out: every cell of the held-out conditions goes to test.

    Args:
      adata: cells annotated as ``spec`` says.
      holdout: condition labels (``"A+B"``, any order; all doses and cell types) or full
        condition keys (``"A+B|dose=10|cell_type=k562"``). ``None`` holds out a seeded random
        ``fraction`` of the distinct labels.
      spec: the meaning of ``adata.obs``.
      **plan: ``fraction``, ``control_test_fraction``, ``seed`` (see :class:`SplitPlan`).
    """
    return make_split(adata, "condition", spec, key_added=None, holdout=holdout, **plan)


def perturbation_split(
    adata: ad.AnnData, holdout: Any = None, spec: ConditionSpec | None = None, **plan: Any
) -> pd.Series:
    """Perturbation-out: every condition containing a held-out perturbation goes to test.

    That is all doses of the drug, in every cell type, alone and in every combination, so the
    model has never seen the perturbation in training.

    Args:
      adata: cells annotated as ``spec`` says.
      holdout: perturbation names (``"A"``); ``None`` holds out a seeded random ``fraction`` of
        the perturbations.
      spec: the meaning of ``adata.obs``.
      **plan: ``fraction``, ``control_test_fraction``, ``seed`` (see :class:`SplitPlan`).
    """
    return make_split(adata, "perturbation", spec, key_added=None, holdout=holdout, **plan)


def perturbation_folds(
    adata: ad.AnnData, n_folds: int = 5, spec: ConditionSpec | None = None, *, seed: int = 0
) -> list[list[str]]:
    """Partition the perturbations into ``n_folds`` seeded folds of near-equal size.

    Args:
      adata: cells annotated as ``spec`` says.
      n_folds: number of folds (at least 2, at most the number of perturbations).
      spec: the meaning of ``adata.obs``.
      seed: seeds the partition (the same as :func:`kfold_split` with this seed).
    """
    cells = _cells(adata, spec if spec is not None else ConditionSpec())
    return _folds(cells.perturbations(), n_folds, seed)


def kfold_split(adata: ad.AnnData, spec: ConditionSpec | None = None, **plan: Any) -> pd.Series:
    """Fold ``fold`` of a k-fold over perturbations, held out as in :func:`perturbation_split`.

    The folds (:func:`perturbation_folds`) partition the perturbations; a combination whose
    perturbations fall in two folds is in test for both.

    Args:
      adata: cells annotated as ``spec`` says.
      spec: the meaning of ``adata.obs``.
      **plan: ``n_folds``, ``fold``, ``control_test_fraction``, ``seed`` (see
        :class:`SplitPlan`).
    """
    return make_split(adata, "kfold", spec, key_added=None, **plan)


def dose_split(
    adata: ad.AnnData, holdout: Any = None, spec: ConditionSpec | None = None, **plan: Any
) -> pd.Series:
    """Dose-out: conditions given at a held-out dose go to test.

    A condition goes to test when any of its (perturbation, dose) pairs is held out, so a
    combination is held out when one of its members is at a held-out dose.

    Args:
      adata: cells annotated as ``spec`` says; ``spec.dose_key`` is required.
      holdout: doses held out for every perturbation (``[10, 100]``), per perturbation
        (``{"A": [10]}`` or ``["A=10"]``), or mixed. ``None`` holds out the highest dose of
        every perturbation given at two or more doses (dose extrapolation).
      spec: the meaning of ``adata.obs``.
      **plan: ``control_test_fraction``, ``seed`` (see :class:`SplitPlan`).
    """
    return make_split(adata, "dose", spec, key_added=None, holdout=holdout, **plan)


def combination_split(
    adata: ad.AnnData, holdout: Any = None, spec: ConditionSpec | None = None, **plan: Any
) -> pd.Series:
    """Combination-out: held-out combinations go to test; their singles stay in training.

    Only combinations whose every perturbation also occurs alone (as a single-perturbation
    condition, which this split keeps in training) can be held out; requesting another one is
    an error.

    Args:
      adata: cells annotated as ``spec`` says.
      holdout: combination labels (``"A+B"``, any order; all doses and cell types). ``None``
        holds out a seeded random ``fraction`` of the eligible combinations.
      spec: the meaning of ``adata.obs``.
      **plan: ``fraction``, ``control_test_fraction``, ``seed`` (see :class:`SplitPlan`).
    """
    return make_split(adata, "combination", spec, key_added=None, holdout=holdout, **plan)


def cell_type_split(
    adata: ad.AnnData, holdout: Any = None, spec: ConditionSpec | None = None, **plan: Any
) -> pd.Series:
    """Cell-type-out: every treated cell of the held-out cell types goes to test.

    Their control cells are split like every other cell type's, so the test side has the
    controls to predict from.

    Args:
      adata: cells annotated as ``spec`` says; ``spec.cell_type_key`` is required.
      holdout: cell types; ``None`` holds out a seeded random ``fraction`` of the cell types
        that have treated cells.
      spec: the meaning of ``adata.obs``.
      **plan: ``fraction``, ``control_test_fraction``, ``seed`` (see :class:`SplitPlan`).
    """
    return make_split(adata, "cell_type", spec, key_added=None, holdout=holdout, **plan)


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
