import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("rdkit")

from condmonge.conditions import (  # noqa: E402
    effect_embedding,
    infer_effect_embedding,
    smiles_embedding,
)
from condmonge.datasets import sciplex_like  # noqa: E402
from condmonge.datasets.sciplex_like import EXAMPLE_SMILES  # noqa: E402
from condmonge.errors import ConfigError, DataError  # noqa: E402

SEEN = sorted(EXAMPLE_SMILES)[:7]
UNSEEN = sorted(EXAMPLE_SMILES)[7:]


@pytest.fixture(scope="module")
def task():
    return sciplex_like(doses=(10, 1000), cell_types=("A", "B"), n_cells=25, n_features=8, seed=3)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDMONGE_CACHE", str(tmp_path / "cache"))


def _pipeline(adata, method="mean_shift", infer="knn"):
    effect = effect_embedding(
        adata,
        "condition",
        "control",
        train_conditions=SEEN,
        cell_type_key="cell_type",
        dose_key="dose",
        n_components=4,
        method=method,
        max_cells=30,
    )
    structure = smiles_embedding(
        pd.Series(EXAMPLE_SMILES), "descriptors", n_components=5, fit_names=SEEN
    )
    return effect, infer_effect_embedding(effect, structure, method=infer, k=3)


def _held_out(adata):
    return ~adata.obs["condition"].astype(str).isin([*SEEN, "control"]).to_numpy()


@pytest.mark.parametrize(
    ("method", "infer"),
    [("mean_shift", "knn"), ("mean_shift", "ridge"), ("energy_mds", "knn"), ("ot_mds", "ridge")],
)
def test_held_out_cells_never_influence_the_embedding(task, method, infer):
    effect, full = _pipeline(task.adata, method, infer)
    assert list(effect.index) == SEEN
    assert list(full.index) == SEEN + UNSEEN
    held = _held_out(task.adata)
    assert held.sum() > 0

    rng = np.random.default_rng(0)
    variants = []
    nan = task.adata.copy()  # NaN would propagate (and raise) if any held-out cell were read
    nan.X[held] = np.nan
    variants.append(nan)
    wild = task.adata.copy()
    wild.X[held] = rng.normal(scale=1e3, size=(held.sum(), wild.n_vars)).astype(np.float32)
    variants.append(wild)
    shuffled = task.adata.copy()
    rows = np.flatnonzero(held)
    shuffled.X[rows] = shuffled.X[rng.permutation(rows)] * -5.0
    variants.append(shuffled)
    variants.append(task.adata[~held].copy())  # dropped altogether
    sparse = task.adata.copy()
    sparse.X[held] = 7.0
    sparse.X = sp.csr_matrix(sparse.X)
    variants.append(sparse)

    for adata in variants:
        effect2, full2 = _pipeline(adata, method, infer)
        assert list(full2.index) == list(full.index)
        assert np.array_equal(effect.to_numpy(), effect2.to_numpy())
        assert np.array_equal(full.to_numpy(), full2.to_numpy())  # inferred rows included


def test_training_cells_do_change_the_embedding(task):
    effect, _ = _pipeline(task.adata)
    changed = task.adata.copy()
    rows = np.flatnonzero(changed.obs["condition"].astype(str) == SEEN[0])
    changed.X[rows] += 3.0
    effect2, _ = _pipeline(changed)
    assert not np.array_equal(effect.to_numpy(), effect2.to_numpy())


def test_mean_shift_recovers_response_geometry(task):
    # Signatures are linear in the shifts: with as many components as features the embedding
    # preserves every pairwise distance between the drugs' mean shifts.
    effect = effect_embedding(
        task.adata,
        "condition",
        "control",
        train_conditions=SEEN,
        cell_type_key="cell_type",
        dose_key="dose",
        n_components=6,
    )
    assert effect.dtypes.eq(np.float32).all()
    assert list(effect.columns) == [f"effect_{i}" for i in range(1, 7)]
    x = np.asarray(task.adata.X, np.float64)
    obs = task.adata.obs.astype(str)
    sig = []
    for drug in SEEN:
        shifts = []
        for ct in ("A", "B"):
            ctrl = x[((obs.condition == "control") & (obs.cell_type == ct)).to_numpy()].mean(0)
            for dose in ("10.0", "1000.0"):
                mask = (obs.condition == drug) & (obs.cell_type == ct) & (obs.dose == dose)
                shifts.append(x[mask.to_numpy()].mean(0) - ctrl)
        sig.append(np.mean(shifts, 0))
    sig = np.asarray(sig)
    d_sig = np.linalg.norm(sig[:, None] - sig[None], axis=-1)
    emb = effect.to_numpy(np.float64)
    d_emb = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    assert np.allclose(d_sig, d_emb, rtol=1e-4, atol=1e-4)


def test_infer_effect_embedding_knn_and_ridge():
    rng = np.random.default_rng(0)
    seen = [f"s{i}" for i in range(12)]
    structure = pd.DataFrame(rng.normal(size=(14, 6)), index=[*seen, "new0", "new1"])
    structure.loc["new0"] = structure.loc["s3"]  # same structure as a seen drug
    weights = rng.normal(size=(6, 3))
    effect = pd.DataFrame(structure.loc[seen].to_numpy() @ weights, index=seen)
    knn = infer_effect_embedding(effect, structure, "knn", k=3)
    assert list(knn.index) == [*seen, "new0", "new1"]
    assert np.array_equal(knn.loc[seen].to_numpy(), effect.to_numpy(np.float32))
    assert np.allclose(knn.loc["new0"], effect.loc["s3"], atol=1e-4)  # nearest dominates
    ridge = infer_effect_embedding(effect, structure, "ridge", alpha=1e-6)
    truth = structure.loc[["new0", "new1"]].to_numpy() @ weights
    assert np.allclose(ridge.loc[["new0", "new1"]].to_numpy(), truth, atol=1e-2)
    assert np.isfinite(ridge.to_numpy()).all()
    with pytest.raises(DataError, match="1 seen drugs have no structure row: 's0'"):
        infer_effect_embedding(effect, structure.drop(index="s0"))
    with pytest.raises(ConfigError, match="method"):
        infer_effect_embedding(effect, structure, "svm")


def test_effect_embedding_errors(task):
    kwargs = dict(cell_type_key="cell_type", dose_key="dose")
    with pytest.raises(DataError, match="1 training conditions have no cells: 'asprin'"):
        effect_embedding(task.adata, "condition", "control", train_conditions=["asprin"], **kwargs)
    with pytest.raises(ConfigError, match="n_components"):
        effect_embedding(
            task.adata, "condition", "control", train_conditions=SEEN[:3], n_components=5, **kwargs
        )
    with pytest.raises(DataError, match="no control cells"):
        effect_embedding(task.adata, "condition", "DMSO", train_conditions=SEEN, **kwargs)
    with pytest.raises(DataError, match="obs has no condition column"):
        effect_embedding(task.adata, "drug", "control", train_conditions=SEEN, **kwargs)
    no_b_controls = task.adata[
        ~((task.adata.obs.condition == "control") & (task.adata.obs.cell_type == "B")).to_numpy()
    ]
    with pytest.raises(DataError, match="type 'B' but that type has no control cells"):
        effect_embedding(
            no_b_controls, "condition", "control", train_conditions=SEEN, n_components=4, **kwargs
        )


def test_train_cells_mask_and_missing_skip(task):
    kwargs = dict(cell_type_key="cell_type", dose_key="dose", n_components=3)
    obs = task.adata.obs
    # Hold out one drug's top dose only: those cells must not be read.
    held = ((obs.condition == SEEN[0]) & (obs.dose == 1000)).to_numpy()
    mask = ~held
    a = effect_embedding(
        task.adata, "condition", "control", train_conditions=SEEN, train_cells=mask, **kwargs
    )
    changed = task.adata.copy()
    changed.X[held] = np.nan
    b = effect_embedding(
        changed, "condition", "control", train_conditions=SEEN, train_cells=mask, **kwargs
    )
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    full = effect_embedding(task.adata, "condition", "control", train_conditions=SEEN, **kwargs)
    assert not np.array_equal(a.to_numpy(), full.to_numpy())
    skipped = effect_embedding(
        task.adata,
        "condition",
        "control",
        train_conditions=[*SEEN, "only_in_combos"],
        missing="skip",
        **kwargs,
    )
    assert list(skipped.index) == SEEN
    with pytest.raises(DataError, match="boolean mask"):
        effect_embedding(
            task.adata, "condition", "control", train_conditions=SEEN, train_cells=[1, 0], **kwargs
        )
