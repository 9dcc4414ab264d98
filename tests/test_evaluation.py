"""Baselines, evaluation of predicted AnnData, the experiment runner and `condmonge evaluate`."""

import json

import numpy as np
import pandas as pd
import pytest

from condmonge.cli import app
from condmonge.config import DataConfig
from condmonge.data.prepare import label_cells
from condmonge.errors import DataError, UnknownConditionError
from condmonge.evaluate import make_baseline
from condmonge.evaluate.baselines import MongeGapPerCondition
from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets
from condmonge.evaluate.experiment import experiment_config_from_dict, run_experiment
from conftest import make_adata

CFG = DataConfig(condition_key="condition", control="control")


def _train_test(adata, held=("A+B",)):
    is_held = adata.obs["condition"].isin(held).to_numpy()
    is_ctrl = (adata.obs["condition"] == "control").to_numpy()
    ctrl_rows = np.flatnonzero(is_ctrl)
    test_ctrl = np.zeros(adata.n_obs, bool)
    test_ctrl[ctrl_rows[: len(ctrl_rows) // 2]] = True
    train = adata[~is_held & ~test_ctrl].copy()
    test = adata[is_held | test_ctrl].copy()
    return train, test


def _conditions(test):
    return label_cells(test, CFG).conditions


def test_baselines_on_additive_data():
    # Responses are exactly additive: A+B = control + shift_A + shift_B (+ noise).
    adata = make_adata(n_per_condition=300, d=8)
    train, test = _train_test(adata)
    conds = _conditions(test)
    truth = truth_sets(test, CFG)
    scores = {}
    for name in ("identity", "mean_shift", "additive", "linear"):
        baseline = make_baseline(name).fit(train)
        pred = baseline.predict(test, conds)
        assert pred.n_obs == 150 and list(pred.var_names) == list(adata.var_names)
        assert set(pred.obs["condition_id"]) == {"A+B|dose=1+1"}
        assert {"condition", "source_index", "source_obs_name"} <= set(pred.obs)
        table = evaluate_prediction(pred, truth, CFG, method=name)
        scores[name] = table.loc["A+B|dose=1+1", "r2_delta_all"]
    assert scores["additive"] > 0.9
    assert scores["identity"] < 0.05
    # Unseen pair: the nearest training conditions (A and B, tied) average to half the effect.
    assert 0.2 < scores["mean_shift"] < scores["additive"]


def test_mean_shift_of_a_seen_condition_is_its_training_shift():
    adata = make_adata(n_per_condition=100, d=5)
    baseline = make_baseline("mean_shift").fit(adata)
    x = adata.X[(adata.obs["condition"] == "control").to_numpy()]
    cond = next(c for c in baseline.conditions if c.label() == "A")
    expected = adata.X[(adata.obs["condition"] == "A").to_numpy()].mean(0) - x.mean(0)
    np.testing.assert_allclose(baseline.transport(x, cond) - x, np.tile(expected, (100, 1)), 1e-5)


def test_linear_uses_an_embedding_table_for_unseen_perturbations():
    adata = make_adata(n_per_condition=80, d=5, conditions=("A", "B", "C"))
    train, test = _train_test(adata, held=("C",))
    table = pd.DataFrame({"e0": [1.0, 0.0, 1.0], "e1": [0.0, 1.0, 1.0]}, index=["A", "B", "C"])
    with pytest.raises(UnknownConditionError, match="'C'"):
        make_baseline("linear").fit(train).predict(test, _conditions(test))
    pred = (
        make_baseline("linear")
        .fit(train, embeddings={"condition": table})
        .predict(test, _conditions(test))
    )
    assert np.isfinite(pred.X).all() and pred.n_obs == 40  # the 40 test controls


def test_monge_gap_per_condition_fits_each_condition_and_refuses_others():
    adata = make_adata(n_per_condition=120, d=4, conditions=("A",))
    baseline = MongeGapPerCondition(steps=150, batch_size=64, hidden=(16,)).fit(adata)
    truth = truth_sets(adata, CFG)
    pred = baseline.predict(adata, _conditions(adata))
    table = evaluate_prediction(pred, truth, CFG)
    assert table.loc["A|dose=1", "r2_delta_all"] > 0.8
    other = _conditions(make_adata(conditions=("B",)))
    with pytest.raises(UnknownConditionError, match="not fitted on 'B"):
        baseline.predict(adata, other)


def test_evaluate_prediction_errors_name_the_fix():
    adata = make_adata(n_per_condition=40, d=4)
    pred = make_baseline("identity").fit(adata).predict(adata, _conditions(adata))
    only_a = adata[adata.obs["condition"].isin(["control", "A"]).to_numpy()].copy()
    with pytest.raises(DataError, match="no observed cells in the truth"):
        evaluate_prediction(pred, only_a, CFG)
    bare = pred.copy()
    del bare.obs["condition_id"]
    with pytest.raises(DataError, match="condition_id"):
        evaluate_prediction(bare, adata, CFG)


@pytest.mark.slow
def test_experiment_on_the_synthetic_task_writes_a_report(tmp_path):
    cfg = experiment_config_from_dict(
        {
            "dataset": "synthetic",
            "synthetic": {"n_conditions": 6, "n_unseen": 2, "n_cells": 80, "n_features": 4},
            "baselines": ["identity", "linear"],
            "evaluation": {"max_cells": 64, "plot_conditions": 1},
            "model": {
                "model": {"hidden_dim": 16, "n_layers": 2, "condition_dim": 8},
                "train": {
                    "steps": 30,
                    "conditions_per_step": 2,
                    "cells_per_condition": 32,
                    "progress": False,
                    "validate_every": 10,
                },
                "loss": {"sinkhorn_max_iterations": 20, "sinkhorn_scaling": False},
            },
        }
    )
    result = run_experiment(cfg, tmp_path, log=None)
    for name in (
        "report.md",
        "per_condition.csv",
        "summary.json",
        "summary.png",
        "pca.png",
        "mean_deltas.png",
        "moments.png",
        "per_condition.png",
        "predictions.h5ad",
    ):
        assert (tmp_path / name).is_file(), name
    assert list(result.summary.index) == ["condmonge", "identity", "linear"]
    per = pd.read_csv(tmp_path / "per_condition.csv")
    assert len(per) == 3 * 2 and per["l2_uvp"].notna().all()
    # Identity leaves the whole displacement unexplained; the L2-UVP is far above 0 for it.
    assert result.summary.loc["identity", "l2_uvp"] > 20
    assert "| condmonge |" in (tmp_path / "report.md").read_text()
    record = json.loads((tmp_path / "summary.json").read_text())
    assert len(record["test_conditions"]) == 2


def test_cli_evaluate_writes_metrics_json(tmp_path):
    from typer.testing import CliRunner

    adata = make_adata(n_per_condition=50, d=5)
    pred = make_baseline("additive").fit(adata).predict(adata, _conditions(adata))
    pred.write_h5ad(tmp_path / "pred.h5ad")
    adata.write_h5ad(tmp_path / "truth.h5ad")
    runner = CliRunner()
    out = tmp_path / "metrics.json"
    args = ["evaluate", str(tmp_path / "pred.h5ad"), str(tmp_path / "truth.h5ad")]
    result = runner.invoke(app, [*args, "--out", str(out), "--control", "control"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["n_conditions"] == 3
    assert record["per_condition"]["A|dose=1"]["r2_delta_all"] > 0.95
    assert set(record["aggregate"]["energy_distance"]) == {"mean", "sd"}
    bad = runner.invoke(app, [*args, "--out", str(out), "--cell-type-key", "tissue"])
    assert bad.exit_code == 2
