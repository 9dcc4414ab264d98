"""Batch sampling: distinct cells per draw, the automatic batch size, with-replacement kept."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import condmonge as cm
from condmonge.data.prepare import CellPools
from condmonge.data.sampler import auto_cells_per_condition, distinct_offsets, sample_cells
from condmonge.models.prior import auto_prior
from conftest import make_adata, tiny_config

_offsets = jax.jit(distinct_offsets, static_argnums=2)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 5000), min_size=1, max_size=6),
    n=st.sampled_from([2, 8, 48, 256]),
    seed=st.integers(0, 2**31 - 1),
)
def test_a_draw_repeats_no_cell_it_need_not(counts, n, seed):
    """Each row: in range, distinct when the pool can fill it, else every cell n//m or +1 times."""
    offsets = np.asarray(_offsets(jax.random.PRNGKey(seed), jnp.asarray(counts), n))
    assert offsets.shape == (len(counts), n)
    for row, m in zip(offsets, counts, strict=True):
        assert row.min() >= 0 and row.max() < m
        uses = np.bincount(row, minlength=m)
        if n <= m:
            assert uses.max() == 1
        else:
            assert set(uses.tolist()) <= {n // m, -(-n // m)}


def test_every_cell_is_equally_likely_at_every_position():
    """Over 4,000 draws of 5 of 12 cells, each (position, cell) count is near 4000/12."""
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = jax.vmap(lambda k: _offsets(k, jnp.array([12]), 5)[0])(keys)
    counts = np.stack([np.bincount(col, minlength=12) for col in np.asarray(draws).T])
    expected = 4000 / 12
    # Binomial sd sqrt(4000 * 1/12 * 11/12) = 17.5; 5 sd for 60 cells.
    assert np.abs(counts - expected).max() < 5 * 17.5
    # The stride is drawn too: every unit modulo 12 (1, 5, 7, 11) steps from position 0 to 1.
    steps = (np.asarray(draws)[:, 1] - np.asarray(draws)[:, 0]) % 12
    assert set(steps.tolist()) == {1, 5, 7, 11}
    # With a prime pool every pair of distinct cells can follow each other.
    primes = np.asarray(jax.vmap(lambda k: _offsets(k, jnp.array([13]), 2)[0])(keys))
    assert set(((primes[:, 1] - primes[:, 0]) % 13).tolist()) == set(range(1, 13))


def test_auto_batch_size_is_a_quarter_percentile_in_multiples_of_eight():
    source = np.array([100, 100, 100, 100, 40, 1000])
    target = np.array([90, 95, 300, 61, 500, 70])
    # min per condition: 90 95 100 61 40 70 -> 25th percentile (lower) 61 -> 56.
    assert auto_cells_per_condition(source, target) == 56
    assert auto_cells_per_condition(np.array([10, 12]), np.array([9, 20])) == 32
    assert auto_cells_per_condition(np.array([10**5]), np.array([10**4])) == 256


def _pools(n_cells: list[int], d: int = 3) -> CellPools:
    """Targets of each condition numbered from 0, one shared control pool of 64 cells."""
    total = sum(n_cells)
    features = np.arange((total + 64) * d, dtype=np.float32).reshape(-1, d)
    starts = np.concatenate([[0], np.cumsum(n_cells)[:-1]]).astype(np.int32)
    return CellPools(
        features,
        np.arange(total, dtype=np.int32),
        starts,
        np.asarray(n_cells, np.int32),
        np.arange(total, total + 64, dtype=np.int32),
        np.zeros(len(n_cells), np.int32),
        np.full(len(n_cells), 64, np.int32),
    )


def test_sample_cells_draws_distinct_rows_of_the_right_condition():
    pools = jax.tree.map(jnp.asarray, _pools([10, 40, 5]))
    batch = sample_cells(jax.random.PRNGKey(3), pools, jnp.zeros(3), jnp.array([1, 0, 2]), 8)
    rows = np.asarray(batch.target[..., 0]) / 3  # the row of each drawn cell
    assert np.all((rows[0] >= 10) & (rows[0] < 50)) and len(set(rows[0])) == 8
    assert np.all(rows[1] < 10) and len(set(rows[1])) == 8
    assert set(rows[2]) == set(range(50, 55))  # 5 cells fill 8 places: all used, none thrice
    sources = np.asarray(batch.source[..., 0]) / 3
    assert all(len(set(r)) == 8 for r in sources) and sources.min() >= 55


def test_with_replacement_is_still_available():
    """``distinct=False`` keeps the uniform draw: 200 of 10 cells repeat, by construction."""
    pools = jax.tree.map(jnp.asarray, _pools([10]))
    batch = sample_cells(jax.random.PRNGKey(0), pools, jnp.zeros(1), jnp.array([0]), 200, False)
    uses = np.bincount((np.asarray(batch.target[0, :, 0]) / 3).astype(int), minlength=10)
    assert uses.sum() == 200 and uses.max() > uses.min() + 2


# ----------------------------------------------------------------- resolved at fit time


def test_auto_prior_needs_a_drug_question_and_a_ridge_that_does_not_interpolate():
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(10, 3)) @ rng.normal(size=(3, 7))  # K = 10, rank 3
    assert auto_prior(low_rank, "perturbation") == "linear"
    assert auto_prior(low_rank, "dose") == "linear"
    for kind in ("combination", "cell_type", "covariate", "random", "cells"):
        assert auto_prior(low_rank, kind) == "none"
    assert auto_prior(low_rank[:5], "perturbation") == "linear"  # 5 > 3 + 1
    assert auto_prior(low_rank[:4], "perturbation") == "none"  # 4 = 3 + 1: interpolated
    assert auto_prior(np.eye(6), "perturbation") == "none"  # one-hot singles: rank K - 1


def test_fit_records_what_auto_chose():
    """A dose-out fit: the ridge prior (K = 8 > rank 4 + 1) and 40-cell draws, in its config."""
    doses = [1.0, 3.0, 10.0, 30.0, 100.0, 300.0]
    adata = make_adata(n_per_condition=40, d=4, conditions=("A", "B"), doses=doses)
    config = tiny_config(**{
        "data.dose_key": "dose", "model.prior": "auto",
        "train.cells_per_condition": "auto", "train.cell_sampling": "distinct",
    })  # fmt: skip
    model = cm.ConditionalMonge(config).fit(adata, holdout=["A|dose=30", "B|dose=30"])
    assert model.trained.validation["kind"] == "dose"
    assert model.config.model.prior == "linear"
    assert model.config.train.cells_per_condition == 40
    assert model.trained.constants["prior_coef"].shape[-1] == 4
    prediction = model.predict(adata[adata.obs["condition"] == "control"], "A", dose=30.0)
    assert np.isfinite(np.asarray(prediction.X)).all()
