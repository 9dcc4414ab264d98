"""The Python API refuses the requests the command line refuses (conditions.query)."""

from __future__ import annotations

import pytest

from condmonge.conditions.query import resolve_query
from condmonge.data.spec import Condition, ConditionSpec
from condmonge.errors import DataError, UnknownConditionError

TRAINED = [Condition(("A",), (1.0,)), Condition(("B",), (1.0,)), Condition(("A", "B"), (1.0, 1.0))]
PLAIN = ConditionSpec(condition_key="drug", control="ctrl")


def test_labels_resolve_to_sorted_conditions():
    out = resolve_query(["B+A", "A"], PLAIN, TRAINED)
    assert out == [Condition(("A", "B"), (1.0, 1.0)), Condition(("A",), (1.0,))]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"dose": 10.0}, DataError, "trained without doses"),
        ({"cell_type": "k562"}, DataError, "trained without cell types"),
    ],
)
def test_flags_the_model_has_no_column_for_are_refused(kwargs, error, words):
    with pytest.raises(error, match=words):
        resolve_query(["A"], PLAIN, TRAINED, **kwargs)


def test_unknown_cell_type_names_the_known_ones():
    spec = ConditionSpec(condition_key="drug", control="ctrl", cell_type_key="line")
    trained = [Condition(("A",), (1.0,), "k562"), Condition(("A",), (1.0,), "rpe1")]
    with pytest.raises(UnknownConditionError, match="known cell types: k562, rpe1"):
        resolve_query(["A"], spec, trained, cell_type="hela")


def test_empty_and_duplicate_requests_are_refused():
    with pytest.raises(DataError, match="empty list"):
        resolve_query([], PLAIN, TRAINED)
    with pytest.raises(DataError, match="same condition twice"):
        resolve_query(["A+B", "B+A"], PLAIN, TRAINED)
    with pytest.raises(DataError, match="same condition twice"):
        resolve_query([TRAINED[0], TRAINED[0]], PLAIN, TRAINED)
    assert len(resolve_query(None, PLAIN, TRAINED)) == 3  # None still means every condition


def test_a_cell_type_in_the_embedding_table_is_accepted_without_treated_training_cells():
    spec = ConditionSpec(condition_key="drug", control="ctrl", cell_type_key="line")
    trained = [Condition(("A",), (1.0,), "k562")]
    table_rows = ["k562", "rpe1"]
    out = resolve_query(["A"], spec, trained, cell_type="rpe1", encodable_cell_types=table_rows)
    assert out == [Condition(("A",), (1.0,), "rpe1")]
    with pytest.raises(UnknownConditionError, match="known cell types: k562, rpe1"):
        resolve_query(["A"], spec, trained, cell_type="hela", encodable_cell_types=table_rows)
