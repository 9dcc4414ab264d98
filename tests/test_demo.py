"""The demo on the shipped Norman/McFaline data writes a complete report."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import condmonge as cm
from condmonge.demo import DEMO_BASELINES, DEMO_HOLDOUT, run_demo


def test_shipped_dataset_loads():
    data = cm.datasets.norman_mcfaline()
    assert data.shape == (5961, 500)
    assert (data.obs["condition"] == "control").sum() == 400
    assert set(DEMO_HOLDOUT) <= set(data.obs["condition"])


@pytest.mark.slow
def test_demo_report_and_model_beats_identity(tmp_path):
    summary = run_demo(tmp_path, steps=300, progress=False)
    for name in [
        "report.md",
        "summary.png",
        "per_condition.csv",
        "mean_deltas.png",
        "pca.png",
        "predictions.h5ad",
        "summary.json",
        "model/model.safetensors",
    ]:
        assert (tmp_path / name).is_file(), name
    assert list(summary.index) == ["condmonge", *DEMO_BASELINES]
    per = pd.read_csv(tmp_path / "per_condition.csv")
    assert np.isfinite(per["energy_distance"]).all()
    assert set(per["label"]) == set(DEMO_HOLDOUT)
    pred = ad.read_h5ad(tmp_path / "predictions.h5ad")
    assert set(pred.obs["condition"]) == set(DEMO_HOLDOUT)
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["steps"] > 0 and record["seconds"]["train_condmonge"] > 0
    # Held-out combinations: the model must move the controls the right way, clearly better
    # than predicting no effect.
    r2 = summary["r2_delta_top20"]
    assert r2["condmonge"] > r2["identity"] + 0.3
    assert summary.loc["condmonge", "energy_distance"] < summary.loc["identity", "energy_distance"]
