r"""Distribution and mean metrics between predicted and observed cell populations.

Every function takes ``x [n, d]`` (predicted) and ``y [m, d]`` (observed) and returns a float.
Names say which variant is computed; see ``../shared/README.md`` for why variants matter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import pointcloud
from ott.tools import sinkhorn_divergence as sd

__all__ = [
    "MMD_GAMMAS",
    "energy_distance",
    "mean_delta_r2",
    "mean_r2_pearson",
    "mmd_rbf",
    "sinkhorn_divergence",
    "top_de_features",
]

MMD_GAMMAS = (2.0, 1.0, 0.5, 0.1, 0.01, 0.005)


@jax.jit
def _sq_dists(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    d = jnp.sum(x**2, 1)[:, None] + jnp.sum(y**2, 1)[None, :] - 2.0 * x @ y.T
    return jnp.maximum(d, 0.0)


def mmd_rbf(x: np.ndarray, y: np.ndarray, gammas: tuple[float, ...] = MMD_GAMMAS) -> float:
    r"""Biased MMD² with RBF kernels :math:`k(a,b)=e^{-\gamma\|a-b\|^2}`, averaged over ``gammas``.

    .. math::
        \mathrm{MMD}^2 = \overline{k(x,x')} + \overline{k(y,y')} - 2\,\overline{k(x,y)}
    """
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    dxx, dyy, dxy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)
    g = jnp.asarray(gammas)[:, None, None]
    value = (
        jnp.exp(-g * dxx).mean((1, 2))
        + jnp.exp(-g * dyy).mean((1, 2))
        - 2 * jnp.exp(-g * dxy).mean((1, 2))
    )
    return float(jnp.mean(value))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    r"""Energy distance with Euclidean (not squared) inner distances.

    .. math::
        E = 2\,\mathbb{E}\|X - Y\| - \mathbb{E}\|X - X'\| - \mathbb{E}\|Y - Y'\|
    """
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    dist = lambda a, b: jnp.sqrt(_sq_dists(a, b) + 1e-12).mean()  # noqa: E731
    return float(2 * dist(x, y) - dist(x, x) - dist(y, y))


def sinkhorn_divergence(x: np.ndarray, y: np.ndarray, epsilon: float = 0.1) -> float:
    r"""Sinkhorn divergence with squared-Euclidean cost and absolute :math:`\varepsilon`.

    ``epsilon = 0.1`` is the reference's evaluation setting.
    """
    value, _ = sd.sinkhorn_divergence(
        pointcloud.PointCloud,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.float32),
        epsilon=epsilon,
        solve_kwargs={"max_iterations": 2000},
    )
    return float(value)


def top_de_features(truth: np.ndarray, control: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` features whose observed mean moves most from control (|Δ mean|)."""
    delta = np.abs(truth.mean(0) - control.mean(0))
    return np.argsort(-delta, kind="stable")[:k]


def mean_delta_r2(
    pred: np.ndarray, truth: np.ndarray, control: np.ndarray, features: np.ndarray | None = None
) -> float:
    r"""Coefficient of determination of mean *deltas* vs control (the honest variant).

    .. math::
        R^2 = 1 - \frac{\sum_g (\hat\delta_g - \delta_g)^2}{\sum_g (\delta_g - \bar\delta)^2},
        \quad \delta_g = \bar y_g - \bar x^{ctrl}_g

    over the features ``features`` (all when ``None``). 0 for predicting the average delta,
    negative when worse.
    """
    sel = slice(None) if features is None else features
    true_delta = (truth.mean(0) - control.mean(0))[sel]
    pred_delta = (pred.mean(0) - control.mean(0))[sel]
    ss_res = np.sum((pred_delta - true_delta) ** 2)
    ss_tot = np.sum((true_delta - true_delta.mean()) ** 2)
    return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def mean_r2_pearson(
    pred: np.ndarray, truth: np.ndarray, features: np.ndarray | None = None
) -> float:
    """Squared Pearson correlation of mean expression (the cmonge paper's "R²")."""
    sel = slice(None) if features is None else features
    a, b = pred.mean(0)[sel], truth.mean(0)[sel]
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1] ** 2)
