"""What a prediction asks for: labels, a query table or nothing, resolved to conditions.

A query is read against the conditions a model was trained on: a label without a dose takes
the label's unique training dose, a label without a cell type is asked in every cell type whose
controls are in the query data, and ``None`` asks for every training condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from condmonge.data.prepare import make_condition
from condmonge.data.spec import Condition, ConditionSpec
from condmonge.errors import DataError, UnknownConditionError

__all__ = ["Query", "resolve_query"]

#: Labels (``"A+B"``), :class:`Condition` objects, a table of condition columns, or ``None``.
Query = Sequence[str | Condition] | pd.DataFrame | None


def resolve_query(
    query: Query,
    spec: ConditionSpec,
    trained: Sequence[Condition],
    *,
    dose: float | str | None = None,
    cell_type: str | None = None,
    cell_types_available: Sequence[str] = (),
) -> list[Condition]:
    """Resolve a query to the conditions to predict, one predicted block each.

    Args:
      query: labels, conditions, a table with the ``spec``'s condition (and dose, cell type,
        covariate) columns, or ``None`` for every training condition.
      spec: the obs columns the model was trained with.
      trained: the ``K`` training conditions.
      dose: dose of labelled conditions (``None``: the label's unique training dose).
      cell_type: cell type of labelled conditions (``None``: every available one).
      cell_types_available: cell types with control cells in the query data.

    Returns:
      The conditions, in query order (cell types within a label in sorted order).
    """
    if query is None:
        if dose is None and cell_type is None:
            return [
                c
                for c in trained
                if not cell_types_available or c.cell_type in cell_types_available
            ]
        query = sorted({c.label(spec.combination_sep) for c in trained})
    if isinstance(query, pd.DataFrame):
        return [_row_condition(row, index, spec) for index, row in query.iterrows()]
    if spec.cell_type_key is None:
        types: Sequence[str | None] = [None]
    elif cell_type is not None:
        types = [cell_type]
    else:
        types = cell_types_available or sorted(
            {c.cell_type for c in trained if c.cell_type is not None}
        )
    out: list[Condition] = []
    for item in query:
        if isinstance(item, Condition):
            out.append(item)
        else:
            out += [_label_condition(item, dose, t, spec, trained) for t in types]
    return out


def _label_condition(
    label: str,
    dose: float | str | None,
    cell_type: str | None,
    spec: ConditionSpec,
    trained: Sequence[Condition],
) -> Condition:
    if dose is None:
        names = tuple(sorted(label.split(spec.combination_sep)))
        doses = {c.doses for c in trained if c.perturbations == names}
        if spec.dose_key is not None and len(doses) != 1:
            raise UnknownConditionError(
                f"condition '{label}' needs a dose (--dose or a '{spec.dose_key}' column in the "
                "query): the model was trained with doses"
            )
        dose = next(iter(doses))[0] if doses else 1.0
    if label == spec.control:
        raise UnknownConditionError(
            f"'{label}' is the control label; the map of the control is the identity"
        )
    return make_condition(label, dose, cell_type, (), spec.combination_sep)


def _row_condition(row: pd.Series, index: object, spec: ConditionSpec) -> Condition:
    if spec.condition_key not in row:
        raise DataError(
            f"the query table has no column '{spec.condition_key}' (row {index}); give the "
            "condition in that column"
        )
    cell_type = None
    if spec.cell_type_key is not None:
        if spec.cell_type_key not in row:
            raise DataError(f"the query table has no column '{spec.cell_type_key}'")
        cell_type = str(row[spec.cell_type_key])
    covariates = tuple(float(row[k]) for k in spec.covariate_keys)
    dose = row[spec.dose_key] if spec.dose_key and spec.dose_key in row else None
    if spec.dose_key and dose is None:
        raise DataError(f"the query table has no column '{spec.dose_key}'")
    return make_condition(
        str(row[spec.condition_key]),
        1.0 if dose is None else dose,
        cell_type,
        covariates,
        spec.combination_sep,
        where=f"query row {index}",
    )
