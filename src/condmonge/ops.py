r"""Shared maths of the lowest layer: distances between point clouds, Sinkhorn, ridge.

Everything here is pure and imports nothing from condmonge, so every layer (conditions,
evaluate, baselines) can use it without looking up. The distance functions take numpy or JAX
arrays and compute in the same library and precision (numpy float64 stays float64; JAX
arrays, traced or not, go through ``jax.numpy``); the Sinkhorn functions are JAX (ott-jax).
Weights ``a [n]``, ``b [m]`` default to uniform, and zero weights mark padding.
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import pointcloud
from ott.tools import sinkhorn_divergence as sd

__all__ = [
    "energy_distance",
    "mean_distance",
    "normalised_weights",
    "ridge",
    "ridge_dual",
    "sinkhorn_terms",
    "sq_distances",
]

#: Added under square roots so that their gradient stays finite at 0.
EPS = 1e-12


def _xp(*arrays: object) -> ModuleType:
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def normalised_weights(w: np.ndarray | jax.Array | None, n: int, xp: ModuleType = jnp):
    """Weights ``[n]`` that sum to 1: uniform when ``w`` is ``None``.

    Args:
      w: ``[n]`` non-negative weights or ``None``.
      n: number of points.
      xp: ``numpy`` (float64) or ``jax.numpy`` (float32), for the uniform case.
    """
    if w is None:
        return xp.full((n,), 1.0 / n, xp.float64 if xp is np else jnp.float32)
    w = xp.asarray(w, xp.float64 if xp is np else jnp.float32)
    return w / xp.sum(w)


def sq_distances(x, y):
    r"""Squared Euclidean distances :math:`\|x_i - y_j\|^2`, clipped at 0.

    Args:
      x: ``[n, d]`` points; y: ``[m, d]`` points (numpy or JAX).

    Returns:
      ``[n, m]`` distances, in the array library of the inputs.
    """
    xp = _xp(x, y)
    d = xp.sum(x * x, 1)[:, None] + xp.sum(y * y, 1)[None, :] - 2.0 * x @ y.T
    return xp.maximum(d, 0.0)


def mean_distance(x, y, a=None, b=None, squared: bool = False):
    r"""Weighted mean distance :math:`\sum_{ij} a_i b_j \|x_i - y_j\|` (or squared).

    Args:
      x: ``[n, d]``; y: ``[m, d]``; a: ``[n]``; b: ``[m]`` (weights; ``None`` = uniform).
      squared: average squared distances instead.

    Returns:
      A scalar in the array library of the inputs.
    """
    xp = _xp(x, y, a, b)
    a, b = normalised_weights(a, x.shape[0], xp), normalised_weights(b, y.shape[0], xp)
    d2 = sq_distances(x, y)
    return a @ (d2 if squared else xp.sqrt(d2 + EPS)) @ b


def energy_distance(x, y, a=None, b=None, squared: bool = False):
    r"""Energy distance with Euclidean (default) or squared-Euclidean inner distances.

    .. math:: E = 2\,\mathbb{E}\|X - Y\| - \mathbb{E}\|X - X'\| - \mathbb{E}\|Y - Y'\|

    (V-statistic, :math:`\ge 0`, 0 for identical samples). With ``squared=True`` every distance
    is squared and the formula collapses exactly to :math:`2\|\mu_X - \mu_Y\|^2`, a mean-only
    statistic: that is why the Euclidean form is the one reported.

    Args:
      x: ``[n, d]``; y: ``[m, d]``; a: ``[n]``; b: ``[m]`` (weights; ``None`` = uniform).
      squared: squared inner distances.

    Returns:
      A scalar in the array library of the inputs.
    """
    return (
        2 * mean_distance(x, y, a, b, squared)
        - mean_distance(x, x, a, a, squared)
        - mean_distance(y, y, b, b, squared)
    )


def sinkhorn_terms(x, y, a=None, b=None, epsilon: float = 0.1, max_iterations: int = 1000):
    r"""Debiased Sinkhorn divergence and the transport cost of its cross plan, one ott-jax solve.

    .. math::
        S_\varepsilon = \mathrm{OT}_\varepsilon(\alpha,\beta)
            - \tfrac12\mathrm{OT}_\varepsilon(\alpha,\alpha)
            - \tfrac12\mathrm{OT}_\varepsilon(\beta,\beta),
        \qquad \langle P_\varepsilon, C\rangle

    for the squared-Euclidean cost :math:`C` at **absolute** ``epsilon``.

    Args:
      x: ``[n, d]``; y: ``[m, d]``; a: ``[n]``; b: ``[m]`` (weights; ``None`` = uniform).
      epsilon: entropic regularisation (absolute).
      max_iterations: Sinkhorn iterations at most (threshold ``1e-3``).

    Returns:
      ``(divergence, cost)``, two JAX scalars.
    """
    value, out = sd.sinkhorn_divergence(
        pointcloud.PointCloud,
        x,
        y,
        a=normalised_weights(a, x.shape[0]),
        b=normalised_weights(b, y.shape[0]),
        epsilon=epsilon,
        solve_kwargs={"max_iterations": max_iterations, "threshold": 1e-3},
    )
    geom = out.geoms[0]
    plan = geom.transport_from_potentials(*out.potentials[0])
    return value, jnp.sum(plan * geom.cost_matrix)


def ridge(features: np.ndarray, targets: np.ndarray, penalty: float) -> np.ndarray:
    r"""Ridge coefficients :math:`W = (A^\top A + \lambda I)^{-1} A^\top Y`, ``[f, t]``.

    Solved in the smaller of the ``[f, f]`` (primal) and ``[m, m]`` (dual,
    :func:`ridge_dual`) spaces. Centre both sides first for an intercept.

    Args:
      features: ``[m, f]`` rows :math:`A`.
      targets: ``[m, t]`` :math:`Y`.
      penalty: :math:`\lambda > 0`.
    """
    if features.shape[0] <= features.shape[1]:
        return ridge_dual(features, targets, penalty)
    gram = features.T @ features + penalty * np.eye(features.shape[1])
    return np.linalg.solve(gram, features.T @ targets)


def ridge_dual(features: np.ndarray, targets: np.ndarray, penalty: float) -> np.ndarray:
    r"""Ridge coefficients in the dual: :math:`W = A^\top (A A^\top + \lambda I)^{-1} Y`.

    The same as :math:`(A^\top A + \lambda I)^{-1} A^\top Y`, solved in the ``[m, m]`` space,
    cheaper when there are fewer rows than features. Centre both sides first for an intercept.

    Args:
      features: ``[m, f]`` rows :math:`A`.
      targets: ``[m, t]`` :math:`Y`.
      penalty: :math:`\lambda > 0`.

    Returns:
      ``[f, t]`` coefficients; predictions are ``new_features @ W``.
    """
    gram = features @ features.T + penalty * np.eye(len(features))
    return features.T @ np.linalg.solve(gram, targets)
