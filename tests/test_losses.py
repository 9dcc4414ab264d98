"""Analytic checks of the ott-jax based losses."""

import jax.numpy as jnp
import numpy as np
import pytest

from condmonge.config import LossConfig
from condmonge.models.losses import monge_gap, sinkhorn_divergence

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
