"""Fit / predict / save / load through the Python API."""

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import condmonge as cm
from condmonge.train.trainer import clear_compiled_training
from conftest import make_adata, tiny_config


# 50 conditions: the same single trace with a larger condition table (slow: a second fit).
@pytest.mark.parametrize("n_conditions", [5, pytest.param(50, marks=pytest.mark.slow)])
def test_training_step_is_traced_once(n_conditions):
    names = [f"d{i}" for i in range(n_conditions)]
    data = make_adata(n_per_condition=20, d=4, conditions=names)
    clear_compiled_training()  # an earlier test's run alike would have traced it already
    model = cm.ConditionalMonge(tiny_config(**{"train.steps": 6})).fit(data, "condition", "control")
    assert len(model.conditions) == n_conditions
    assert int(model.state.step) == 6
    assert model.n_traces == 1


def test_runs_alike_share_one_compiled_step():
    # Ensemble members and tune trials differ in seeds and host-side settings: one trace.
    data = make_adata(n_per_condition=20, d=4, conditions=("A", "B", "C"))

    def fit(**overrides):
        return cm.ConditionalMonge(tiny_config(**overrides)).fit(data, "condition", "control")

    clear_compiled_training()
    assert fit().n_traces == 1
    shared = fit(**{"train.seed": 3, "train.patience": 2, "train.validate_every": 3})
    assert shared.n_traces == 0
    assert fit(**{"train.learning_rate": 1e-2}).n_traces == 1  # another optimiser: traced
    clear_compiled_training()
    fresh = fit(**{"train.seed": 3, "train.patience": 2, "train.validate_every": 3})
    assert fresh.n_traces == 1
    # The shared step computes what a freshly traced one does, bit for bit.
    assert shared.validation == fresh.validation
    np.testing.assert_array_equal(shared.predict(data).X, fresh.predict(data).X)
    pd.testing.assert_frame_equal(
        shared.history.drop(columns="steps_per_s"),
        fresh.history.drop(columns="steps_per_s"),
    )


@pytest.fixture(scope="module")
def fitted():
    """``make_adata()`` and a model fitted on it with ``tiny_config()`` and the default seed (0),
    shared by the tests that only read the model (predict, save, load)."""
    adata = make_adata()
    return adata, cm.ConditionalMonge(tiny_config()).fit(adata, "condition", "control")


def test_prediction_blocks_and_obs(fitted):
    adata, model = fitted
    pred = model.predict(adata, ["A", "B+A"])
    n_ctrl = int((adata.obs.condition == "control").sum())
    assert pred.n_obs == 2 * n_ctrl
    assert list(pred.var_names) == list(adata.var_names)
    assert list(pred.obs["condition"].cat.categories) == ["A", "A+B"]
    ctrl_rows = np.flatnonzero(adata.obs.condition == "control")
    np.testing.assert_array_equal(pred.obs["source_index"].to_numpy()[:n_ctrl], ctrl_rows)
    # Without a condition column every cell is a control.
    bare = adata[ctrl_rows].copy()
    del bare.obs["condition"]
    again = model.predict(bare, ["A"])
    np.testing.assert_allclose(again.X, pred.X[:n_ctrl], rtol=1e-6)


@pytest.fixture(scope="module")
def typed_and_dosed():
    """Two cell types and two doses, trained on every condition (validation on held-back
    cells: held-back conditions, the default without a holdout, are not trained on)."""
    data = make_adata(cell_types=["k1", "k2"], doses=[1.0, 10.0])
    model = cm.ConditionalMonge(tiny_config(**{"data.validation": "cells"})).fit(
        data, "condition", "control", dose_key="dose", cell_type_key="cell_type"
    )
    return data, model


def test_query_table_with_dose_and_cell_type(typed_and_dosed):
    data, model = typed_and_dosed
    query = pd.DataFrame(
        {"condition": ["A", "A+B"], "dose": ["3", "2+5"], "cell_type": ["k2", "k1"]}
    )
    pred = model.predict(data, query)
    assert list(pred.obs["condition_id"].unique()) == [
        "A|dose=3|cell_type=k2",
        "A+B|dose=2+5|cell_type=k1",
    ]
    with pytest.raises(cm.errors.UnknownConditionError, match="needs a dose"):
        model.predict(data, ["A"])


def test_unseen_perturbation_with_embedding_table():
    data = make_adata(conditions=("A", "B", "C"))
    table = pd.DataFrame(np.eye(4), index=["A", "B", "C", "D"], columns=list("wxyz"))
    model = cm.ConditionalMonge(tiny_config()).fit(
        data, "condition", "control", embeddings={"condition": table}, holdout=["C"]
    )
    pred = model.predict(data, ["C", "D", "A+D"])
    assert pred.obs["condition"].nunique() == 3
    assert np.isfinite(pred.X).all()


@pytest.mark.slow
def test_same_seed_same_parameters_and_different_seed_differs(fitted):
    adata, first = fitted  # seed 0

    def params(seed):
        model = cm.ConditionalMonge(tiny_config()).fit(adata, "condition", "control", seed=seed)
        return model.predict(adata, ["A+B"]).X

    expected = first.predict(adata, ["A+B"]).X
    np.testing.assert_array_equal(params(0), expected)
    assert not np.array_equal(params(1), expected)


@pytest.mark.slow  # new Python processes (JAX start-up each)
def test_save_load_in_new_process_gives_identical_predictions(fitted, tmp_path):
    adata, model = fitted
    model.save(tmp_path / "run")
    adata.write_h5ad(tmp_path / "data.h5ad")
    expected = model.predict(adata, ["A+B", "B"]).X
    script = textwrap.dedent(f"""
        import anndata as ad, numpy as np, condmonge as cm
        model = cm.ConditionalMonge.load({str(tmp_path / "run")!r})
        pred = model.predict(ad.read_h5ad({str(tmp_path / "data.h5ad")!r}), ["A+B", "B"])
        np.save({str(tmp_path / "pred.npy")!r}, pred.X)
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), expected)


def test_checkpoint_is_safetensors_without_pickle(fitted, tmp_path):
    path = fitted[1].save(tmp_path)
    raw = path.read_bytes()
    assert b"condmonge-checkpoint" in raw[:20000]
    assert b"\x80\x04\x95" not in raw  # no pickle protocol-4 frame anywhere


def test_truncated_and_foreign_checkpoints(fitted, tmp_path):
    path = fitted[1].save(tmp_path / "run")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(cm.errors.CheckpointError, match="truncated or foreign"):
        cm.ConditionalMonge.load(tmp_path / "run")
    (tmp_path / "other").mkdir()
    with pytest.raises(cm.errors.CheckpointError, match="no checkpoint at"):
        cm.ConditionalMonge.load(tmp_path / "other")


@pytest.mark.slow
def test_resume_continues_to_the_requested_steps(adata, tmp_path):
    cfg = tiny_config(**{"train.steps": 4, "train.checkpoint_every": 2})
    cm.ConditionalMonge(cfg).fit(adata, "condition", "control", checkpoint_dir=tmp_path)
    resumed = cm.ConditionalMonge(cfg).fit(
        adata, "condition", "control", steps=8, checkpoint_dir=tmp_path, resume=True
    )
    assert int(resumed.state.step) == 8
    assert [h["step"] for h in resumed.history.to_dict("records")][-1] == 8


@pytest.mark.slow
def test_pca_latent_training_round_trip_and_pca_without_held_out_cells(adata, tmp_path):
    from condmonge.data.pca import fit_pca

    model = cm.ConditionalMonge(tiny_config(**{"data.n_pca": 3})).fit(
        adata, "condition", "control", holdout=["A+B"]
    )
    assert model.projection.components.shape == (6, 3)
    np.testing.assert_allclose(
        model.projection.components.T @ model.projection.components, np.eye(3), atol=1e-5
    )
    pred = model.predict(adata, ["A+B"])
    assert pred.n_vars == 6  # predictions come back in gene space
    ctrl = np.asarray(adata[adata.obs.condition == "control"].X)
    # The displacement lies in the 3-d principal subspace.
    residual = (np.asarray(pred.X) - ctrl) @ (
        np.eye(6) - model.projection.components @ model.projection.components.T
    )
    assert np.abs(residual).max() < 1e-4
    model.save(tmp_path)
    np.testing.assert_array_equal(
        cm.ConditionalMonge.load(tmp_path).predict(adata, ["A+B"]).X, pred.X
    )
    # The PCA is fitted on the training cells only: not on the held-out A+B.
    kept = np.asarray(adata[adata.obs.condition != "A+B"].X)
    np.testing.assert_allclose(
        np.abs(model.projection.components), np.abs(fit_pca(kept, 3).components), atol=1e-5
    )


def test_predict_all_training_conditions_of_available_cell_types(typed_and_dosed):
    data, model = typed_and_dosed
    only_k2 = data[data.obs.cell_type == "k2"]
    pred = model.predict(only_k2)
    assert set(pred.obs["cell_type"]) == {"k2"}
    assert set(pred.obs["condition"]) == {"A", "B", "A+B"}
    assert set(pred.obs["dose"]) == {"1", "10", "1+1", "10+10"}  # every trained dose


def test_checkpoint_from_another_format_version_is_refused(tmp_path):
    from safetensors.numpy import save_file

    header = {
        "format": "condmonge-checkpoint",
        "format_version": "999",
        "condmonge_version": "9.9.9",
        "meta": "{}",
    }
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"), metadata=header)
    with pytest.raises(cm.errors.CheckpointError) as exc:
        cm.ConditionalMonge.load(tmp_path)
    message = str(exc.value)
    assert "format version 999 (condmonge 9.9.9)" in message
    assert f"reads version {cm._version.CHECKPOINT_VERSION}" in message
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(cm.errors.CheckpointError, match="not a condmonge checkpoint"):
        cm.ConditionalMonge.load(tmp_path)
