import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("rdkit")

from condmonge.conditions import smiles as sm  # noqa: E402
from condmonge.errors import ConfigError, DataError  # noqa: E402

SHARED = Path(__file__).parents[2] / "shared" / "data" / "drug_metadata"

DRUGS = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "naproxen": "COc1ccc2cc(ccc2c1)C(C)C(=O)O",
    "imatinib": "Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc(-c2cccnc2)n1",
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDMONGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "smiles"


def test_default_cache_dir_follows_env(_cache):
    assert sm.default_cache_dir() == _cache


def test_morgan_counts_are_non_negative_integers():
    table = sm.smiles_features(DRUGS, "morgan_counts", radius=2, n_bits=256)
    assert table.shape == (len(DRUGS), 256)
    assert list(table.index) == list(DRUGS)
    assert table.dtypes.eq(np.float32).all()
    values = table.to_numpy()
    assert (values >= 0).all() and np.array_equal(values, np.round(values))
    assert values.sum(axis=1).min() > 0
    assert not table.loc["aspirin"].equals(table.loc["caffeine"])


def test_descriptors_finite_and_no_constant_columns():
    table = sm.smiles_features(DRUGS, "descriptors")
    assert table.dtypes.eq(np.float32).all()
    assert np.isfinite(table.to_numpy()).all()
    assert (table.std() > 0).all()
    assert "MolWt" in table.columns and "Ipc" not in table.columns
    both = sm.smiles_features(DRUGS, "both", n_bits=64)
    assert both.shape[1] == 64 + table.shape[1]


def test_non_finite_descriptors_are_filled_with_training_medians_and_reported():
    drugs = {**DRUGS, "sodium acetate": "CC(=O)[O-].[Na+]"}  # RDKit gives NaN partial charges
    with pytest.warns(UserWarning, match="replaced by the column medians"):
        table = sm.smiles_features(drugs, "descriptors", fit_names=list(DRUGS))
    assert np.isfinite(table.to_numpy()).all()
    column = "BCUT2D_MWHI"
    expected = np.median(table.loc[list(DRUGS), column].to_numpy(np.float64))
    assert table.loc["sodium acetate", column] == pytest.approx(expected, rel=1e-5)


def test_invalid_smiles_names_drug_and_smiles():
    with pytest.raises(DataError, match=r"'bad_drug'.*'C1CC\(\(N'"):
        sm.smiles_features({"aspirin": DRUGS["aspirin"], "bad_drug": "C1CC((N"})


def test_missing_smiles_names_drugs_and_count():
    series = pd.Series({"aspirin": DRUGS["aspirin"], "x1": None, "x2": ""})
    with pytest.raises(DataError, match=r"2 of 3 drugs have no SMILES.*'x1', 'x2'"):
        sm.smiles_features(series)
    with pytest.raises(DataError, match=r"1 of 2 drugs have no SMILES.*'ghost'"):
        sm.smiles_embedding(DRUGS, fit_names=["aspirin", "ghost"])


def test_bad_kind_and_components():
    with pytest.raises(ConfigError, match="kind"):
        sm.smiles_features(DRUGS, "maccs")
    with pytest.raises(ConfigError, match="n_components"):
        sm.smiles_embedding(DRUGS, n_components=10, fit_names=["aspirin", "caffeine"])


def test_cache_hit_skips_rdkit(_cache, monkeypatch):
    first = sm.smiles_features(DRUGS, "both", n_bits=128)
    files = sorted(_cache.glob("*.npy"))
    assert len(files) == 2 * len(DRUGS)
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert {"smiles", "block", "rdkit", "columns"} <= set(meta)
    np.load(files[0], allow_pickle=False)  # plain arrays, no pickle

    def boom(*args, **kwargs):
        raise AssertionError("RDKit features recomputed despite the cache")

    monkeypatch.setattr(sm, "_compute_block", boom)
    second = sm.smiles_features(DRUGS, "both", n_bits=128)
    pd.testing.assert_frame_equal(first, second)
    assert np.array_equal(first.to_numpy(), second.to_numpy())
    # Equivalent SMILES hit the same entry (keyed by the canonical form) ...
    sm.smiles_features({"aspirin": "OC(=O)c1ccccc1OC(C)=O"}, "morgan_counts", n_bits=128)
    # ... while other parameters miss it.
    with pytest.raises(AssertionError, match="recomputed"):
        sm.smiles_features(DRUGS, "morgan_counts", radius=3, n_bits=128)


def test_cache_can_be_disabled(_cache):
    sm.smiles_features(DRUGS, "morgan_counts", n_bits=32, cache_dir=False)
    assert not _cache.exists()


def test_unseen_smiles_do_not_change_seen_rows():
    seen = ["aspirin", "caffeine", "ibuprofen", "paracetamol", "naproxen"]
    other = {**DRUGS, "imatinib": "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC(=O)O"}
    for kind, n_components in [("descriptors", None), ("descriptors", 3), ("both", 4)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            a = sm.smiles_embedding(DRUGS, kind, n_components, fit_names=seen)
            b = sm.smiles_embedding(other, kind, n_components, fit_names=seen)
        assert list(a.columns) == list(b.columns)
        assert np.array_equal(a.loc[seen].to_numpy(), b.loc[seen].to_numpy())
        assert not np.array_equal(a.loc["imatinib"].to_numpy(), b.loc["imatinib"].to_numpy())


def test_reduce_embedding_is_fitted_on_training_rows():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(8, 5)), index=[f"d{i}" for i in range(8)])
    fit = [f"d{i}" for i in range(6)]
    reduced = sm.reduce_embedding(table, 3, fit)
    assert list(reduced.columns) == ["pc_1", "pc_2", "pc_3"]
    train = reduced.loc[fit].to_numpy(np.float64)
    assert np.allclose(train.mean(axis=0), 0.0, atol=1e-5)  # centred on the training rows
    cov = np.cov(train.T)
    assert np.allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-5)  # principal axes
    changed = table.copy()
    changed.loc["d7"] = 1e3
    again = sm.reduce_embedding(changed, 3, fit)
    assert np.array_equal(reduced.loc[fit].to_numpy(), again.loc[fit].to_numpy())


def test_read_smiles_table_detects_columns(tmp_path):
    path = tmp_path / "drugs.csv"
    path.write_text(
        ",drug,SMILES,target\n0,aspirin,CC(=O)Oc1ccccc1C(=O)O,COX\n1,control,CS(C)=O,\n"
        "2,control,CS(C)=O,Vehicle\n3,caffeine,Cn1cnc2c1c(=O)n(C)c(=O)n2C,ADORA\n"
    )
    series = sm.read_smiles_table(path)
    assert list(series.index) == ["aspirin", "control", "caffeine"]
    assert series["control"] == "CS(C)=O"
    table = sm.smiles_embedding(path, control="control")
    assert list(table.index) == ["aspirin", "caffeine"]

    path.write_text("compound,structure\naspirin,CC(=O)Oc1ccccc1C(=O)O\n")
    with pytest.raises(DataError, match="no column named like 'smiles'"):
        sm.read_smiles_table(path)
    assert sm.read_smiles_table(path, smiles_column="structure")["aspirin"].startswith("CC")

    path.write_text("drug,smile\na,CCO\na,CCN\n")
    with pytest.raises(DataError, match="'a' 2 different SMILES"):
        sm.read_smiles_table(path)
    with pytest.raises(DataError, match="does not exist"):
        sm.read_smiles_table(tmp_path / "nope.csv")


@pytest.mark.skipif(not SHARED.exists(), reason="shared drug metadata absent")
def test_sciplex_smiles_table():
    series = sm.read_smiles_table(SHARED / "trapnell_drugs_smiles.csv")
    assert len(series) == 188 and series.notna().all()
    with pytest.warns(UserWarning, match="NaN or infinite"):
        table = sm.smiles_embedding(series, "descriptors", n_components=10, control="control")
    assert table.shape == (187, 10)
    assert np.isfinite(table.to_numpy()).all()


def test_parse_smiles_spec(tmp_path):
    assert sm.parse_smiles_spec("drugs.csv") is None
    assert sm.parse_smiles_spec("smiles_table.csv") is None
    spec = sm.parse_smiles_spec("smiles:data/drugs.csv")
    assert spec == sm.SmilesSpec("data/drugs.csv")
    spec = sm.parse_smiles_spec("smiles,kind=both,pca=3,bits=64:C:/x/drugs.csv")
    assert (spec.path, spec.kind, spec.n_components, spec.n_bits) == (
        "C:/x/drugs.csv",
        "both",
        3,
        64,
    )
    with pytest.raises(ConfigError, match="unknown SMILES embedding option 'pcs'"):
        sm.parse_smiles_spec("smiles,pcs=3:drugs.csv")
    with pytest.raises(ConfigError, match="kind"):
        sm.parse_smiles_spec("smiles,kind=maccs:drugs.csv")
    with pytest.raises(ConfigError, match="must be smiles:PATH"):
        sm.parse_smiles_spec("smiles,pca:drugs.csv")
    path = tmp_path / "drugs.csv"
    pd.Series(DRUGS, name="smiles").rename_axis("drug").to_csv(path)
    table = sm.parse_smiles_spec(f"smiles,pca=2:{path}").load(fit_names=list(DRUGS)[:4])
    assert table.shape == (len(DRUGS), 2)
