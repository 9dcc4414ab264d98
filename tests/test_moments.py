"""The fitted map keeps the spread of the treated cells (per-feature variance), not only means."""

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import condmonge as cm
from condmonge.config import LossConfig
from condmonge.models.losses import sinkhorn_divergence, split_divergence

FACTORS = (0.6, 1.5)


def _anndata(x, obs):
    return ad.AnnData(x.astype(np.float32), obs=obs)


def _argmin_scale(divergence, rng, d=20, n=256):
    sd = rng.uniform(0.5, 1.5, d)
    x = jnp.asarray(sd * rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(1.5 * sd * rng.normal(size=(n, d)), jnp.float32)
    scales = np.linspace(0.9, 2.1, 13)
    value = jax.jit(lambda x, y: divergence(x, y, LossConfig()))  # one compile for the scan
    values = [float(value(a * x, y)) for a in scales]
    return scales[int(np.argmin(values))]


def test_split_divergence_is_smallest_at_the_true_spread_and_self_debiased_is_not(rng):
    # y is x's law scaled x1.5 (d = 20, 256 cells): the split-half divergence is minimal near
    # 1.5, the Sinkhorn divergence of the batch near 1.1-1.2 (it rewards a shrunken cloud).
    assert abs(_argmin_scale(split_divergence, rng) - 1.5) <= 0.1
    assert _argmin_scale(sinkhorn_divergence, np.random.default_rng(1)) <= 1.3


def test_split_divergence_of_independent_samples_of_one_law_is_near_zero(rng):
    x = jnp.asarray(rng.normal(size=(256, 10)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(256, 10)), jnp.float32)
    shifted = float(split_divergence(x, y + 1.0, LossConfig()))
    same = float(split_divergence(x, y, LossConfig()))
    assert abs(same) < 0.05 * shifted
    assert shifted == pytest.approx(10.0, rel=0.2)  # |shift|^2 = 10


def _fit(adata, steps, loss=None, **train):
    options = {"train.steps": steps, "train.progress": False, "train.patience": None,
               "train.learning_rate": 3e-3, "train.cells_per_condition": 128,
               "train.conditions_per_step": 2, "data.modality": "generic",
               "model.hidden_dim": 64, "model.n_layers": 2}  # fmt: skip
    options |= {f"train.{k}": v for k, v in train.items()} | (loss or {})
    return cm.ConditionalMonge(cm.Config().updated(options)).fit(adata, "condition", "control")


@pytest.mark.slow
def test_trained_map_variance_is_closer_to_truth_than_identity_and_mean_shift(rng):
    adata = _anndata(*_blocks(rng))
    model = _fit(adata, 300)
    is_control = (adata.obs["condition"] == "control").to_numpy()
    x = np.asarray(adata.X[is_control])
    pred = model.predict(adata[is_control], [f"s{i}" for i in range(len(FACTORS))])
    for i in range(len(FACTORS)):
        true = np.asarray(adata.X[(adata.obs["condition"] == f"s{i}").to_numpy()])
        mapped = np.asarray(pred.X[i * len(x) : (i + 1) * len(x)])
        # mean shift has the controls' variance, like identity
        err_model = np.mean(np.abs(mapped.var(0) - true.var(0)))
        err_identity = np.mean(np.abs(x.var(0) - true.var(0)))
        assert err_model < 0.85 * err_identity, (FACTORS[i], err_model, err_identity)


def _blocks(rng, d=8, n=300):
    mean, sd = rng.normal(0, 1, d), rng.uniform(0.5, 1.5, d)
    blocks, labels = [mean + sd * rng.normal(size=(n, d))], ["control"] * n
    for i, factor in enumerate(FACTORS):
        x = mean + sd * rng.normal(size=(n, d))
        blocks.append(mean + rng.normal(0, 0.7, d) + factor * (x - mean))
        labels += [f"s{i}"] * n
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    return np.vstack(blocks), obs


@pytest.mark.slow
def test_input_noise_is_deterministic_per_seed_and_changes_training(rng):
    adata = _anndata(*_blocks(rng, n=100))
    # A small batch, log-domain solves only (one loss branch to compile): any size shows it.
    log_domain = {"loss.sinkhorn_scaling": False}
    a = _fit(adata, 15, log_domain, cells_per_condition=32, input_noise=0.2)
    b = _fit(adata, 15, log_domain, cells_per_condition=32, input_noise=0.2)
    c = _fit(adata, 15, log_domain, cells_per_condition=32)
    leaves = [jax.tree.leaves(m.params) for m in (a, b, c)]
    assert all(np.array_equal(p, q) for p, q in zip(leaves[0], leaves[1], strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(leaves[0], leaves[2], strict=True))
