r"""Losses of the Conditional Monge Gap, built on ott-jax.

For conditions :math:`c_1..c_k` sampled in a step, with source (control) cells
:math:`x^{(i)} \in \mathbb{R}^{n \times d}` and treated cells :math:`y^{(i)}`:

.. math::
    \mathcal{L}(\theta) = \frac{1}{k} \sum_{i=1}^k
        S_{\varepsilon_f}\big(T_\theta(\cdot, c_i)\sharp\hat\mu_i, \hat\nu_i\big)
        + \lambda\, \mathcal{M}_{\hat\mu_i, \varepsilon_m}\big(T_\theta(\cdot, c_i)\big)

with :math:`S` the fitting divergence and :math:`\mathcal{M}` the Monge gap
(Uscidda & Cuturi 2023; Harsanyi et al. 2025, arXiv 2504.08328). :math:`S` is by default the
split-half Sinkhorn divergence (:func:`split_divergence`, ``loss.fit_debias="split"``), whose
terms all compare independent samples, so that it does not reward a shrunken prediction; the
batch Sinkhorn divergence (:func:`sinkhorn_divergence`) is ``fit_debias="self"``. Both entropic
regularisations are relative to the batch cost matrix (its mean, or for the fitting term
optionally its standard deviation).

Speed: the solves run by default in the *scaling* (kernel) domain, where a Sinkhorn iteration is a
matrix-vector product with :math:`K = e^{-C/\varepsilon}` rather than a log-sum-exp over the
:math:`n \times n` cost matrix (2-3x faster on CPU, identical values when it is finite). With
relative epsilons :math:`C/\varepsilon` stays far from float32 underflow in practice; the training
step checks every result (:func:`solves_are_sound`) and recomputes an unsound one in the log
domain (:func:`make_conditional_loss` with ``lse_mode=True``), inside the jitted graph: see
:func:`condmonge.train.trainer.make_value_and_grad`, the one fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from ott.geometry import costs, pointcloud
from ott.neural.methods.monge_gap import monge_gap_from_samples
from ott.solvers import linear
from ott.solvers.linear import acceleration
from ott.tools import sinkhorn_divergence as sd

from condmonge.config import LossConfig

__all__ = [
    "cost_fn_from_name",
    "make_conditional_loss",
    "monge_gap",
    "sinkhorn_divergence",
    "solves_are_sound",
    "split_divergence",
]


def cost_fn_from_name(name: str) -> costs.CostFn:
    r"""``"sqeuclidean"`` → :math:`\|x - y\|_2^2`, ``"euclidean"`` → :math:`\|x - y\|_2`."""
    return {"sqeuclidean": costs.SqEuclidean, "euclidean": costs.Euclidean}[name]()


def _solver_kwargs(cfg: LossConfig, lse_mode: bool = True) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_iterations": cfg.sinkhorn_max_iterations,
        "threshold": cfg.sinkhorn_threshold,
        "lse_mode": lse_mode,
    }
    if cfg.sinkhorn_momentum is not None:
        # Over-relaxed updates once the iterates settle: 2-3x fewer iterations at small epsilon.
        kwargs["momentum"] = acceleration.Momentum(start=20, value=cfg.sinkhorn_momentum)
    return kwargs


def sinkhorn_divergence(
    x: jnp.ndarray, y: jnp.ndarray, cfg: LossConfig, lse_mode: bool = True
) -> jnp.ndarray:
    r"""Sinkhorn divergence :math:`S_\varepsilon(x, y)` of two clouds ``[n, d]`` and ``[m, d]``.

    .. math::
        S_\varepsilon = W_\varepsilon(x, y) - \tfrac12 W_\varepsilon(x, x)
            - \tfrac12 W_\varepsilon(y, y)

    with :math:`\varepsilon = \text{fit\_epsilon} \cdot \operatorname{mean}(C_{xy})`;
    ``lse_mode=False`` solves in the scaling domain (faster; see :func:`make_conditional_loss`).
    """
    return _sinkhorn_divergence(x, y, cfg, lse_mode)[0]


def _sinkhorn_divergence(x, y, cfg: LossConfig, lse_mode: bool):
    """Divergence and the largest final marginal error of its three solves."""
    value, out = sd.sinkhorn_divergence(
        pointcloud.PointCloud,
        x,
        y,
        cost_fn=cost_fn_from_name(cfg.cost),
        epsilon=cfg.fit_epsilon,
        relative_epsilon=cfg.fit_epsilon_relative,
        solve_kwargs=_solver_kwargs(cfg, lse_mode),
    )
    return value, jnp.max(jnp.stack([_final_error(e) for e in out.errors]))


def split_divergence(
    x: jnp.ndarray, y: jnp.ndarray, cfg: LossConfig, lse_mode: bool = True
) -> jnp.ndarray:
    r"""Sampling-debiased Sinkhorn divergence of two clouds ``[n, d]`` and ``[m, d]``.

    Each cloud is cut into independent halves :math:`x_A, x_B` and :math:`y_A, y_B` and

    .. math::
        D = \tfrac12\big(W_\varepsilon(x_A, y_A) + W_\varepsilon(x_B, y_B)\big)
            - \tfrac12 W_\varepsilon(x_A, x_B) - \tfrac12 W_\varepsilon(y_A, y_B),

    one :math:`\varepsilon` for all four solves (relative to the cost of :math:`x_A, y_A`).
    Every term compares two *independent* samples of the same size, so :math:`\mathbb{E}\,D = 0`
    when :math:`x` and :math:`y` have the same law. The Sinkhorn divergence's self terms
    :math:`W_\varepsilon(x, x)` compare a cloud with itself instead; the sampling bias of
    :math:`W_\varepsilon(x, y)` then grows with the spread of :math:`x`, and a map fitted to it
    shrinks the spread (on ``benchmarks/moments.py --task scale``: predicted variance at about
    half of the truth). :math:`D` can be slightly negative on one batch.
    """
    return _split_divergence(x, y, cfg, lse_mode)[0]


def _split_divergence(x, y, cfg: LossConfig, lse_mode: bool):
    """Split divergence and the largest final marginal error of its four solves."""
    h, k = x.shape[0] // 2, y.shape[0] // 2
    xa, xb, ya, yb = x[:h], x[h : 2 * h], y[:k], y[k : 2 * k]
    cost_fn = cost_fn_from_name(cfg.cost)
    first = pointcloud.PointCloud(
        xa, ya, cost_fn=cost_fn, epsilon=cfg.fit_epsilon, relative_epsilon=cfg.fit_epsilon_relative
    )
    geoms = [first] + [
        pointcloud.PointCloud(a, b, cost_fn=cost_fn).copy_epsilon(first)
        for a, b in ((xb, yb), (xa, xb), (ya, yb))
    ]
    outs = [linear.solve(g, **_solver_kwargs(cfg, lse_mode)) for g in geoms]
    w = [o.reg_ot_cost for o in outs]
    value = 0.5 * (w[0] + w[1]) - 0.5 * w[2] - 0.5 * w[3]
    return value, jnp.max(jnp.stack([_final_error(o.errors) for o in outs]))


def monge_gap(
    x: jnp.ndarray, mapped: jnp.ndarray, cfg: LossConfig, lse_mode: bool = True
) -> jnp.ndarray:
    r"""Monge gap of a map on the samples ``x [n, d]`` given their images ``mapped [n, d]``.

    .. math::
        \mathcal{M}(T) = \frac1n \sum_i c(x_i, T(x_i)) - W_{c,\varepsilon}(\hat\mu, T\sharp\hat\mu)

    It is :math:`\approx 0` for a c-optimal map and positive otherwise.
    """
    return _monge_gap(x, mapped, cfg, lse_mode)[0]


def _monge_gap(x, mapped, cfg: LossConfig, lse_mode: bool):
    """Monge gap and the final marginal error of its solve."""
    value, out = monge_gap_from_samples(
        x,
        mapped,
        cost_fn=cost_fn_from_name(cfg.cost),
        epsilon=cfg.monge_gap_epsilon,
        relative_epsilon="mean",
        return_output=True,
        **_solver_kwargs(cfg, lse_mode),
    )
    return value, _final_error(out.errors)


def _final_error(errors: jnp.ndarray) -> jnp.ndarray:
    """Last marginal error of a Sinkhorn run (``errors`` is -1 where not computed)."""
    return jnp.min(jnp.where(errors == -1, jnp.inf, errors))


#: Marginal error above which a scaling-domain solve is taken to have lost mass to float32
#: underflow. Measured on the SPD-affine task (d = 50, n = 256): solves truncated at the default
#: 50 iterations end at 0.003-0.05 in *both* domains with identical values, while underflowed
#: scaling solves end at 0.38-1.0 (values off by 16 % to 100 %).
UNDERFLOW_MARGINAL_ERROR = 0.1


def solves_are_sound(aux: dict[str, jnp.ndarray], cfg: LossConfig) -> jnp.ndarray:
    r"""Whether every solve of a scaling-domain loss can be trusted (scalar bool).

    Without underflow, scaling and log-domain iterates are the same numbers, and so are their
    marginal errors, converged or not; an underflowed kernel :math:`e^{-C/\varepsilon}` loses
    mass, which shows as a marginal error of order one. Accepted: a finite loss whose solves all
    end within ``max(10 * sinkhorn_threshold, UNDERFLOW_MARGINAL_ERROR)`` of their marginals. A
    solve merely truncated at ``sinkhorn_max_iterations`` is accepted: the log domain would
    return the same truncated result, only slower.
    """
    finite = jnp.all(jnp.isfinite(aux["per_condition"]))
    tolerance = max(10 * cfg.sinkhorn_threshold, UNDERFLOW_MARGINAL_ERROR)
    return finite & jnp.all(aux["marginal_error"] <= tolerance)


def make_conditional_loss(
    apply_fn: Callable[..., jnp.ndarray], cfg: LossConfig, lse_mode: bool = True
) -> Callable[..., tuple[jnp.ndarray, dict[str, jnp.ndarray]]]:
    r"""Build ``loss(params, constants, source [k,n,d], target [k,n,d], condition) -> (loss, aux)``.

    All ``k`` conditions are computed at once with ``vmap``; ``aux`` holds the mean fitting term,
    the mean Monge gap, the per-condition loss ``[k]`` and ``marginal_error [k]`` (the largest
    final marginal error of the condition's solves). ``lse_mode=False`` runs every Sinkhorn
    solve in the scaling domain; check its result with :func:`solves_are_sound` and recompute
    in the log domain when it fails (float32 underflow of :math:`e^{-C/\varepsilon}` can
    otherwise go unnoticed).
    """

    def per_condition(params, constants, x, y, condition):
        mapped = apply_fn({"params": params, "constants": constants}, x, condition)
        mapped = mapped.astype(jnp.float32)  # OT solves in float32 even with bfloat16 matmuls
        divergence = _split_divergence if cfg.fit_debias == "split" else _sinkhorn_divergence
        fit, error = divergence(mapped, y, cfg, lse_mode)
        gap = jnp.zeros(())
        if cfg.monge_gap_weight > 0:
            gap, gap_error = _monge_gap(x, mapped, cfg, lse_mode)
            error = jnp.maximum(error, gap_error)
        return fit, gap, error

    def loss(params, constants, source, target, condition):
        fit, gap, error = jax.vmap(per_condition, in_axes=(None, None, 0, 0, 0))(
            params, constants, source, target, condition
        )
        per_cond = fit + cfg.monge_gap_weight * gap
        return jnp.mean(per_cond), {
            "fit": jnp.mean(fit),
            "monge_gap": jnp.mean(gap),
            "per_condition": per_cond,
            "per_condition_fit": fit,  # the validation metric (no Monge gap)
            "marginal_error": error,
        }

    return loss
