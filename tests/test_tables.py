"""Per-cell tables (csv/tsv/parquet/zarr) in and out, modality-aware validation, standardisation."""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from condmonge.config import DataConfig
from condmonge.data.anndata_io import (
    check_features,
    detect_modality,
    fit_standardizer,
    validate_adata,
)
from condmonge.data.tables import read_cells, table_to_anndata, write_cells
from condmonge.datasets import fouri_like
from condmonge.errors import CondMongeError, DataError, DataWarning
from conftest import run_cli_batch


def _frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "drug": np.resize(["control", "a", "b", "c"], n),
            "time": np.resize([6.0, 24.0], n),
            "well": np.resize(["A01", "B02"], n),
            "pERK_nuc": rng.normal(size=n),
            "pERK_cyto": rng.normal(size=n) * 3 - 1,
            "area_cell": rng.uniform(100, 900, size=n),
        }
    )


FEATURES = ["pERK_nuc", "pERK_cyto", "area_cell"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_table_keys_go_to_obs_and_numeric_columns_are_features(tmp_path, suffix):
    frame = _frame()
    path = tmp_path / f"cells{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path, row_group_size=7)  # several row groups, filled one by one
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    adata = read_cells(path, ["drug", "time"], required=["drug"])
    assert list(adata.var_names) == FEATURES  # 'time' is a key, 'well' is text
    assert list(adata.obs.columns) == ["drug", "time", "well"]
    np.testing.assert_allclose(adata.X, frame[FEATURES].to_numpy(np.float32), rtol=1e-6)
    assert adata.obs["time"].tolist() == frame["time"].tolist()
    assert adata.X.dtype == np.float32


def test_features_by_name_and_glob(tmp_path):
    frame = _frame()
    adata = table_to_anndata(frame, ["drug", "time"], features="pERK_*")
    assert list(adata.var_names) == ["pERK_nuc", "pERK_cyto"]
    assert "area_cell" in adata.obs  # not selected: metadata
    adata = table_to_anndata(frame, ["drug"], features=["area_cell", "pERK_nuc"])
    assert list(adata.var_names) == ["area_cell", "pERK_nuc"]
    path = tmp_path / "c.parquet"
    frame.to_parquet(path)
    assert list(read_cells(path, ["drug"], features="*_cyto,area_*").var_names) == [
        "pERK_cyto",
        "area_cell",
    ]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".zarr", ".h5ad"])
def test_write_cells_round_trips_in_the_format_of_the_suffix(tmp_path, suffix):
    adata = table_to_anndata(_frame(), ["drug", "time"])
    adata.uns["condmonge"] = {"version": "test", "use_rep": "X"}
    # A prediction's numeric obs (NaN uncertainty of one member) are never read as features.
    adata.obs["uncertainty"] = np.nan
    adata.obs["member_spread"] = 0.0
    adata.obs["ood_score"] = 1.5
    adata.obs["source_index"] = np.arange(adata.n_obs)
    path = write_cells(adata, tmp_path / f"pred{suffix}")
    back = read_cells(path, ["drug", "time"])
    np.testing.assert_allclose(back.X, adata.X, rtol=1e-6)
    assert list(back.var_names) == FEATURES
    assert back.obs["drug"].astype(str).tolist() == adata.obs["drug"].astype(str).tolist()
    assert list(back.obs_names) == list(adata.obs_names)
    if suffix in (".parquet", ".zarr", ".h5ad"):  # csv/tsv cannot carry uns
        assert back.uns["condmonge"]["version"] == "test"


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as exc:
        fn(*args, **kwargs)
    message = str(exc.value)
    assert isinstance(exc.value, CondMongeError) and "\n" not in message
    return message


def test_bad_tables_are_one_line_errors_with_the_fix(tmp_path):
    frame = _frame()
    msg = _error(table_to_anndata, frame[["drug", "time", "well"]], ["drug", "time"])
    assert "no numeric feature column" in msg and "--features" in msg
    msg = _error(table_to_anndata, frame, ["dose"], required=["dose"])
    assert "has no column 'dose'" in msg and "--*-key" in msg
    mixed = frame.astype({"pERK_nuc": object})
    mixed.loc[3, "pERK_nuc"] = "n/a"
    msg = _error(table_to_anndata, mixed, ["drug", "time"])
    assert "feature column 'pERK_nuc' mixes numbers and text (e.g. 'n/a' at row 3)" in msg
    nan = frame.copy()
    nan.loc[[5, 9], "area_cell"] = np.nan
    msg = _error(table_to_anndata, nan, ["drug", "time"])
    assert "feature column 'area_cell' has 2 NaN or inf values (first at row 5)" in msg
    assert "drop or impute" in msg
    msg = _error(table_to_anndata, frame, ["drug"], features="intensity_*")
    assert "no column matching feature 'intensity_*'" in msg


def test_duplicate_columns_and_foreign_files(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("drug,f1,f1\ncontrol,1,2\na,3,4\n")
    msg = _error(read_cells, path, ["drug"])
    assert "column name 'f1' more than once" in msg and "rename" in msg
    dup = pd.DataFrame([[1.0, 2.0]], columns=["f1", "f1"])
    assert "more than once" in _error(table_to_anndata, dup)
    fake = tmp_path / "cells.parquet"
    fake.write_text("drug,f1\ncontrol,1\n")
    msg = _error(read_cells, fake, ["drug"])
    assert "is not a parquet file" in msg and "to_parquet" in msg
    msg = _error(read_cells, tmp_path / "cells.xlsx")
    assert "unknown suffix '.xlsx'" in msg
    msg = _error(read_cells, tmp_path / "missing.csv")
    assert "does not exist" in msg


def _adata(x, **uns) -> ad.AnnData:
    n = x.shape[0]
    obs = pd.DataFrame({"condition": np.resize(["control", "a"], n)})
    obs.index = [f"c{i}" for i in range(n)]
    out = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])]))
    out.uns.update(uns)
    return out


def test_modality_detection_and_override():
    rng = np.random.default_rng(0)
    cfg = DataConfig()
    scaled = rng.normal(size=(20, 48)).astype(np.float32)
    assert detect_modality(_adata(scaled), cfg) == "generic"  # negatives: scaled, not counts
    assert detect_modality(_adata(scaled, modality="protein"), cfg) == "protein"  # declared
    positive = np.abs(scaled) * 100 + 0.5
    assert detect_modality(_adata(positive), cfg) == "rna"  # could be unlogged expression
    table = table_to_anndata(pd.DataFrame(positive, columns=[f"m{j}" for j in range(48)]))
    assert detect_modality(table, cfg) == "protein"  # read from a table: an imaging export
    counts = rng.poisson(3.0, size=(20, 48)).astype(np.float32)
    assert detect_modality(_adata(counts), cfg) == "rna"
    assert detect_modality(_adata(sp.csr_matrix(scaled)), cfg) == "rna"
    assert detect_modality(_adata(rng.normal(size=(20, 300))), cfg) == "rna"
    assert detect_modality(_adata(scaled, log1p={}), cfg) == "rna"
    assert detect_modality(_adata(scaled), DataConfig(modality="rna")) == "rna"


def test_protein_data_raise_no_rna_warnings_but_rna_still_does():
    rng = np.random.default_rng(1)
    intensities = (np.abs(rng.normal(size=(30, 12))) * 800 + 0.5).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_adata(_adata(intensities), DataConfig(modality="protein"))
        validate_adata(_adata(intensities - 500), DataConfig())  # negative: generic detected
    with pytest.warns(DataWarning, match="not log-transformed"):
        validate_adata(_adata(intensities), DataConfig())  # auto: rna, so the check runs


def test_constant_and_all_nan_features_are_named():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 4))
    x[:, 2] = 7.0
    with pytest.warns(DataWarning, match=r"1 constant feature\(s\) \('pS6'\)"):
        check_features(x, ["pERK", "pAKT", "pS6", "Ki67"])
    x[:, 1] = np.nan
    with pytest.raises(DataError, match=r"1 feature\(s\) with no finite value \('pAKT'\)"):
        check_features(x, ["pERK", "pAKT", "pS6", "Ki67"])
    adata = _adata(rng.normal(size=(10, 4)).astype(np.float32))
    adata.X[3, 1] = np.nan
    with pytest.raises(DataError, match="first at row 3\\) in feature 'g1'"):
        validate_adata(adata, DataConfig())


def test_standardizer_fits_on_the_given_rows_and_inverts():
    rng = np.random.default_rng(3)
    x = rng.normal(loc=[0.0, 50.0, -3.0], scale=[1.0, 20.0, 0.1], size=(500, 3))
    x[:, 0] = np.where(np.arange(500) < 250, x[:, 0], x[:, 0] + 100.0)  # treated half shifted
    controls = np.arange(250)
    std = fit_standardizer(x, controls)
    z = std.encode(x)
    np.testing.assert_allclose(z[controls].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[controls].std(0), 1.0, atol=1e-4)
    assert z[250:, 0].mean() > 50  # treated cells keep their shift in control units
    np.testing.assert_allclose(std.decode(z), x, rtol=1e-4, atol=1e-3)
    assert fit_standardizer(np.ones((5, 2)), np.arange(5)).scale.tolist() == [1.0, 1.0]


def _protein_table_commands(tmp_path, task, suffix):
    """Train on the table, predict into a table of the same format, evaluate it."""
    cells = tmp_path / f"cells{suffix}"
    frame = task.to_frame()
    frame.to_csv(cells, index=False) if suffix == ".csv" else frame.to_parquet(cells)
    run, pred = tmp_path / f"run{suffix}", tmp_path / f"pred{suffix}"
    return pred, tmp_path / f"m{suffix}.json", [
        ["train", cells, "--out", run, "--config", tmp_path / "config.yaml",
         "--condition-key", "drug", "--control", "control", "--covariate-key", "time:log1p:0"],
        ["predict", run, cells, "--query", tmp_path / "query.csv", "--out", pred],
        ["evaluate", pred, cells, "--out", tmp_path / f"m{suffix}.json", "--condition-key",
         "drug", "--covariate-key", "time"],
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_train_predict_evaluate_on_a_protein_table(tmp_path):
    # Each of csv and parquet: train, predict and evaluate (all in one subprocess,
    # tests/cli_batch.py). The wrong query file does not depend on the table's format.
    task = fouri_like(n_drugs=3, n_cells=60, n_controls=150, seed=0)
    pd.DataFrame({"drug": task.drugs[:2], "time": [48.0, 6.0]}).to_csv(
        tmp_path / "query.csv", index=False
    )
    missing = tmp_path / "bad.csv"
    pd.DataFrame({"drug": [task.drugs[0]]}).to_csv(missing, index=False)
    (tmp_path / "config.yaml").write_text(
        "model: {hidden_dim: 16, n_layers: 2, condition_dim: 8, perturbation_hidden_dim: 8}\n"
        "train: {steps: 3, cells_per_condition: 32, conditions_per_step: 4, progress: false}\n"
    )
    runs = {
        suffix: _protein_table_commands(tmp_path, task, suffix) for suffix in (".csv", ".parquet")
    }
    bad_query = ["predict", tmp_path / "run.csv", tmp_path / "cells.csv", "--query", missing,
                 "--out", tmp_path / "p.csv"]  # fmt: skip
    results = run_cli_batch(*(c for _, _, commands in runs.values() for c in commands), bad_query)
    for (pred, metrics, _), start in zip(runs.values(), (0, 3), strict=True):
        trained, predicted, evaluated = results[start : start + 3]
        assert trained["code"] == 0, trained["stderr"]
        assert "log-normalised" not in trained["stderr"]  # no RNA warning
        assert "raw counts" not in trained["stderr"]
        assert predicted["code"] == 0, predicted["stderr"]
        back = read_cells(pred, ["drug", "time"])
        assert back.n_vars == 48 and sorted(back.obs["time"].unique()) == [6.0, 48.0]
        assert evaluated["code"] == 0, evaluated["stderr"]
        record = json.loads(metrics.read_text())
        assert record["n_conditions"] == 2 and "energy_distance" in record["aggregate"]
    bad = results[-1]
    assert bad["code"] == 2
    assert bad["stderr"].startswith("error: query file")
    assert "has no column 'time'" in bad["stderr"]
