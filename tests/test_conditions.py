"""Conditions, encoders and the set encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condmonge.conditions import (
    Condition,
    ConditionEncoder,
    OneHotEncoder,
    TableEncoder,
    log_dose,
    parse_doses,
)
from condmonge.data.prepare import make_condition
from condmonge.errors import DataError, UnknownConditionError
from condmonge.models.networks import ConditionalResidualMap, PerturbationSetEncoder


def test_combination_order_is_canonical():
    a = make_condition("B+A", "2+1", "k562")
    b = make_condition("A+B", "1+2", "k562")
    assert a == b
    assert a.perturbations == ("A", "B") and a.doses == (1.0, 2.0)
    assert a.key() == "A+B|dose=1+2|cell_type=k562"


@pytest.mark.parametrize(
    ("dose", "message"),
    [
        ("-1", "must be a finite number >= 0"),
        ("abc", "is not a number"),
        ("1+2+3", "gives 3 doses for 2 perturbations"),
    ],
)
def test_bad_doses_are_named(dose, message):
    with pytest.raises(UnknownConditionError, match=message):
        parse_doses(dose, 2)


def test_log_dose_is_zero_at_zero_and_monotone():
    assert log_dose(0.0) == 0.0
    assert log_dose(10.0) < log_dose(100.0)
    assert log_dose(9.0) == pytest.approx(1.0)


def test_onehot_rejects_unseen_and_suggests():
    enc = OneHotEncoder(["KLF1", "MAPK1"])
    np.testing.assert_array_equal(enc.encode(["MAPK1"]), [[0.0, 1.0]])
    with pytest.raises(UnknownConditionError, match=r"'KLF2' was not seen.*did you mean 'KLF1'"):
        enc.encode(["KLF2"])


def test_table_encoder_standardises_with_training_rows_only():
    table = pd.DataFrame({"f1": [1.0, 3.0, 100.0], "f2": [0.0, 0.0, 5.0]}, index=["a", "b", "z"])
    enc = TableEncoder(table).fit(["a", "b"])
    np.testing.assert_allclose(enc.encode(["a", "b"]), [[-1.0, 0.0], [1.0, 0.0]])
    # The unseen 'z' is encoded, with statistics that never saw it.
    np.testing.assert_allclose(enc.encode(["z"]), [[98.0, 5.0]])
    with pytest.raises(UnknownConditionError, match="'q' missing from the embedding table"):
        enc.encode(["q"])


def test_table_validation():
    with pytest.raises(DataError, match="non-numeric columns"):
        TableEncoder(pd.DataFrame({"s": ["x"]}, index=["a"]))
    with pytest.raises(DataError, match="NaN or inf"):
        TableEncoder(pd.DataFrame({"f": [np.nan]}, index=["a"]))
    with pytest.raises(DataError, match="lists 'a' twice"):
        TableEncoder(pd.DataFrame({"f": [1.0, 2.0]}, index=["a", "a"]))


def test_encoder_state_round_trip():
    table = pd.DataFrame(np.arange(6.0).reshape(3, 2), index=["a", "b", "c"], columns=["x", "y"])
    enc = ConditionEncoder(TableEncoder(table).fit(["a", "b"]), OneHotEncoder(["k1", "k2"]), 0, 2)
    conds = [Condition(("a", "c"), (1.0, 10.0), "k2"), Condition(("b",), (1.0,), "k1")]
    meta, arrays = enc.state()
    again = ConditionEncoder.from_state(meta, arrays)
    for x, y in zip(enc.encode(conds), again.encode(conds), strict=True):
        np.testing.assert_array_equal(x, y)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 5), pad=st.integers(0, 3), seed=st.integers(0, 1000))
def test_set_encoder_is_permutation_and_padding_invariant(m, pad, seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(m, 4)).astype(np.float32)
    doses = rng.uniform(0, 3, m).astype(np.float32)
    module = PerturbationSetEncoder(hidden_dim=8, out_dim=5)
    params = module.init(jax.random.PRNGKey(0), feats, doses, np.ones(m, np.float32))
    base = module.apply(params, feats, doses, np.ones(m, np.float32))
    perm = rng.permutation(m)
    padded_f = np.concatenate([feats[perm], rng.normal(size=(pad, 4)).astype(np.float32)])
    padded_d = np.concatenate([doses[perm], rng.uniform(0, 3, pad).astype(np.float32)])
    mask = np.concatenate([np.ones(m), np.zeros(pad)]).astype(np.float32)
    other = module.apply(params, padded_f, padded_d, mask)
    np.testing.assert_allclose(base, other, rtol=1e-5, atol=1e-5)


def test_untrained_map_is_identity(rng):
    enc = ConditionEncoder(OneHotEncoder(["a"]), None, 0, 1)
    cond = jax.tree.map(lambda a: a[0], enc.encode([Condition(("a",), (1.0,))]))
    module = ConditionalResidualMap(n_features=3, hidden_dim=8, n_layers=2)
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), x, cond)
    np.testing.assert_array_equal(module.apply(variables, x, cond), x)
