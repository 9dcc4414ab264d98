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
from condmonge.errors import DataError, UnknownConditionError, suggest

__all__ = ["Query", "check_request", "resolve_query"]

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
    encodable_cell_types: Sequence[str] | None = None,
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
      encodable_cell_types: the cell types the model's encoder has features for (a
        cell-type embedding table can hold types whose treated cells were never seen);
        ``None``: the cell types of ``trained``.

    Returns:
      The conditions, in query order (cell types within a label in sorted order).

    Raises:
      DataError, UnknownConditionError: see :func:`check_request`.
    """
    labels = None if query is None or isinstance(query, pd.DataFrame) else list(query)
    check_request(spec, trained, labels, dose, cell_type, encodable_cell_types)
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
    if spec.covariate_keys:
        raise UnknownConditionError(
            f"the model conditions on the covariate(s) {', '.join(spec.covariate_keys)}; give "
            "the conditions as a query table with a column for each (--query)"
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
    covariates = tuple(_covariate(row, key, index) for key in spec.covariate_keys)
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


def _covariate(row: pd.Series, key: str, index: object) -> float:
    """The query row's value of covariate ``key``; missing or non-numeric is an error."""
    if key not in row:
        raise DataError(
            f"the query table has no column '{key}', a covariate of the model; add it (one "
            f"value per row, e.g. {key}=48)"
        )
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise DataError(
            f"the query table's covariate '{key}' is not a number at row {index} "
            f"('{row[key]}'); give numbers (e.g. 48 for 48 h)"
        ) from None


def check_request(
    spec: ConditionSpec,
    trained: Sequence[Condition],
    labels: Sequence[str | Condition] | None = None,
    dose: float | str | None = None,
    cell_type: str | None = None,
    encodable_cell_types: Sequence[str] | None = None,
) -> None:
    """Refuse a request the model cannot answer as asked, before any data is read.

    Args:
      spec: the obs columns the model was trained with.
      trained: the training conditions.
      labels: the asked labels (``None``: a table or every training condition).
      dose, cell_type: the request's dose and cell type (``--dose``, ``--cell-type``).
      encodable_cell_types: the cell types the model can encode (``None``: those of
        ``trained``); see :func:`resolve_query`.

    Raises:
      DataError: a dose or cell type for a model trained without them, or labels that are
        empty or name one condition twice (``A+B`` and ``B+A``).
      UnknownConditionError: a cell type the model has no features for.
    """
    if dose is not None and spec.dose_key is None:
        raise DataError(
            f"--dose {dose}: the model was trained without doses (no data.dose_key), so a "
            "dose cannot change its predictions; leave out --dose (dose= in Python)"
        )
    if cell_type is not None and spec.cell_type_key is None:
        raise DataError(
            f"--cell-type {cell_type}: the model was trained without cell types (no "
            "data.cell_type_key); leave out --cell-type (cell_type= in Python)"
        )
    if cell_type is not None:
        seen = {str(c.cell_type) for c in trained}
        known = sorted(seen if encodable_cell_types is None else set(encodable_cell_types))
        if cell_type not in known:
            raise UnknownConditionError(
                f"cell type '{cell_type}' was not seen in training and the model has no "
                f"embedding for it{suggest(cell_type, known)}; known cell types: "
                f"{', '.join(known[:12])}; to predict others, fit with a cell-type embedding "
                "table with a row for each (embeddings={...: table} or --embedding KEY=TABLE.csv)"
            )
    if labels is not None:
        _check_labels(labels, spec.combination_sep)


def _check_labels(labels: Sequence[str | Condition], sep: str) -> None:
    """Refuse an empty list and labels that name the same condition twice."""
    if not labels:
        raise DataError(
            "no conditions asked (an empty list); name at least one, e.g. 'A+B', or pass None "
            "for every training condition"
        )
    seen: dict[object, str] = {}
    for label in labels:
        text = label.key(sep) if isinstance(label, Condition) else label
        # A Condition is its own key; a label's perturbations are a set (A+B is B+A).
        key = (
            label if isinstance(label, Condition) else frozenset(p.strip() for p in text.split(sep))
        )
        if key in seen:
            raise DataError(
                f"--conditions lists the same condition twice ({seen[key]!r} and {text!r}: the "
                "order of a combination does not matter); give each once"
            )
        seen[key] = text
