"""Ensembles: one member is the single model bit for bit; members' spread and OOD score."""

import anndata as ad
import jax
import numpy as np
import pytest

import condmonge as cm
from condmonge.errors import CheckpointError, ConfigError
from condmonge.models.transport import BatchedTransport, combine_members, member_spread
from condmonge.train import checkpoint as ckpt
from condmonge.train.fit import fit_map
from condmonge.train.persistence import save_trained
from conftest import make_adata, run_cli_batch, tiny_config

QUERY = ["A", "B", "A+B"]


def leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def controls_of(data):
    return data.X[(data.obs["condition"] == "control").to_numpy()]


@pytest.fixture(scope="module")
def data():
    return make_adata(n_per_condition=30, d=5)


@pytest.fixture(scope="module")
def pair(data):
    """A 2-member ensemble trained without the combination A+B."""
    config = tiny_config(**{"train.n_members": 2, "train.steps": 6})
    return cm.ConditionalMonge(config).fit(data, "condition", "control", holdout=["A+B"])


def test_one_member_equals_the_single_model_bitwise(data, tmp_path):
    config = tiny_config(**{"train.steps": 6})
    single = fit_map(data, config, holdout=["A+B"])  # today's path: fit_map alone
    model = cm.ConditionalMonge(config).fit(data, "condition", "control", holdout=["A+B"])
    assert len(model.members) == 1
    for a, b in zip(leaves(single.params), leaves(model.params), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # Predictions: the single map's batched apply, block after block, in query order.
    pred = model.predict(data, QUERY)
    apply = BatchedTransport(single.module(), single.params, single.constants)
    expected = apply(controls_of(data), single.encoder.encode(model.query_conditions(QUERY)))
    assert np.array_equal(pred.X, expected.reshape(-1, data.n_vars))
    # One member measures no spread (NaN); the OOD score is still defined.
    assert np.isnan(pred.obs["uncertainty"]).all()
    ood = pred.obs.groupby("condition", observed=True)["ood_score"].first()
    assert ood["A"] == 0.0 and ood["B"] == 0.0 and np.isfinite(ood["A+B"]) and ood["A+B"] > 0
    # Checkpoint: the same file contents, and no members directory.
    save_trained(tmp_path / "single", single)
    model.save(tmp_path / "model")
    meta_a, arrays_a = ckpt.read_checkpoint(tmp_path / "single" / ckpt.CHECKPOINT_NAME)
    meta_b, arrays_b = ckpt.read_checkpoint(tmp_path / "model" / ckpt.CHECKPOINT_NAME)
    for meta in (meta_a, meta_b):  # wall-clock speed is the one field that may differ
        for record in meta["training"]["history"]:
            record.pop("steps_per_s")
    assert meta_a == meta_b and sorted(arrays_a) == sorted(arrays_b)
    assert all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
    assert not (tmp_path / "model" / "members").exists()


def test_members_differ_and_the_mean_is_their_mean_displacement(data, pair):
    assert [m.config.train.seed for m in pair.members] == [0, 1]
    first, second = (leaves(m.params) for m in pair.members)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    traces = pair.predict_traces
    pred = pair.predict(data, QUERY, ensemble="mean")
    pair.predict(data, QUERY[::-1], ensemble="mixture")  # same block shapes
    assert pair.predict_traces - traces <= 1  # members x conditions: one traced apply
    singles = []
    for member in pair.members:
        one = cm.ConditionalMonge(member.config)
        one.trained = member  # a single model of that member
        singles.append(one.predict(data, QUERY).X)
    np.testing.assert_allclose(pred.X, np.mean(singles, axis=0), rtol=1e-5, atol=1e-5)


def test_uncertainty_and_ood_score_are_in_the_prediction(data, pair):
    pred = pair.predict(data, QUERY)
    assert pred.uns["condmonge"]["ensemble"]["n_members"] == 2
    table = pred.uns["condmonge"]["per_condition"]
    assert list(table.index) == ["A|dose=1", "B|dose=1", "A+B|dose=1+1"]
    for column in ("uncertainty", "member_spread", "ood_score"):
        values = pred.obs[column].to_numpy()
        assert np.isfinite(values).all()
        by_block = pred.obs.groupby("condition_id", observed=True)[column].first()
        np.testing.assert_array_equal(by_block[table.index].to_numpy(), table[column])
    assert (table["uncertainty"] > 0).all()
    # Seen conditions sit on a training embedding; the held-out combination does not.
    assert table.loc["A|dose=1", "ood_score"] == 0.0
    assert table.loc["A+B|dose=1+1", "ood_score"] > 0.1
    assert table.loc["A+B|dose=1+1", "nearest_training"] in {"A|dose=1", "B|dose=1"}


def test_member_spread_formula():
    x = np.zeros((2, 3), np.float32)
    # Members move every cell by +1 and +3 along the first axis: mean 2, per-cell std 1.
    mapped = np.zeros((2, 1, 2, 3), np.float32)
    mapped[0, 0, :, 0], mapped[1, 0, :, 0] = 1.0, 3.0
    np.testing.assert_allclose(member_spread(mapped, x), [0.5])
    np.testing.assert_allclose(member_spread(mapped, x, relative=False), [1.0])
    np.testing.assert_allclose(combine_members(mapped, "mean")[0, :, 0], [2.0, 2.0])
    draws = np.array([[1, 0]])
    np.testing.assert_array_equal(combine_members(mapped, "mixture", draws)[0, :, 0], [3.0, 1.0])


def test_mixture_takes_each_cell_from_one_member_with_mean_shapes(data, pair):
    mean = pair.predict(data, QUERY, ensemble="mean")
    mix = pair.predict(data, QUERY, ensemble="mixture", seed=3)
    assert mix.shape == mean.shape and list(mix.obs_names) == list(mean.obs_names)
    singles = []
    for member in pair.members:
        one = cm.ConditionalMonge(member.config)
        one.trained = member
        singles.append(one.predict(data, QUERY).X)
    match = [np.isclose(mix.X, s, atol=1e-5).all(axis=1) for s in singles]
    assert (match[0] | match[1]).all()  # every cell is one member's prediction
    assert match[0].sum() > 10 and match[1].sum() > 10  # both members are drawn
    again = pair.predict(data, QUERY, ensemble="mixture", seed=3)
    assert np.array_equal(again.X, mix.X)
    other = pair.predict(data, QUERY, ensemble="mixture", seed=4)
    assert not np.array_equal(other.X, mix.X)
    with pytest.raises(ConfigError, match="unknown; use one of mean, mixture"):
        pair.predict(data, QUERY, ensemble="median")


def test_save_load_round_trip_predicts_the_same(data, pair, tmp_path):
    pair.save(tmp_path / "run")
    assert (tmp_path / "run" / "members" / "1" / ckpt.CHECKPOINT_NAME).is_file()
    loaded = cm.ConditionalMonge.load(tmp_path / "run")
    assert len(loaded.members) == 2
    for how in ("mean", "mixture"):
        a = pair.predict(data, QUERY, ensemble=how)
        b = loaded.predict(data, QUERY, ensemble=how)
        assert np.array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.obs["uncertainty"], b.obs["uncertainty"])
        np.testing.assert_array_equal(a.obs["ood_score"], b.obs["ood_score"])
    (tmp_path / "run" / "members" / "1" / ckpt.CHECKPOINT_NAME).unlink()
    with pytest.raises(CheckpointError, match="ensemble of 2 members"):
        cm.ConditionalMonge.load(tmp_path / "run")


@pytest.mark.slow
def test_cli_trains_members_and_predicts_their_mixture(data, tmp_path):
    data.write_h5ad(tmp_path / "data.h5ad")
    config = tiny_config(**{"train.steps": 6})
    config.to_yaml(tmp_path / "config.yaml")
    common = ["--condition-key", "condition", "--control", "control"]
    out = tmp_path / "pred.h5ad"
    predict = ["predict", tmp_path / "run", tmp_path / "data.h5ad", "--out", out]
    # The three commands through the entry point in one subprocess (tests/cli_batch.py).
    result, predicted, bad = run_cli_batch(
        ["train", tmp_path / "data.h5ad", "--out", tmp_path / "run", "--config",
         tmp_path / "config.yaml", *common, "--holdout", "A+B", "--members", "2"],
        [*predict, "--conditions", "A,A+B", "--members", "mixture"],
        [*predict, "--members", "median"],
    )  # fmt: skip
    assert result["code"] == 0, result["stderr"]
    assert (tmp_path / "run" / "members" / "1" / ckpt.CHECKPOINT_NAME).is_file()
    assert predicted["code"] == 0, predicted["stderr"]
    pred = ad.read_h5ad(out)
    assert pred.uns["condmonge"]["ensemble"]["combine"] == "mixture"
    assert np.isfinite(pred.obs[["uncertainty", "ood_score"]].to_numpy()).all()
    table = pred.uns["condmonge"]["per_condition"]
    assert list(table.index) == ["A|dose=1", "A+B|dose=1+1"]
    assert bad["code"] == 2 and bad["stderr"].count("error:") == 1
    assert "unknown; use one of mean, mixture" in bad["stderr"]


@pytest.mark.slow  # an ensemble fit
def test_members_share_the_validation_split_and_the_pca():
    # Condition-level validation and the PCA depend on the split seed, not the member's seed:
    # every member is trained on the same conditions and cells, in the same latent space.
    data = make_adata(n_per_condition=30, d=12, conditions=("A", "B", "C", "A+B", "A+C", "B+C"))
    config = tiny_config(**{"train.n_members": 2, "train.steps": 4, "data.n_pca": 3})
    model = cm.ConditionalMonge(config).fit(data, "condition", "control", holdout=["A+B"])
    first, second = model.members
    assert second.config.train.seed == first.config.train.seed + 1
    assert first.validation["mode"] == "conditions" and first.validation["kind"] == "combination"
    assert second.validation == first.validation
    assert np.array_equal(first.projection.components, second.projection.components)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(leaves(first.params), leaves(second.params), strict=True)
    )


def test_distances_between_equal_rows_are_exactly_zero():
    from condmonge.train.ensemble import _distances

    # A queried condition against the training table (one row, another matrix): with
    # |a|^2 + |b|^2 - 2ab this pair of seed 1 is 3.8e-6 apart.
    points = np.random.default_rng(1).normal(size=(8, 64)).astype(np.float32) * 30.0
    dist = _distances(points[[3]], points)
    assert dist[0, 3] == 0.0
    np.testing.assert_allclose(dist[0, 1], np.linalg.norm(points[3] - points[1].astype(np.float64)))
