"""Analytic checks of the ott-jax based losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from condmonge.config import LossConfig
from condmonge.models.losses import make_conditional_loss, monge_gap, sinkhorn_divergence

PRECISE = LossConfig(
    monge_gap_epsilon=1e-3,
    fit_epsilon=1e-2,
    sinkhorn_max_iterations=5000,
    sinkhorn_threshold=1e-4,
    sinkhorn_momentum=None,
)


def _cloud(rng, n=256, d=10):
    return jnp.asarray(rng.normal(size=(n, d)), jnp.float32)


@pytest.mark.parametrize("d", [5, 10])
def test_monge_gap_of_spd_affine_map_is_near_zero_and_rotation_is_not(rng, d):
    x = _cloud(rng, d=d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    spd = (q * rng.uniform(0.5, 2.0, d)) @ q.T  # gradient of a convex quadratic
    spd_images = x @ spd + 1.0
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotation_images = x @ rotation
    disp_spd = float(jnp.mean(jnp.sum((spd_images - x) ** 2, 1)))
    disp_rot = float(jnp.mean(jnp.sum((rotation_images - x) ** 2, 1)))
    gap_spd = float(monge_gap(x, spd_images, PRECISE))
    gap_rot = float(monge_gap(x, rotation_images, PRECISE))
    # Relative to the displacement it regularises: ~0 for the optimal map, large for a rotation.
    assert gap_spd / disp_spd < 0.03
    assert gap_rot / disp_rot > 0.5
    assert gap_rot > 20 * gap_spd


def test_monge_gap_of_identity_and_translation_are_near_zero(rng):
    x = _cloud(rng)
    identity = float(monge_gap(x, x, PRECISE))
    translation = float(monge_gap(x, x + 3.0, PRECISE))  # displacement cost 90
    shuffle = float(monge_gap(x, x[::-1], PRECISE))  # same image set, far from optimal
    # Only the entropic bias remains (epsilon is relative to the mean cost).
    assert 0 <= identity < 0.2
    assert 0 <= translation < 0.01 * 90.0
    assert shuffle > 10.0


def test_sinkhorn_divergence_of_cloud_with_itself_is_zero(rng):
    x = _cloud(rng)
    assert abs(float(sinkhorn_divergence(x, x, LossConfig()))) < 1e-4


def test_sinkhorn_divergence_of_translation_is_squared_shift(rng):
    x = _cloud(rng)
    shift = jnp.asarray(rng.normal(size=10), jnp.float32)
    value = float(sinkhorn_divergence(x, x + shift, PRECISE))
    assert value == pytest.approx(float(jnp.sum(shift**2)), rel=1e-3)


def _affine_apply(variables, x, condition):
    p = variables["params"]
    return x @ p["w"] + condition @ p["v"] + variables["constants"]["shift"]


# The scaling domain is the CPU default; the log domain (GPU default, fallback) is the slow case.
@pytest.mark.parametrize("lse_mode", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_conditional_loss_and_gradient_under_jit_equal_eager(rng, lse_mode):
    k, n, d, c = 3, 24, 4, 2
    params = {
        "w": jnp.asarray(np.eye(d) + 0.1 * rng.normal(size=(d, d)), jnp.float32),
        "v": jnp.asarray(rng.normal(size=(c, d)), jnp.float32),
    }
    constants = {"shift": jnp.full((d,), 0.5, jnp.float32)}
    source = jnp.asarray(rng.normal(size=(k, n, d)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(k, n, d)) + 1.0, jnp.float32)
    condition = jnp.asarray(rng.normal(size=(k, c)), jnp.float32)
    loss = make_conditional_loss(_affine_apply, LossConfig(), lse_mode=lse_mode)
    args = (params, constants, source, target, condition)
    value_and_grad = jax.value_and_grad(loss, has_aux=True)
    (jit_value, jit_aux), jit_grad = jax.jit(value_and_grad)(*args)
    # Eager: op by op from Python (control-flow primitives such as the Sinkhorn loop still
    # compile their bodies), against one fused XLA program.
    (eager_value, eager_aux), eager_grad = value_and_grad(*args)
    assert float(eager_value) > 0.1  # a real loss, not a degenerate zero
    np.testing.assert_allclose(jit_value, eager_value, rtol=1e-4, atol=1e-6)
    for key in ("fit", "monge_gap", "per_condition"):
        np.testing.assert_allclose(jit_aux[key], eager_aux[key], rtol=1e-4, atol=1e-6)
    for name in params:
        assert float(jnp.abs(eager_grad[name]).max()) > 1e-3
        np.testing.assert_allclose(jit_grad[name], eager_grad[name], rtol=1e-3, atol=1e-5)
