"""Holdout selectors: the natural forms of `--holdout`, shared by `train` and `split`."""

import numpy as np
import pytest

from condmonge.data.selectors import match_selectors, parse_selector
from condmonge.data.spec import Condition
from condmonge.errors import UnknownConditionError

CONDITIONS = [Condition(("stimulated",), (1.0,), ct) for ct in ("NK", "B cells", "CD4 T")] + [
    Condition(("A", "B"), (1.0, 10.0), "NK"),
    Condition(("A", "B"), (1.0, 10.0), "CD4 T"),
]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("stimulated", [1, 1, 1, 0, 0]),
        ("stimulated@NK", [1, 0, 0, 0, 0]),
        ("stimulated@B cells", [0, 1, 0, 0, 0]),
        ("stimulated|cell_type=NK", [1, 0, 0, 0, 0]),
        ("stimulated|dose=1|cell_type=NK", [1, 0, 0, 0, 0]),  # the full key
        ("stimulated|cell_type=NK|dose=1.0", [1, 0, 0, 0, 0]),  # any order, numeric dose
        ("B+A", [0, 0, 0, 1, 1]),
        ("B+A|dose=10+1", [0, 0, 0, 1, 1]),  # doses follow their perturbations
        ("A+B@CD4 T", [0, 0, 0, 0, 1]),
    ],
)
def test_natural_forms(selector, expected):
    mask = match_selectors(CONDITIONS, [selector], control="control")
    np.testing.assert_array_equal(mask, np.array(expected, bool))


def test_several_selectors_are_a_union():
    mask = match_selectors(CONDITIONS, ["stimulated@NK", "A+B@NK"])
    np.testing.assert_array_equal(mask, [1, 0, 0, 1, 0])


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("stimulated@nk", "do not occur in the data (did you mean 'stimulated@NK'?); closest:"),
        ("stimulatd", "(did you mean 'stimulated'?)"),
        ("control", "names the control label: control cells are the source of every map"),
        ("control@NK", "names the control label"),
        ("A|foo=1", "'foo=1' is not dose=..., cell_type=... or covariates=..."),
        ("A|dose=high", "dose 'high' is not a number"),
        ("A+", "has an empty perturbation name"),
        ("A+B|dose=10+1", "closest: 'A+B|dose=1+10|cell_type="),
    ],
)
def test_a_selector_that_matches_nothing_lists_the_closest(selector, message):
    with pytest.raises(UnknownConditionError) as info:
        match_selectors(CONDITIONS, [selector], control="control")
    assert message in str(info.value)


def test_parse_selector_gives_only_the_fields_written():
    assert parse_selector("B+A@NK") == {"perturbations": ("A", "B"), "cell_type": "NK"}
