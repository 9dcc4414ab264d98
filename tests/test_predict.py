"""One vectorised predict: every condition through one jitted apply, equal to one at a time."""

import jax
import numpy as np
import pytest

import condmonge as cm
from condmonge.conditions.spec import Condition
from condmonge.errors import DataError, NotFittedError
from conftest import make_adata, tiny_config


@pytest.fixture(scope="module")
def dosed():
    data = make_adata(n_per_condition=30, d=5, conditions=("A", "B", "A+B"), doses=[1.0, 10.0])
    model = cm.ConditionalMonge(tiny_config(**{"train.steps": 6})).fit(
        data, "condition", "control", dose_key="dose"
    )
    return data, model


def one_at_a_time(model, x, conditions):
    """The map applied eagerly, one condition after the other (no padding, no vmap)."""
    trained = model.trained
    module = trained.module()
    z = x if trained.projection is None else trained.projection.encode(x)
    out = []
    for cond in conditions:
        enc = jax.tree.map(lambda a: a[0], trained.encoder.encode([cond]))
        variables = {"params": trained.params, "constants": trained.constants}
        mapped = np.asarray(module.apply(variables, z, enc))
        if trained.projection is not None:
            mapped = trained.projection.decode_displacement(x, z, mapped)
        out.append(mapped)
    return np.concatenate(out)


def test_200_conditions_trace_the_apply_once_and_match_one_at_a_time(dosed):
    data, model = dosed
    query = [Condition(("A",), (float(d),)) for d in np.linspace(0.1, 20.0, 120)]
    query += [Condition(("A", "B"), (float(d), 1.0)) for d in np.linspace(0.1, 20.0, 80)]
    fresh = cm.ConditionalMonge(model.config)
    fresh.trained = model.trained
    pred = fresh.predict(data, query)
    assert fresh.predict_traces == 1
    controls = data.X[(data.obs["condition"] == "control").to_numpy()]
    assert pred.n_obs == 200 * len(controls)
    expected = one_at_a_time(fresh, controls, query)
    np.testing.assert_allclose(pred.X, expected, rtol=1e-5, atol=1e-5)
    # Distinct conditions give distinct blocks: the conditions are not mixed up by the batching.
    blocks = pred.X.reshape(200, len(controls), -1)
    assert np.abs(blocks[0] - blocks[119]).max() > 1e-3
    fresh.predict(data, query[:150])  # same block shapes: no new trace
    assert fresh.predict_traces == 1


@pytest.fixture(scope="module")
def typed_pca():
    """Two cell types, the map in a 3-d PCA of 8 genes."""
    data = make_adata(n_per_condition=30, d=8, cell_types=["k1", "k2"])
    model = cm.ConditionalMonge(tiny_config(**{"data.n_pca": 3})).fit(
        data, "condition", "control", cell_type_key="cell_type"
    )
    return data, model


def test_pca_model_matches_one_at_a_time_in_gene_space(typed_pca):
    data, model = typed_pca
    pred = model.predict(data, ["A", "A+B"], cell_type="k2")
    rows = ((data.obs["condition"] == "control") & (data.obs["cell_type"] == "k2")).to_numpy()
    query = model.query_conditions(["A", "A+B"], cell_type="k2")
    expected = one_at_a_time(model, data.X[rows], query)
    np.testing.assert_allclose(pred.X, expected, rtol=1e-5, atol=1e-5)


def test_blocks_keep_query_order_across_cell_types(typed_pca):
    data, model = typed_pca
    query = [
        Condition(("A",), (1.0,), "k2"),
        Condition(("B",), (1.0,), "k1"),
        Condition(("A",), (1.0,), "k1"),
    ]
    pred = model.predict(data, query)
    ids = list(dict.fromkeys(pred.obs["condition_id"].astype(str)))
    assert ids == ["A|dose=1|cell_type=k2", "B|dose=1|cell_type=k1", "A|dose=1|cell_type=k1"]
    first = pred[pred.obs["condition_id"] == "A|dose=1|cell_type=k2"]
    assert set(data.obs["cell_type"].iloc[first.obs["source_index"]]) == {"k2"}


def test_predict_before_fit_names_the_fix():
    with pytest.raises(NotFittedError, match="call `fit` or `ConditionalMonge.load`"):
        cm.ConditionalMonge().predict(make_adata(), ["A"])


def test_load_with_data_checks_the_genes(dosed, tmp_path):
    data, model = dosed
    model.save(tmp_path / "run")
    loaded = cm.ConditionalMonge.load(tmp_path / "run", data)
    assert loaded.spec == model.spec and loaded.spec.dose_key == "dose"
    np.testing.assert_allclose(loaded.predict(data, ["A"], dose=3.0).X,
                               model.predict(data, ["A"], dose=3.0).X, rtol=1e-6)  # fmt: skip
    other = data[:, :4].copy()
    with pytest.raises(DataError, match="genes are missing"):
        cm.ConditionalMonge.load(tmp_path / "run", other)


def test_evaluate_scores_every_observed_condition(dosed):
    data, model = dosed
    table = model.evaluate(data, max_cells=50)
    assert len(table) == 6  # 3 labels x 2 doses, observed in the data
    # Validation held one of the six back from training; it is still scored (it is encodable).
    assert len(model.conditions) == 5 and len(model.validation["conditions"]) == 1
    assert set(table["method"]) == {"condmonge"}
    assert (table["n_true"] == 30).all() and (table["n_pred"] == 30).all()
    assert np.isfinite(table["energy_distance"]).all() and (table["energy_distance"] >= 0).all()


def test_a_held_out_cell_type_is_predicted_through_its_embedding_row():
    """Cell-type transfer: k2's treated cells never trained, its table row places it."""
    import pandas as pd

    data = make_adata(n_per_condition=20, d=4, cell_types=["k1", "k2", "k3"])
    keep = (data.obs["cell_type"] != "k2") | (data.obs["condition"] == "control")
    table = pd.DataFrame({"u": [0.0, 1.0, 2.0]}, index=["k1", "k2", "k3"])
    model = cm.ConditionalMonge(tiny_config(**{"data.validation": "cells"})).fit(
        data[keep.to_numpy()].copy(),
        "condition",
        "control",
        cell_type_key="cell_type",
        embeddings={"cell_type": table},
    )
    assert {c.cell_type for c in model.conditions} == {"k1", "k3"}
    assert model.encodable_cell_types == ["k1", "k2", "k3"]
    pred = model.predict(data, ["A"], cell_type="k2")
    n_controls = int(((data.obs["condition"] == "control") & (data.obs["cell_type"] == "k2")).sum())
    assert pred.n_obs == n_controls
    assert set(pred.obs["cell_type"].astype(str)) == {"k2"}
