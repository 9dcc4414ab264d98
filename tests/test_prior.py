"""The nearest-condition shift prior (``model.prior: nearest``, condmonge.models.prior)."""

import numpy as np
import pytest

import condmonge as cm
from condmonge.models.prior import condition_signature, nearest_shift
from conftest import make_adata, tiny_config

# Three training conditions with one-hot signatures; shifts 1, 2 and 3 in one feature.
TABLE = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]], np.float32)
SHIFTS = np.array([[1.0], [2.0], [3.0]], np.float32)


def _prior(signature, group_mask=None):
    group_mask = np.ones(3, np.float32) if group_mask is None else group_mask
    signature = np.asarray(signature, np.float32)
    return float(
        nearest_shift(signature, signature * group_mask, TABLE, TABLE * group_mask, SHIFTS)[0]
    )


def test_a_training_condition_is_left_out_of_its_own_prior():
    # [1,0,0] itself is excluded; [1,1,0] (distance 1) is nearer than [0,1,0] (sqrt 2).
    assert _prior([1, 0, 0]) == pytest.approx(3.0)
    # [1,1,0] is excluded; both singles are at distance 1: a tie, averaged.
    assert _prior([1, 1, 0]) == pytest.approx(1.5)


def test_an_unseen_condition_takes_its_nearest_training_conditions():
    # [0,0,1] is at distance sqrt 2 from both singles and sqrt 3 from the pair.
    assert _prior([0, 0, 1]) == pytest.approx(1.5)


def test_perturbation_exclusion_ignores_the_rest_of_the_signature():
    # Only the first two entries decide exclusion: [1,0,5] is "the same perturbation" as
    # [1,0,0] (excluded), whatever its third entry (e.g. a dose or a cell type).
    # Of the others, [1,1,0] is the nearer (sqrt 26 vs sqrt 27).
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    assert _prior([1, 0, 5], mask) == pytest.approx(3.0)
    assert _prior([1, 0, 5]) == pytest.approx(1.0)  # without the mask: nothing excluded


def test_every_condition_excluded_gives_no_shift():
    one = np.array([[1.0, 0.0]], np.float32)
    assert float(nearest_shift(one[0], one[0], one, one, np.array([[4.0]]))[0]) == 0.0


def test_signature_of_a_dosed_pair():
    pert = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    log_dose = np.array([1.0, 2.0, 0.0], np.float32)
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    sig = condition_signature(pert, log_dose, mask, np.array([7.0], np.float32))
    np.testing.assert_allclose(np.asarray(sig), [1, 1, 1, 2, 1.5, 7])


def _untrained(**overrides):
    # One step at a vanishing learning rate: f stays at its zero initialisation.
    config = {"model.prior": "nearest", "train.steps": 1, "train.learning_rate": 1e-12}
    return cm.ConditionalMonge(tiny_config(**(config | overrides)))


def _mean_shift(adata, label):
    x = np.asarray(adata.X)
    controls = x[(adata.obs["condition"] == "control").to_numpy()].mean(0)
    return x[(adata.obs["condition"] == label).to_numpy()].mean(0) - controls


def test_untrained_map_is_the_nearest_training_shift():
    adata = make_adata(conditions=("A", "B", "A+B", "C"), d=4)
    model = _untrained().fit(adata, "condition", "control", holdout=["A+B"])
    controls = adata[(adata.obs["condition"] == "control").to_numpy()]
    pred = model.predict(controls, ["A+B", "A"])
    n, x = controls.n_obs, np.asarray(controls.X)
    moved = np.asarray(pred.X).reshape(2, n, -1) - x
    # Every cell moves by the same shift: the mean of the two singles' observed shifts
    # (from the training cells, so within sampling error of the full-data means).
    np.testing.assert_allclose(moved[0], moved[0][:1].repeat(n, 0), atol=1e-5)
    expected = (_mean_shift(adata, "A") + _mean_shift(adata, "B")) / 2
    np.testing.assert_allclose(moved[0, 0], expected, atol=0.2)
    # A seen condition gets its leave-one-out prior, never its own shift: A is left out, and
    # B and C tie at distance sqrt 2.
    loo = (_mean_shift(adata, "B") + _mean_shift(adata, "C")) / 2
    np.testing.assert_allclose(moved[1, 0], loo, atol=0.2)
    assert np.abs(loo - _mean_shift(adata, "A")).max() > 0.5


def test_dose_zero_stays_the_identity_with_a_prior():
    adata = make_adata(conditions=("A", "B"), doses=(1.0, 10.0), d=4)
    model = _untrained().fit(adata, "condition", "control", dose_key="dose")
    controls = adata[(adata.obs["condition"] == "control").to_numpy()]
    pred = model.predict(controls, ["A"], dose=0.0)
    np.testing.assert_array_equal(np.asarray(pred.X), np.asarray(controls.X))
    moved = np.asarray(model.predict(controls, ["A"], dose=10.0).X) - np.asarray(controls.X)
    assert np.abs(moved).max() > 0.5


def test_a_saved_model_keeps_its_prior(tmp_path):
    adata = make_adata(conditions=("A", "B", "A+B"), d=4)
    model = _untrained().fit(adata, "condition", "control", holdout=["A+B"])
    controls = adata[(adata.obs["condition"] == "control").to_numpy()]
    before = np.asarray(model.predict(controls, ["A+B"]).X)
    model.save(tmp_path / "model")
    after = np.asarray(cm.ConditionalMonge.load(tmp_path / "model").predict(controls, ["A+B"]).X)
    np.testing.assert_array_equal(before, after)
    assert np.abs(before - np.asarray(controls.X)).max() > 0.5
