"""Issue 5 wiring: callable embeddings, ``--embedding drug=smiles:...``, experiment specs."""

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from condmonge.conditions.encoding import build_encoder
from condmonge.data.prepare import label_cells
from condmonge.errors import ConfigError
from condmonge.evaluate.experiment import (
    _embedding_source,
    _resolve_embeddings,
    experiment_config_from_dict,
    load_experiment_config,
)
from conftest import make_adata, tiny_config

pytest.importorskip("rdkit")

SMILES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
}


def drug_adata():
    data = make_adata(n_per_condition=30, d=5, conditions=tuple(SMILES))
    data.obs["condition"] = data.obs["condition"].astype(str).astype("category")
    return data


def test_callable_embedding_is_fitted_on_training_names_only():
    seen = []
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(4, 3)), index=list(SMILES))

    def embedding(fit_names):
        seen.append(list(fit_names))
        return table

    # What fit() does before training (the end-to-end path is the CLI test below).
    spec = tiny_config().data.spec
    cells = label_cells(drug_adata(), spec)
    training = [c for c in cells.conditions if c.label() != "paracetamol"]
    encoder = build_encoder(training, [], spec, {"condition": embedding})
    assert seen == [["aspirin", "caffeine", "ibuprofen"]]
    assert encoder.perturbation.encode(["paracetamol"]).shape == (1, 3)  # unseen: has a row


@pytest.mark.slow
def test_cli_train_and_predict_with_smiles_embedding(tmp_path):
    data = drug_adata()
    data.write_h5ad(tmp_path / "data.h5ad")
    pd.Series(SMILES, name="smiles").rename_axis("drug").to_csv(tmp_path / "drugs.csv")
    config = {
        "train": {"steps": 4, "conditions_per_step": 2, "cells_per_condition": 16,
                  "validate_every": 2, "progress": False},
        "model": {"hidden_dim": 16, "n_layers": 2, "condition_dim": 8,
                  "perturbation_hidden_dim": 8},
        "loss": {"sinkhorn_max_iterations": 20, "sinkhorn_scaling": False},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "condmonge.cli", *map(str, args)],
            capture_output=True,
            text=True,
        )

    result = cli(
        "train", tmp_path / "data.h5ad", "--out", tmp_path / "run", "--condition-key",
        "condition", "--control", "control", "--holdout", "paracetamol", "--config",
        tmp_path / "config.yaml", "--embedding",
        f"condition=smiles,kind=both,pca=2:{tmp_path}/drugs.csv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = cli(
        "predict", tmp_path / "run", tmp_path / "data.h5ad", "--out", tmp_path / "p.h5ad",
        "--conditions", "paracetamol",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pred = ad.read_h5ad(tmp_path / "p.h5ad")
    assert set(pred.obs["condition"]) == {"paracetamol"} and np.isfinite(pred.X).all()

    bad = cli(
        "train", tmp_path / "data.h5ad", "--out", tmp_path / "r2", "--condition-key",
        "condition", "--control", "control", "--embedding", "condition=smiles,kind=nope:x.csv",
    )  # fmt: skip
    assert bad.returncode == 2 and "kind must be one of" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_experiment_config_accepts_smiles_and_effect_specs():
    config = experiment_config_from_dict(
        {
            "dataset": "sciplex_like",
            "sciplex_like": {"smiles": "drugs.csv", "n_drugs": 4, "n_cells": 5},
            "embeddings": {"condition": "effect+smiles,kind=both,pca=2:drugs.csv"},
            "effect": {"n_components": 2},
        }
    )
    assert config.embeddings["condition"].startswith("effect+smiles")
    assert experiment_config_from_dict({"split": {"kind": "dose", "holdout": [1000]}}).split
    for bad in ("smiles,kind=nope:drugs.csv", "effect+drugs.csv"):
        with pytest.raises(ConfigError, match="embeddings"):
            experiment_config_from_dict({"embeddings": {"condition": bad}})
    with pytest.raises(ConfigError, match="sciplex_like"):
        experiment_config_from_dict({"sciplex_like": {"n_cellz": 3}})


def test_effect_plus_smiles_is_fitted_on_the_training_split(tmp_path):
    pd.Series(SMILES, name="smiles").rename_axis("drug").to_csv(tmp_path / "drugs.csv")
    config = experiment_config_from_dict(
        {
            "embeddings": {"condition": "effect+smiles:drugs.csv"},
            "effect": {"n_components": 2},
            "model": {"data": {"condition_key": "condition", "control": "control"}},
        }
    )
    data = drug_adata()
    train = data[data.obs["condition"] != "paracetamol"].copy()
    source = {"condition": _embedding_source(config, tmp_path, config.embeddings["condition"])}
    table = _resolve_embeddings(config, source, train)["condition"]
    assert sorted(table.index) == sorted(SMILES) and table.shape[1] == 2
    # The training rows do not depend on the held-out drug's cells: change them, same rows.
    other = data.copy()
    other.X[(other.obs["condition"] == "paracetamol").to_numpy()] += 100.0
    again = _resolve_embeddings(
        config, source, other[other.obs["condition"] != "paracetamol"].copy()
    )["condition"]
    pd.testing.assert_frame_equal(table, again)


def test_controls_embedding_places_a_held_out_cell_type():
    config = experiment_config_from_dict(
        {
            "embeddings": {"cell_type": "controls"},
            "effect": {"n_components": 2},
            "model": {"data": {"cell_type_key": "cell_type"}},
        }
    )
    data = make_adata(n_per_condition=20, d=4, conditions=("A",), cell_types=["k1", "k2", "k3"])
    held = ((data.obs["cell_type"] == "k3") & (data.obs["condition"] != "control")).to_numpy()
    train = data[~held].copy()
    source = {"cell_type": _embedding_source(config, Path("."), "controls")}
    table = _resolve_embeddings(config, source, train)["cell_type"]
    assert list(table.index) == ["k1", "k2", "k3"] and table.shape[1] == 2


def test_sciplex_like_example_validates():
    path = Path(__file__).resolve().parents[1] / "examples" / "sciplex_like.yaml"
    config = load_experiment_config(path)
    assert config.dataset == "sciplex_like" and config.split.kind == "kfold"
