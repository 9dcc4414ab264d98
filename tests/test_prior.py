"""The shift priors (``model.prior: nearest | linear``, condmonge.models.prior)."""

import numpy as np
import pytest

import condmonge as cm
from condmonge.models.prior import condition_signature, fit_ridge, linear_shift, nearest_shift
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


# Untrained models shared by the tests below (each fit compiles its step: module scope).
NEAREST_DATA = {"conditions": ("A", "B", "A+B", "C"), "d": 4}
LINEAR_DATA = {"conditions": ("A", "B", "C", "A+B", "B+C", "A+C"), "d": 4}


@pytest.fixture(scope="module")
def nearest_model():
    adata = make_adata(**NEAREST_DATA)
    return adata, _untrained().fit(adata, "condition", "control", holdout=["A+B"])


@pytest.fixture(scope="module")
def linear_model():
    adata = make_adata(**LINEAR_DATA)
    model = _untrained(**{"model.prior": "linear"})
    return adata, model.fit(adata, "condition", "control", holdout=["A+C"])


def test_untrained_map_is_the_nearest_training_shift(nearest_model):
    adata, model = nearest_model
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


@pytest.mark.parametrize("prior", ["nearest", "linear"])
def test_dose_zero_stays_the_identity_with_a_prior(prior):
    adata = make_adata(conditions=("A", "B"), doses=(1.0, 10.0), d=4)
    model = _untrained(**{"model.prior": prior}).fit(adata, "condition", "control", dose_key="dose")
    controls = adata[(adata.obs["condition"] == "control").to_numpy()]
    pred = model.predict(controls, ["A"], dose=0.0)
    np.testing.assert_array_equal(np.asarray(pred.X), np.asarray(controls.X))
    moved = np.asarray(model.predict(controls, ["A"], dose=10.0).X) - np.asarray(controls.X)
    assert np.abs(moved).max() > 0.5


@pytest.mark.parametrize(
    ("fixture", "held_out"),
    [("nearest_model", "A+B"), ("linear_model", "A+C")],
    ids=["nearest", "linear"],
)
def test_a_saved_model_keeps_its_prior(tmp_path, request, fixture, held_out):
    adata, model = request.getfixturevalue(fixture)
    controls = adata[(adata.obs["condition"] == "control").to_numpy()]
    before = np.asarray(model.predict(controls, [held_out]).X)
    model.save(tmp_path / "model")
    loaded = cm.ConditionalMonge.load(tmp_path / "model")
    assert loaded.config.model.prior == model.config.model.prior
    after = np.asarray(loaded.predict(controls, [held_out]).X)
    np.testing.assert_array_equal(before, after)
    assert np.abs(before - np.asarray(controls.X)).max() > 0.5


def test_fit_ridge_matches_scikit_learn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    for rows in (9, 30):  # the dual (rows <= features) and the primal solve
        signature, shifts = rng.normal(size=(rows, 12)), rng.normal(size=(rows, 3))
        coef, offset, intercept = fit_ridge(signature, shifts, 0.7)
        new = rng.normal(size=(4, 12))
        ridge = Ridge(alpha=0.7).fit(signature, shifts)
        ours = np.stack([np.asarray(linear_shift(z, coef, offset, intercept)) for z in new])
        np.testing.assert_allclose(ours, ridge.predict(new), atol=1e-8)


def test_untrained_linear_prior_is_the_ridge_of_the_training_shifts(linear_model):
    from sklearn.linear_model import Ridge

    adata, model = linear_model
    controls = adata[(adata.obs["condition"] == "control").to_numpy()]
    moved = np.asarray(model.predict(controls, ["A+C"]).X) - np.asarray(controls.X)
    np.testing.assert_allclose(moved, moved[:1].repeat(len(moved), 0), atol=1e-5)
    # One-hot sums of the training conditions (A, B, C, A+B, B+C) against their mean shifts.
    onehot = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], float)
    shifts = np.stack([_mean_shift(adata, c) for c in ("A", "B", "C", "A+B", "B+C")])
    # The signature is [e, log10(2) e, log10(2)] (no dose column: dose 1): the constant centres
    # away and the copy scales the design, so it is this ridge with penalty 1 / (1 + log10(2)^2).
    ridge = Ridge(alpha=1.0 / (1.0 + np.log10(2.0) ** 2)).fit(onehot, shifts)
    # Within the sampling error of the held-back validation cells (the model's shifts are of the
    # training cells; these of all cells).
    np.testing.assert_allclose(moved[0], ridge.predict([[1, 0, 1]])[0], atol=0.15)
    # The truth is additive (A + C): the ridge gets most of it.
    truth = _mean_shift(adata, "A+C")
    assert np.abs(moved[0] - truth).mean() < 0.5 * np.abs(truth).mean()


def _loop_with_validations(values, validate_start):
    """train_loop on dummy parts whose validations return ``values`` (step 0 first)."""
    from condmonge.train.trainer import LoopParts, TrainLoopState, TrainState, train_loop

    def step_fn(state, pools, conditions):
        metrics = {"loss": 1.0, "fit": 1.0, "monge_gap": 0.0, "log_domain_only": False}
        return state.replace(step=state.step + 1, params=state.params + 1.0), metrics

    def eval_fn(params, constants, pools, conditions, rng):
        return {"loss": values[int(params)], "fit": values[int(params)]}

    state = TrainState(
        step=np.int32(0), params=np.float32(0.0), constants={}, opt_state=(), rng=None,
        log_domain_streak=np.int32(0),
    )  # fmt: skip
    parts = LoopParts(step_fn, eval_fn, None, None, None, ["c"])
    cfg = tiny_config(**{"train.steps": 3, "train.validate_every": 1}).train
    _, loop = train_loop(
        state, TrainLoopState(best_params=state.params), parts, cfg, 1, validate_start
    )
    return loop


def test_the_starting_map_is_kept_when_no_validation_beats_it():
    # Validation fit of the parameters after 0, 1, 2, 3 steps.
    loop = _loop_with_validations([1.0, 2.0, 3.0, 1.5], validate_start=True)
    assert (loop.best_step, float(loop.best_params), loop.best_val_loss) == (0, 0.0, 1.0)
    assert [r["step"] for r in loop.history] == [1, 2, 3]  # step 0 is not in the history
    loop = _loop_with_validations([1.0, 2.0, 0.5, 1.5], validate_start=True)
    assert (loop.best_step, float(loop.best_params)) == (2, 2.0)
    # Without it the best of the later validations wins, however bad.
    loop = _loop_with_validations([1.0, 2.0, 3.0, 1.5], validate_start=False)
    assert (loop.best_step, float(loop.best_params)) == (3, 3.0)
