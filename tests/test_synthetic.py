"""The synthetic convex task: its maps are gradients of convex potentials (hence OT maps)."""

import numpy as np
import pytest

from condmonge.conditions.encoders import TableEncoder
from condmonge.data.splits import make_split
from condmonge.datasets import ConvexTask, convex_task, l2_uvp, spd_affine_task
from condmonge.errors import ConfigError, UnknownConditionError


@pytest.fixture(scope="module")
def task():
    return convex_task(n_conditions=6, n_features=4, n_cells=50, embedding_dim=3, n_unseen=2)


@pytest.fixture(scope="module")
def dosed():
    return convex_task(n_conditions=3, n_features=3, n_cells=20, doses=[0, 1, 10], n_unseen=1)


def jacobian(f, x, h=1e-5):
    """Central finite differences of f: R^d -> R^d at one point x [d]: J[i, j] = df_i/dx_j."""
    eye = np.eye(x.size)
    return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in eye], axis=1)


def test_shapes_names_and_obs(task, dosed):
    assert isinstance(task, ConvexTask)
    assert task.adata.shape == (50 * 7, 4) and task.adata.X.dtype == np.float32
    assert task.names == [f"drug_{i}" for i in range(6)]
    assert task.unseen == ["drug_4", "drug_5"] and task.seen == task.names[:4]
    assert task.embeddings.shape == (6, 3) and list(task.embeddings.index) == task.names
    counts = task.adata.obs["condition"].value_counts()
    assert counts["control"] == 50 and (counts[task.names] == 50).all()
    assert "dose" not in task.adata.obs and task.doses is None
    assert dosed.adata.n_obs == 20 * (1 + 3 * 3) and dosed.doses == (0.0, 1.0, 10.0)
    by_dose = dosed.adata.obs.groupby(["condition", "dose"], observed=True).size()
    assert by_dose["control", 0.0] == 20 and by_dose["drug_1", 10.0] == 20
    assert task.sample_controls(7, seed=1).shape == (7, 4)


def test_same_seed_same_task_other_seed_other_task(task):
    again = convex_task(n_conditions=6, n_features=4, n_cells=50, embedding_dim=3, n_unseen=2)
    other = convex_task(
        n_conditions=6, n_features=4, n_cells=50, embedding_dim=3, n_unseen=2, seed=1
    )
    np.testing.assert_array_equal(again.adata.X, task.adata.X)
    assert again.embeddings.equals(task.embeddings)
    assert not np.allclose(other.adata.X, task.adata.X)
    x = task.sample_controls(10)
    np.testing.assert_array_equal(again.true_map("drug_1", x), task.true_map("drug_1", x))


def test_map_is_monotone_gradient_of_a_convex_potential(task, dosed):
    rng = np.random.default_rng(0)
    for t, dose in ((task, None), (dosed, 10.0), (dosed, 1.0)):
        for name in t.names:
            x = t.sample_controls(200, seed=2).astype(np.float64)
            y = x[rng.permutation(len(x))] + rng.normal(size=x.shape)
            tx, ty = t.true_map(name, x, dose), t.true_map(name, y, dose)
            # Monotone, indeed strongly: <T(x) - T(y), x - y> >= |x - y|^2 (phi = |x|^2/2 + ...).
            inner = np.sum((tx - ty) * (x - y), axis=1)
            assert (inner >= np.sum((x - y) ** 2, axis=1) - 1e-9).all()
            for point in x[:3]:
                jac = jacobian(lambda z, n=name, t=t, d=dose: t.true_map(n, z[None], d)[0], point)
                np.testing.assert_allclose(jac, jac.T, atol=1e-6)
                assert np.linalg.eigvalsh((jac + jac.T) / 2).min() >= 1 - 1e-6
                grad = jacobian(lambda z, n=name, t=t, d=dose: t.potential(n, z[None], d), point)
                mapped = t.true_map(name, point[None], dose)[0]
                np.testing.assert_allclose(grad[0], mapped, rtol=1e-6, atol=1e-6)


def test_dose_zero_is_identity_and_dose_scales_the_effect(dosed):
    x = dosed.sample_controls(30, seed=3)
    for name in dosed.names:
        np.testing.assert_array_equal(dosed.true_map(name, x, dose=0.0), x.astype(np.float64))
        small = np.linalg.norm(dosed.true_map(name, x, 1.0) - x)
        large = np.linalg.norm(dosed.true_map(name, x, 10.0) - x)
        assert 0 < small < large
    treated = dosed.adata[
        (dosed.adata.obs["condition"] == "drug_0").to_numpy() & (dosed.adata.obs["dose"] == 0.0)
    ]
    assert treated.n_obs == 20  # dose-0 cells are fresh control draws, mapped by the identity


def test_treated_cells_are_unpaired_pushforwards_of_the_controls():
    task = convex_task(n_conditions=2, n_features=3, n_cells=4000, n_unseen=0, seed=4)
    obs = task.adata.obs["condition"].to_numpy()
    controls = np.asarray(task.adata.X[obs == "control"], np.float64)
    for name in task.names:
        treated = np.asarray(task.adata.X[obs == name], np.float64)
        pushed = task.true_map(name, controls)
        assert not np.allclose(treated, pushed)  # fresh draws, not the control cells
        spread = np.sqrt(np.var(pushed, axis=0))
        np.testing.assert_array_less(np.abs(treated.mean(0) - pushed.mean(0)), 0.1 * spread + 1e-3)


def test_maps_are_smooth_in_the_embedding_and_not_affine(task):
    x = task.sample_controls(500, seed=5)
    e = task.embeddings.loc["drug_0"].to_numpy()
    np.testing.assert_allclose(task.map_embedding(e, x), task.true_map("drug_0", x))
    near = task.map_embedding(e + 1e-4, x)
    assert np.max(np.abs(near - task.true_map("drug_0", x))) < 1e-2
    design = np.c_[x, np.ones(len(x))]
    for name in task.names:
        y = task.true_map(name, x)
        affine = design @ np.linalg.lstsq(design, y, rcond=None)[0]
        assert l2_uvp(affine, y) > 0.5  # the ridges make the map genuinely non-affine


def test_l2_uvp_of_the_true_map_is_zero(task):
    x = task.sample_controls(100)
    y = task.true_map("drug_2", x)
    assert l2_uvp(y, y) == 0.0
    assert l2_uvp(x, y) > 0.0


def test_embedding_table_and_unseen_split_fit_the_library(task):
    encoder = TableEncoder(task.embeddings, "perturbation").fit(task.seen)
    assert encoder.encode(task.unseen).shape == (2, 3)
    split = make_split(task.adata, "condition", holdout=task.unseen, key_added=None)
    test = set(task.adata.obs["condition"][split == "test"].astype(str)) - {"control"}
    assert test == set(task.unseen)


def test_bad_arguments_raise(task):
    with pytest.raises(UnknownConditionError, match="did you mean 'drug_"):
        task.true_map("drug_l", np.zeros((1, 4)))
    with pytest.raises(ConfigError, match="n_unseen"):
        convex_task(n_conditions=3, n_unseen=3)
    with pytest.raises(ConfigError, match="doses"):
        convex_task(n_conditions=3, n_unseen=1, doses=[-1])
    with pytest.raises(ConfigError, match="dose must be"):
        task.true_map("drug_0", np.zeros((1, 4)), dose=-2.0)


def test_affine_task_unchanged():
    affine = spd_affine_task(n_conditions=2, n_features=3, n_cells=10)
    x = np.ones((2, 3))
    np.testing.assert_allclose(
        affine.true_map("drug_0", x), x @ affine.matrices[0].T + affine.offsets[0]
    )
