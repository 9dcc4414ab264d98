"""Metrics against independent numpy/scipy computations and analytic values."""

import jax
import numpy as np
import pytest
import scipy.stats

from condmonge.evaluate import metrics as M


def _clouds(rng, n=40, m=50, d=4, shift=1.0):
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.normal(size=(m, d)) * 1.5 + shift).astype(np.float32)
    return x, y


def _np_sq(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).astype(np.float64)


def test_r2_and_pearson_match_numpy(rng):
    true = rng.normal(size=30)
    pred = true * 0.7 + rng.normal(size=30) * 0.3 + 0.5
    expected_r2 = 1 - np.sum((pred - true) ** 2) / np.sum((true - true.mean()) ** 2)
    assert float(M.r2_score(pred, true)) == pytest.approx(expected_r2, rel=1e-5)
    r = scipy.stats.pearsonr(pred, true).statistic
    assert float(M.pearson_r2(pred, true)) == pytest.approx(r**2, rel=1e-5)
    mask = np.arange(30) < 10
    r_sub = scipy.stats.pearsonr(pred[:10], true[:10]).statistic
    assert float(M.pearson_r2(pred, true, mask)) == pytest.approx(r_sub**2, rel=1e-5)
    # Pearson is blind to scale and offset, R² is not.
    assert float(M.pearson_r2(3 * true + 2, true)) == pytest.approx(1.0, abs=1e-6)
    assert float(M.r2_score(3 * true + 2, true)) < 0
    assert np.isnan(float(M.r2_score(pred, np.ones(30))))


def test_moments_match_scipy(rng):
    x = rng.gamma(2.0, size=(500, 3)).astype(np.float32)
    mean, var, skew, kurt = (np.asarray(v) for v in M.weighted_moments(x))
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, x.var(0), rtol=1e-4)
    np.testing.assert_allclose(skew, scipy.stats.skew(x, axis=0), rtol=1e-3)
    np.testing.assert_allclose(kurt, scipy.stats.kurtosis(x, axis=0), rtol=1e-3)
    # A constant feature has zero variance and, by convention, zero skew and kurtosis.
    const = np.concatenate([x, np.full((500, 1), 3.0, np.float32)], 1)
    _, v, s, k = (np.asarray(t) for t in M.weighted_moments(const))
    assert v[-1] == pytest.approx(0.0, abs=1e-6) and s[-1] == 0.0 and k[-1] == 0.0


def test_moment_errors_zero_for_same_population_and_detect_wrong_spread(rng):
    y = rng.gamma(2.0, size=(400, 5)).astype(np.float32)
    same = {k: float(v) for k, v in M.moment_errors(y, y).items()}
    assert same["mae_var"] == pytest.approx(0.0, abs=1e-6)
    assert same["r2_skew"] == pytest.approx(1.0, abs=1e-6)
    # Right means, half the spread: the mean metrics cannot see it, the variance error does.
    squeezed = y.mean(0) + 0.5 * (y - y.mean(0))
    err = {k: float(v) for k, v in M.moment_errors(squeezed, y).items()}
    np.testing.assert_allclose(err["mae_var"], np.mean(0.75 * y.var(0)), rtol=1e-3)
    assert err["mae_skew"] == pytest.approx(0.0, abs=1e-4)  # skewness is scale-free


def test_mmd_matches_numpy_and_is_zero_on_itself(rng):
    x, y = _clouds(rng)
    gammas = M.MMD_GAMMAS
    expected = np.mean(
        [
            np.exp(-g * _np_sq(x, x)).mean()
            + np.exp(-g * _np_sq(y, y)).mean()
            - 2 * np.exp(-g * _np_sq(x, y)).mean()
            for g in gammas
        ]
    )
    assert float(M.mmd_rbf(x, y)) == pytest.approx(expected, rel=1e-4)
    assert float(M.mmd_rbf(x, x)) == pytest.approx(0.0, abs=1e-6)
    median = np.median(_np_sq(x, y))
    expected_median = (
        np.exp(-_np_sq(x, x) / median).mean()
        + np.exp(-_np_sq(y, y) / median).mean()
        - 2 * np.exp(-_np_sq(x, y) / median).mean()
    )
    assert float(M.mmd_rbf_median(x, y)) == pytest.approx(expected_median, rel=2e-3)
    assert float(M.mmd_rbf_median(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_energy_distance_matches_scipy_in_1d_and_squared_form_is_mean_only(rng):
    x, y = _clouds(rng, d=1)
    scipy_value = scipy.stats.energy_distance(x[:, 0], y[:, 0])  # sqrt of our statistic
    assert float(M.energy_distance(x, y)) == pytest.approx(scipy_value**2, rel=1e-3)
    x, y = _clouds(rng, d=5)
    assert float(M.energy_distance(x, x)) == pytest.approx(0.0, abs=1e-4)
    delta = x.mean(0) - y.mean(0)
    assert float(M.energy_distance(x, y, squared=True)) == pytest.approx(
        2 * np.sum(delta**2), rel=1e-3
    )


def test_sinkhorn_divergence_and_w2_of_a_translation(rng):
    x = rng.normal(size=(200, 3)).astype(np.float32)
    t = np.array([1.0, -2.0, 0.5], np.float32)
    assert float(M.sinkhorn_divergence(x, x)) == pytest.approx(0.0, abs=1e-3)
    # For a translation the OT map is the translation: S_eps ≈ W2² = |t|², W2 = |t|.
    assert float(M.sinkhorn_divergence(x, x + t)) == pytest.approx(np.sum(t**2), rel=0.02)
    assert float(M.entropic_w2(x, x + t)) == pytest.approx(np.linalg.norm(t), rel=0.02)
    assert float(M.drug_signature(x, x + t)) == pytest.approx(np.linalg.norm(t), rel=1e-5)


@pytest.mark.slow
def test_zero_weights_are_padding(rng):
    x, y = _clouds(rng, n=30, m=35)
    pad = np.concatenate([x, rng.normal(size=(10, x.shape[1])).astype(np.float32) * 50])
    a = np.concatenate([np.ones(30), np.zeros(10)]).astype(np.float32)
    for fn in (M.mmd_rbf, M.mmd_rbf_median, M.energy_distance, M.sinkhorn_divergence):
        fn = jax.jit(fn)
        assert float(fn(pad, y, a, None)) == pytest.approx(float(fn(x, y)), rel=1e-3, abs=1e-5)
    moments = [np.asarray(v) for v in M.weighted_moments(pad, a)]
    for got, want in zip(moments, M.weighted_moments(x), strict=True):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-5)


def test_top_de_mask_and_delta_metrics(rng):
    control = rng.normal(size=(100, 30)).astype(np.float32)
    shift = np.zeros(30, np.float32)
    shift[[3, 7, 11]] = [5.0, -4.0, 3.0]
    truth = rng.normal(size=(100, 30)).astype(np.float32) + shift
    mask = np.asarray(M.top_de_mask(truth.mean(0), control.mean(0), 3))
    assert set(np.flatnonzero(mask)) == {3, 7, 11}
    np.testing.assert_array_equal(np.sort(M.top_de_features(truth, control, 3)), [3, 7, 11])
    out = M.population_metrics(truth, truth, control, de_sizes=(3,))
    assert float(out["r2_delta_top3"]) == pytest.approx(1.0, abs=1e-6)
    # The control as a prediction: means R² stays high (genes that do not move), deltas R² ≤ 0.
    ident = M.population_metrics(control, truth, control, de_sizes=(3,))
    assert float(ident["r2_delta_all"]) < 0.0
    assert float(ident["pearson_r2_mean_all"]) < float(out["pearson_r2_mean_all"])
    assert float(out["r2_delta_all"]) == pytest.approx(
        M.mean_delta_r2(truth, truth, control), abs=1e-6
    )


def test_evaluate_populations_batches_equal_single_calls(rng):
    d = 6
    sizes = [(30, 40, 50), (45, 25, 35), (20, 60, 30)]
    preds, truths, controls = [], [], []
    for n_p, n_t, n_c in sizes:
        preds.append(rng.normal(size=(n_p, d)).astype(np.float32) + 1)
        truths.append(rng.normal(size=(n_t, d)).astype(np.float32) + 1.2)
        controls.append(rng.normal(size=(n_c, d)).astype(np.float32))
    names = ["A", "B", "A+B"]
    table = M.evaluate_populations(preds, truths, controls, names, chunk_size=2, de_sizes=(3,))
    assert list(table.index) == names
    for i, name in enumerate(names):
        p, t, c = preds[i], truths[i], controls[i]
        dist = lambda u, v: np.sqrt(_np_sq(u, v)).mean()  # noqa: E731
        energy = 2 * dist(p, t) - dist(p, p) - dist(t, t)
        top = M.top_de_features(t, c, 3)
        expected = {
            "energy_distance": energy,
            "r2_delta_top3": M.mean_delta_r2(p, t, c, top),
            "r2_delta_all": M.mean_delta_r2(p, t, c),
            "mae_var": np.mean(np.abs(p.var(0) - t.var(0))),
            "drug_signature": np.linalg.norm(p.mean(0) - t.mean(0)),
        }
        for key, value in expected.items():
            assert table.loc[name, key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    assert set(M.METRIC_DIRECTIONS) >= {"r2_delta_top20", "energy_distance", "mae_kurtosis"}
    assert M.METRIC_DIRECTIONS["r2_delta_top20"] and not M.METRIC_DIRECTIONS["mmd_rbf"]
