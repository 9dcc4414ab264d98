"""The semi-synthetic 4i-shaped generator: real drugs, imaging-like features, known maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kurtosis

from condmonge.datasets import FouriLikeTask, fouri_like, fouri_smiles, l2_uvp
from condmonge.datasets.fouri_like import FEATURES
from condmonge.errors import ConfigError, UnknownConditionError


@pytest.fixture(scope="module")
def task() -> FouriLikeTask:
    return fouri_like(n_drugs=6, n_cells=400, seed=0)


def test_real_4i_drugs_are_shipped():
    smiles = fouri_smiles()
    assert len(smiles) == 31
    assert {"imatinib", "cisplatin", "dabrafenib", "trametinib"} <= set(smiles.index)


def test_shape_and_obs(task):
    a = task.adata
    assert a.shape == (6 * 3 * 400 + 2 * 400 * 3, 48) and list(a.var_names) == list(FEATURES)
    assert task.drugs == list(fouri_smiles().index[:6])
    assert sorted(a.obs["time"].unique()) == [6.0, 24.0, 48.0]
    controls = a.obs["drug"] == "control"
    assert sorted(a.obs.loc[controls, "time"].unique()) == [6.0, 24.0, 48.0]
    assert fouri_like(n_drugs=3, n_cells=5, seed=4).adata.X.sum() == pytest.approx(
        fouri_like(n_drugs=3, n_cells=5, seed=4).adata.X.sum()
    )


def test_features_look_like_scaled_imaging(task):
    x = task.sample_controls(20_000, seed=1).astype(np.float64)
    assert 0.35 < (x < 0).mean() < 0.65  # negative after scaling
    assert np.median(kurtosis(x, axis=0)) > 1.0  # heavy tails (Gaussian: 0)
    corr = np.corrcoef(x.T)
    np.fill_diagonal(corr, 0.0)
    assert (np.abs(corr) > 0.3).sum(axis=1).min() >= 4  # every feature sits in a block
    ki67 = x[:, FEATURES.index("Ki67_nuc")]
    z = (ki67 - ki67.mean()) / ki67.std()
    # Bimodal: a mixture of two well-separated states has a low kurtosis (Gaussian: 0).
    assert kurtosis(z) < kurtosis(x[:, FEATURES.index("pERK_nuc")])
    sds = x.std(axis=0)
    assert sds.max() / sds.min() > 4  # features on different scales


def test_known_maps_saturate_in_time_and_are_identity_at_zero(task):
    x = task.sample_controls(2000, seed=2)
    drug = task.drugs[0]
    np.testing.assert_array_equal(task.true_map(drug, 0.0, x), x.astype(np.float64))
    uvp = [l2_uvp(x, task.true_map(drug, t, x)) for t in (6.0, 24.0, 48.0)]
    assert uvp[0] < uvp[1] < uvp[2]  # the identity explains less and less
    assert task.time_scale(48) - task.time_scale(24) < task.time_scale(24) - task.time_scale(6)
    # The treated cells are the map's image of fresh controls: their means agree.
    obs = task.adata.obs
    block = task.adata.X[((obs["drug"] == drug) & (obs["time"] == 24.0)).to_numpy()]
    mapped = task.true_map(drug, 24.0, task.sample_controls(20_000, seed=3))
    err = np.abs(block.mean(0) - mapped.mean(0)) / mapped.std(0)
    assert err.max() < 0.25


def test_bad_arguments(task):
    with pytest.raises(UnknownConditionError, match="not in this task"):
        task.true_map("aspirin", 6.0, np.zeros((1, 48)))
    with pytest.raises(ConfigError, match="times"):
        fouri_like(n_drugs=2, n_cells=5, times=(0.0, 6.0))
    with pytest.raises(ConfigError, match="n_drugs"):
        fouri_like(n_drugs=99)
