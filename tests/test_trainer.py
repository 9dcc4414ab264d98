"""The one scaling-domain fallback: in the jitted graph, with its state in the TrainState."""

import jax
import jax.numpy as jnp
import numpy as np

from condmonge.conditions.encoding import build_encoder
from condmonge.config import LossConfig
from condmonge.data.prepare import build_pools, label_cells
from condmonge.models.networks import network_from_config
from condmonge.train.fit import init_state
from condmonge.train.trainer import (
    LOG_DOMAIN_AFTER,
    make_optimizer,
    make_train_step,
    make_value_and_grad,
)
from conftest import make_adata, tiny_config

UNDERFLOW = {"loss.fit_epsilon": 1e-4, "loss.monge_gap_epsilon": 1e-4}


def _setup(**overrides):
    cfg = tiny_config(**{"loss.sinkhorn_scaling": True, **overrides})
    data = make_adata(n_per_condition=30, d=4)
    cells = label_cells(data, cfg.data.spec)
    ids = list(range(len(cells.conditions)))
    pools, _ = build_pools(data.X, cells, ids, 0.1, 0)
    encoder = build_encoder(cells.conditions, [], cfg.data.spec)
    encoded = jax.tree.map(jnp.asarray, encoder.encode(cells.conditions))
    module = network_from_config(cfg, 4)
    optimizer = make_optimizer(cfg.train)
    state = init_state(module, optimizer, encoded, data.X, 0)
    traces = []
    step = make_train_step(
        module, optimizer, cfg.loss, cfg.train, on_trace=lambda: traces.append(1)
    )
    return step, state, jax.tree.map(jnp.asarray, pools), encoded, traces


def test_streak_switches_to_the_log_domain_for_good_in_the_graph():
    step, state, pools, encoded, traces = _setup(**UNDERFLOW)
    streaks, fallbacks, only = [], [], []
    for _ in range(LOG_DOMAIN_AFTER + 3):
        state, metrics = step(state, pools, encoded)
        streaks.append(int(state.log_domain_streak))
        fallbacks.append(bool(metrics["log_domain_fallback"]))
        only.append(bool(metrics["log_domain_only"]))
        assert np.isfinite(float(metrics["loss"]))
    n = LOG_DOMAIN_AFTER
    assert streaks == list(range(1, n + 1)) + [n] * 3  # frozen once switched
    assert all(fallbacks)
    assert only == [False] * n + [True] * 3
    assert len(traces) == 1  # one compiled step whatever branch runs


def test_sound_steps_keep_the_scaling_domain_and_the_step_is_pure():
    step, state, pools, encoded, _ = _setup()
    first, metrics = step(state, pools, encoded)
    again, _ = step(state, pools, encoded)  # same state in, same state out: no hidden state
    assert not bool(metrics["log_domain_fallback"]) and int(first.log_domain_streak) == 0
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_log_only_skips_the_scaling_attempt():
    def apply(variables, x, condition):
        return x + variables["params"]["shift"]

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(2, 32, 3)) + 1.0, jnp.float32)
    params = {"shift": jnp.full((3,), 0.2)}
    fast = make_value_and_grad(apply, LossConfig(sinkhorn_scaling=True))
    safe = make_value_and_grad(apply, LossConfig(sinkhorn_scaling=False))
    (loss_l, _), grads_l, fell_back = jax.jit(lambda *a: fast(*a, log_only=True))(
        params, None, x, y, None
    )
    (loss_s, _), grads_s, _ = jax.jit(safe)(params, None, x, y, None)
    assert bool(fell_back)
    np.testing.assert_allclose(loss_l, loss_s, rtol=1e-6)
    np.testing.assert_allclose(grads_l["shift"], grads_s["shift"], rtol=1e-6)


def test_jitted_initialisation_equals_flax_eager_init_bit_for_bit():
    # init_state runs module.init as one jitted program (not ~50 eager ones): same values.
    cfg = tiny_config(**{"model.shift_head": True})
    data = make_adata(n_per_condition=30, d=4, doses=[1.0, 10.0])
    cells = label_cells(data, cfg.data.spec)
    encoder = build_encoder(cells.conditions, [], cfg.data.spec)
    encoded = jax.tree.map(jnp.asarray, encoder.encode(cells.conditions))
    module = network_from_config(cfg, 4)
    state = init_state(module, make_optimizer(cfg.train), encoded, data.X, 3)
    rng = jax.random.split(jax.random.PRNGKey(3))[1]
    one = jax.tree.map(lambda a: a[0], encoded)
    eager = module.init(rng, jnp.zeros((2, 4)), one)["params"]
    leaves = jax.tree.leaves(state.params)
    assert len(leaves) == len(jax.tree.leaves(eager)) > 4
    assert any(float(jnp.abs(leaf).max()) > 0 for leaf in leaves)  # not all zero-initialised
    for a, b in zip(leaves, jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
