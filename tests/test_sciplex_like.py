import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("rdkit")

from condmonge.datasets import SciplexLikeTask, l2_uvp, sciplex_like  # noqa: E402
from condmonge.errors import ConfigError, DataError, UnknownConditionError  # noqa: E402

SHARED = Path(__file__).parents[2] / "shared" / "data" / "drug_metadata"

SMILES = pd.Series(
    {
        "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
        "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
        "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
        "control": "CS(C)=O",  # the vehicle: dropped
    }
)


def _small(seed=0, **kwargs):
    args = dict(doses=(10, 1000), cell_types=("A549", "K562"), n_cells=20, n_features=8)
    return sciplex_like(SMILES, seed=seed, **{**args, **kwargs})


def test_shapes_and_obs():
    task = _small()
    assert isinstance(task, SciplexLikeTask)
    assert task.drugs == ["aspirin", "caffeine", "ibuprofen"]
    n_controls = 20 * 2
    assert task.adata.shape == (2 * (n_controls + 3 * 2 * 20), 8)
    obs = task.adata.obs
    assert list(obs.columns) == ["condition", "dose", "cell_type"]
    assert list(obs["condition"].cat.categories) == ["control", *task.drugs]
    assert set(obs.loc[obs["condition"] == "control", "dose"]) == {0.0}
    counts = obs.groupby(["condition", "dose", "cell_type"], observed=True).size()
    assert set(counts.drop(index="control", level=0)) == {20}
    assert task.hidden_embedding.shape == (3, 6)
    assert np.allclose(task.hidden_embedding.std(axis=0, ddof=0), 1.0)
    assert task.adata.X.dtype == np.float32 and np.isfinite(task.adata.X).all()


def test_deterministic_per_seed():
    a, b, c = _small(seed=1), _small(seed=1), _small(seed=2)
    assert np.array_equal(a.adata.X, b.adata.X)
    pd.testing.assert_frame_equal(a.adata.obs, b.adata.obs)
    pd.testing.assert_frame_equal(a.hidden_embedding, b.hidden_embedding)
    assert not np.array_equal(a.adata.X, c.adata.X)
    x = a.sample_controls("K562", 50, seed=4)
    assert np.array_equal(
        a.true_map("caffeine", 100, "K562", x), b.true_map("caffeine", 100, "K562", x)
    )


def test_dose_zero_and_control_are_identity():
    task = _small()
    x = task.sample_controls("A549", 64, seed=0)
    for drug in task.drugs:
        assert np.array_equal(task.true_map(drug, 0.0, "A549", x), x.astype(np.float64))
    assert np.array_equal(task.true_map("control", 1000, "K562", x), x.astype(np.float64))
    moved = task.true_map("aspirin", 1000, "A549", x)
    assert not np.allclose(moved, x)


def test_maps_are_monotone_gradients_and_match_the_data():
    task = _small(n_cells=400)
    rng = np.random.default_rng(0)
    x = task.sample_controls("K562", 300, seed=1).astype(np.float64)
    y = x + rng.normal(scale=0.5, size=x.shape)
    tx, ty = (task.true_map("ibuprofen", 1000, "K562", v) for v in (x, y))
    assert (np.sum((tx - ty) * (x - y), axis=1) >= 0).all()  # gradient of a convex function
    # The treated block is the push-forward of fresh controls: its mean matches the map's.
    obs = task.adata.obs
    block = task.adata.X[
        ((obs.condition == "ibuprofen") & (obs.dose == 1000) & (obs.cell_type == "K562")).to_numpy()
    ]
    pushed = task.true_map("ibuprofen", 1000, "K562", task.sample_controls("K562", 20000, 5))
    spread = np.sqrt(pushed.var(axis=0).sum())
    assert np.linalg.norm(block.mean(axis=0) - pushed.mean(axis=0)) < 0.25 * spread
    assert l2_uvp(x, tx) > 1.0  # a real effect at the top dose
    # Cell types differ: same drug and dose, different response.
    xa = task.sample_controls("A549", 100, seed=2)
    d_a = task.true_map("ibuprofen", 1000, "A549", xa) - xa
    d_k = task.true_map("ibuprofen", 1000, "K562", xa) - xa
    assert not np.allclose(d_a, d_k)


def test_errors():
    task = _small()
    with pytest.raises(UnknownConditionError, match="did you mean 'aspirin'"):
        task.true_map("asprin", 10, "A549", np.zeros((2, 8)))
    with pytest.raises(UnknownConditionError, match="cell type 'HeLa'"):
        task.true_map("aspirin", 10, "HeLa", np.zeros((2, 8)))
    with pytest.raises(ConfigError, match="dose"):
        task.true_map("aspirin", -1, "A549", np.zeros((2, 8)))
    with pytest.raises(DataError, match="'bad'"):
        sciplex_like(pd.Series({"aspirin": "CCO", "bad": "C1CC("}))
    with pytest.raises(ConfigError, match="n_drugs"):
        sciplex_like(SMILES, n_drugs=10)


def test_default_drugs():
    task = sciplex_like(n_drugs=4, doses=(100,), cell_types=("A549",), n_cells=5, n_features=4)
    assert len(task.drugs) == 4 and task.adata.n_obs == 5 + 4 * 5


@pytest.mark.skipif(not SHARED.exists(), reason="shared drug metadata absent")
def test_full_size_is_fast():
    from condmonge.conditions.smiles import read_smiles_table

    smiles = read_smiles_table(SHARED / "trapnell_drugs_smiles.csv")
    start = time.perf_counter()
    task = sciplex_like(smiles)
    elapsed = time.perf_counter() - start
    assert len(task.drugs) == 187  # 188 names, the vehicle ('control') dropped
    assert task.adata.n_obs == 3 * (400 + 187 * 4 * 100)
    assert elapsed < 20
