r"""Metrics between a predicted and an observed cell population.

Every metric is a pure JAX function of weighted point clouds: ``x [n, d]`` with weights
``a [n]`` (the prediction) and ``y [m, d]`` with weights ``b [m]`` (the observed treated cells);
weights default to uniform. Zero weights mark padding, so populations of different sizes are
padded to one shape and evaluated for all conditions in a single jitted, vmapped call
(:func:`population_metrics`, :func:`evaluate_populations`).

Names say which variant is computed, because published "R²" values differ by variant:

- ``r2_*`` is the coefficient of determination :math:`1 - SS_{res}/SS_{tot}` (can be negative),
  ``pearson_r2_*`` the squared Pearson correlation (cmonge's "R²"; blind to scale and offset).
- ``*_mean_*`` compares mean expression; ``*_delta_*`` compares mean *changes vs control*, the
  honest variant (genes that do not move cannot inflate it).
- ``*_top{k}`` restricts to the ``k`` features whose observed mean moves most from control
  (ranked from the truth, per condition).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from condmonge.ops import EPS, energy_distance, normalised_weights, sinkhorn_terms, sq_distances

__all__ = [
    "DE_SIZES",
    "METRIC_DIRECTIONS",
    "MMD_GAMMAS",
    "drug_signature",
    "energy_distance",
    "entropic_w2",
    "evaluate_populations",
    "l2_uvp",
    "mean_delta_r2",
    "mean_r2_pearson",
    "mmd_rbf",
    "mmd_rbf_median",
    "moment_errors",
    "pearson_r2",
    "population_metrics",
    "r2_score",
    "sinkhorn_divergence",
    "top_de_features",
    "weighted_moments",
]

#: RBF precisions of the reference evaluation (cmonge), averaged by :func:`mmd_rbf`.
MMD_GAMMAS = (2.0, 1.0, 0.5, 0.1, 0.01, 0.005)
#: Optional weights ``[n]`` of a point cloud (``None``: uniform).
Weights = jnp.ndarray | None
#: Sizes of the top differentially expressed feature sets.
DE_SIZES = (20, 50, 100)


def _pair_mean(values: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    return a @ values @ b


# ----------------------------------------------------------------------------- moments


def weighted_moments(
    x: jnp.ndarray, w: jnp.ndarray | None = None
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    r"""Per-feature mean, variance, skewness and excess kurtosis of ``x [n, d]``.

    With normalised weights :math:`w` and central moments :math:`m_k = \sum_i w_i (x_i-\mu)^k`:
    variance :math:`m_2` (population, not ``n-1``), skewness :math:`m_3/m_2^{3/2}`, excess
    kurtosis :math:`m_4/m_2^2 - 3`. Constant features get skewness and kurtosis 0.

    Returns:
      Four ``[d]`` arrays.

    Args:
      x: ``[n, d]`` points.
      w: ``[n]`` weights (``None``: uniform; zeros mark padding).
    """
    w = normalised_weights(w, x.shape[0])
    mean = w @ x
    c = x - mean
    m2 = w @ c**2
    m3 = w @ c**3
    m4 = w @ c**4
    # Float32 round-off leaves ~1e-10 relative variance on constant features: treat as 0.
    ok = m2 > 1e-6 * (1.0 + mean**2)
    safe = jnp.where(ok, m2, 1.0)
    skew = jnp.where(ok, m3 / safe**1.5, 0.0)
    kurt = jnp.where(ok, m4 / safe**2 - 3.0, 0.0)
    return mean, m2, skew, kurt


def r2_score(pred: jnp.ndarray, true: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    r"""Coefficient of determination of ``pred [d]`` against ``true [d]`` over features.

    .. math:: R^2 = 1 - \frac{\sum_g (\hat v_g - v_g)^2}{\sum_g (v_g - \bar v)^2}

    restricted to ``mask`` (boolean ``[d]``) when given. 0 for predicting the average, negative
    when worse; NaN when ``true`` is constant.

    Args:
      pred: ``[d]`` predicted values.
      true: ``[d]`` observed values.
      mask: ``[d]`` boolean, the features to score (``None``: all).

    Returns:
      A scalar.
    """
    m = jnp.ones_like(true) if mask is None else mask.astype(true.dtype)
    n = jnp.sum(m)
    mu = jnp.sum(m * true) / n
    ss_res = jnp.sum(m * (pred - true) ** 2)
    ss_tot = jnp.sum(m * (true - mu) ** 2)
    return jnp.where(ss_tot > 0, 1.0 - ss_res / jnp.where(ss_tot > 0, ss_tot, 1.0), jnp.nan)


def pearson_r2(
    pred: jnp.ndarray, true: jnp.ndarray, mask: jnp.ndarray | None = None
) -> jnp.ndarray:
    """Squared Pearson correlation of ``pred [d]`` and ``true [d]`` over (masked) features.

    NaN when either side is constant.

    Args:
      pred: ``[d]``; true: ``[d]``; mask: ``[d]`` boolean or ``None`` (as :func:`r2_score`).

    Returns:
      A scalar.
    """
    m = jnp.ones_like(true) if mask is None else mask.astype(true.dtype)
    n = jnp.sum(m)
    p = pred - jnp.sum(m * pred) / n
    t = true - jnp.sum(m * true) / n
    cov = jnp.sum(m * p * t)
    var = jnp.sum(m * p**2) * jnp.sum(m * t**2)
    return jnp.where(var > 0, cov**2 / jnp.where(var > 0, var, 1.0), jnp.nan)


def top_de_mask(truth_mean: jnp.ndarray, control_mean: jnp.ndarray, k: int) -> jnp.ndarray:
    """Boolean ``[d]`` mask of the ``k`` features whose observed mean moves most (|Δ|).

    Args:
      truth_mean: ``[d]`` mean of the observed treated cells.
      control_mean: ``[d]`` mean of the controls.
      k: number of features (at most ``d``).
    """
    k = min(k, truth_mean.shape[0])
    _, idx = jax.lax.top_k(jnp.abs(truth_mean - control_mean), k)
    return jnp.zeros(truth_mean.shape, bool).at[idx].set(True)


def moment_errors(
    x: jnp.ndarray, y: jnp.ndarray, a: jnp.ndarray | None = None, b: jnp.ndarray | None = None
) -> dict[str, jnp.ndarray]:
    """Errors of per-feature variance, skewness and kurtosis of prediction vs truth.

    Returns ``r2_var``, ``mae_var``, ``r2_skew``, ``mae_skew``, ``r2_kurtosis``,
    ``mae_kurtosis``: R² (:func:`r2_score`) across features and mean absolute error.

    Args:
      x: ``[n, d]`` prediction; y: ``[m, d]`` truth; a: ``[n]``; b: ``[m]`` (weights).
    """
    _, vx, sx, kx = weighted_moments(x, a)
    _, vy, sy, ky = weighted_moments(y, b)
    out = {}
    for name, p, t in (("var", vx, vy), ("skew", sx, sy), ("kurtosis", kx, ky)):
        out[f"r2_{name}"] = r2_score(p, t)
        out[f"mae_{name}"] = jnp.mean(jnp.abs(p - t))
    return out


# ----------------------------------------------------------------------------- distributions


def mmd_rbf(
    x: jnp.ndarray,
    y: jnp.ndarray,
    a: jnp.ndarray | None = None,
    b: jnp.ndarray | None = None,
    gammas: Sequence[float] = MMD_GAMMAS,
) -> jnp.ndarray:
    r"""Biased MMD² with RBF kernels :math:`k(u,v)=e^{-\gamma\|u-v\|^2}`, averaged over ``gammas``.

    .. math::
        \mathrm{MMD}^2 = \mathbb{E}k(X,X') + \mathbb{E}k(Y,Y') - 2\,\mathbb{E}k(X,Y)

    (V-statistic: 0 for identical samples). The default ``gammas`` are the reference's.

    Args:
      x: ``[n, d]``; y: ``[m, d]``; a: ``[n]``; b: ``[m]`` (weights; ``None`` = uniform).
      gammas: RBF precisions averaged over.

    Returns:
      A scalar.
    """
    a, b = normalised_weights(a, x.shape[0]), normalised_weights(b, y.shape[0])
    dxx, dyy, dxy = sq_distances(x, x), sq_distances(y, y), sq_distances(x, y)
    values = [
        _pair_mean(jnp.exp(-g * dxx), a, a)
        + _pair_mean(jnp.exp(-g * dyy), b, b)
        - 2 * _pair_mean(jnp.exp(-g * dxy), a, b)
        for g in gammas
    ]
    return jnp.mean(jnp.stack(values))


def _weighted_median(values: jnp.ndarray, weights: jnp.ndarray, steps: int = 48) -> jnp.ndarray:
    """Weighted median of ``values`` by bisection (no sort: cheap under ``vmap``)."""

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = jnp.sum(jnp.where(values <= mid, weights, 0.0)) >= 0.5 * jnp.sum(weights)
        return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

    lo, hi = jax.lax.fori_loop(0, steps, body, (jnp.min(values) * 0.0, jnp.max(values)))
    return hi


def mmd_rbf_median(
    x: jnp.ndarray, y: jnp.ndarray, a: jnp.ndarray | None = None, b: jnp.ndarray | None = None
) -> jnp.ndarray:
    r"""Biased MMD² with one RBF kernel whose bandwidth is set by the median heuristic.

    :math:`\gamma = 1 / \mathrm{median}_{i,j}\|x_i - y_j\|^2` over the cross pairs with nonzero
    weight, i.e. :math:`k = e^{-\|u-v\|^2 / (2\sigma^2)}` with :math:`2\sigma^2` the median.
    Scale-free, unlike the fixed ``gammas`` of :func:`mmd_rbf`.

    Args:
      x: ``[n, d]``; y: ``[m, d]``; a: ``[n]``; b: ``[m]`` (weights; ``None`` = uniform).

    Returns:
      A scalar.
    """
    a, b = normalised_weights(a, x.shape[0]), normalised_weights(b, y.shape[0])
    dxy = sq_distances(x, y)
    median = _weighted_median(dxy, a[:, None] * b[None, :])
    gamma = 1.0 / jnp.maximum(median, EPS)
    return (
        _pair_mean(jnp.exp(-gamma * sq_distances(x, x)), a, a)
        + _pair_mean(jnp.exp(-gamma * sq_distances(y, y)), b, b)
        - 2 * _pair_mean(jnp.exp(-gamma * dxy), a, b)
    )


def sinkhorn_divergence(
    x: jnp.ndarray,
    y: jnp.ndarray,
    a: jnp.ndarray | None = None,
    b: jnp.ndarray | None = None,
    epsilon: float = 0.1,
    max_iterations: int = 1000,
) -> jnp.ndarray:
    r"""Debiased Sinkhorn divergence, squared-Euclidean cost, **absolute** :math:`\varepsilon`.

    .. math::
        S_\varepsilon = \mathrm{OT}_\varepsilon(\alpha,\beta)
            - \tfrac12\mathrm{OT}_\varepsilon(\alpha,\alpha)
            - \tfrac12\mathrm{OT}_\varepsilon(\beta,\beta)

    ``epsilon = 0.1`` is the reference's evaluation setting (ott-jax solver).

    Args:
      x: ``[n, d]`` prediction; y: ``[m, d]`` truth; a: ``[n]``; b: ``[m]`` (weights;
        ``None`` = uniform, zeros mark padding).
      epsilon: absolute entropic regularisation.
      max_iterations: Sinkhorn iterations at most.
    """
    return sinkhorn_terms(x, y, a, b, epsilon, max_iterations)[0]


def entropic_w2(
    x: jnp.ndarray, y: jnp.ndarray, a: Weights = None, b: Weights = None, **solve: float
) -> jnp.ndarray:
    r"""Entropic estimate of the 2-Wasserstein distance.

    .. math:: W_{2,\varepsilon} = \sqrt{\langle P_\varepsilon, C\rangle}

    :math:`P_\varepsilon` is the Sinkhorn plan between the two populations for the
    squared-Euclidean cost :math:`C` at absolute ``epsilon`` (the plan of the cross term of
    :func:`sinkhorn_divergence`, so both come from one solve). With cells in expression or PCA
    units, ``epsilon = 0.1`` is small next to typical costs and the plan is nearly unregularised.

    Args:
      x, y, a, b: as :func:`sinkhorn_divergence`.
      **solve: ``epsilon`` (absolute, default 0.1) and ``max_iterations`` (default 1000).
    """
    cost = sinkhorn_terms(x, y, a, b, **solve)[1]
    return jnp.sqrt(jnp.maximum(cost, 0.0))


def drug_signature(
    x: jnp.ndarray, y: jnp.ndarray, a: jnp.ndarray | None = None, b: jnp.ndarray | None = None
) -> jnp.ndarray:
    r"""The cmonge "drug signature" distance: distance of the means, :math:`\|\mu_X-\mu_Y\|_2`.

    Args:
      x: ``[n, d]``; y: ``[m, d]``; a: ``[n]``; b: ``[m]`` (weights; ``None`` = uniform).
    """
    return jnp.linalg.norm(
        normalised_weights(a, x.shape[0]) @ x - normalised_weights(b, y.shape[0]) @ y
    )


# ----------------------------------------------------------------------------- all at once


def population_metrics(  # noqa: PLR0913  three weighted clouds (6 arrays, vmapped) + options
    pred: jnp.ndarray,
    truth: jnp.ndarray,
    control: jnp.ndarray,
    a: jnp.ndarray | None = None,
    b: jnp.ndarray | None = None,
    c: jnp.ndarray | None = None,
    de_sizes: Sequence[int] = DE_SIZES,
    sinkhorn_epsilon: float = 0.1,
    sinkhorn_iterations: int = 1000,
) -> dict[str, jnp.ndarray]:
    """Every metric for one condition: prediction ``pred``, truth ``truth``, control ``control``.

    Weights ``a``, ``b``, ``c`` (zeros mark padding). Top-DE features are ranked from the truth
    vs the control. Returns a dict of scalars (names: see the module docstring).

    Args:
      pred: ``[n, d]`` predicted cells; truth: ``[m, d]`` observed treated cells; control:
        ``[l, d]`` observed controls.
      a, b, c: ``[n]``, ``[m]``, ``[l]`` weights (``None``: uniform).
      de_sizes: sizes of the top-DE feature sets (those smaller than ``d``).
      sinkhorn_epsilon: absolute epsilon of the Sinkhorn metrics.
      sinkhorn_iterations: their iteration cap.
    """
    a, b, c = (
        normalised_weights(a, pred.shape[0]),
        normalised_weights(b, truth.shape[0]),
        normalised_weights(c, control.shape[0]),
    )
    mu_p, mu_t, mu_c = a @ pred, b @ truth, c @ control
    out: dict[str, jnp.ndarray] = {}
    masks = {"all": None} | {
        f"top{k}": top_de_mask(mu_t, mu_c, k) for k in de_sizes if k < pred.shape[1]
    }
    for name, mask in masks.items():
        out[f"r2_mean_{name}"] = r2_score(mu_p, mu_t, mask)
        out[f"pearson_r2_mean_{name}"] = pearson_r2(mu_p, mu_t, mask)
        out[f"r2_delta_{name}"] = r2_score(mu_p - mu_c, mu_t - mu_c, mask)
        out[f"pearson_r2_delta_{name}"] = pearson_r2(mu_p - mu_c, mu_t - mu_c, mask)
    out["mmd_rbf"] = mmd_rbf(pred, truth, a, b)
    out["mmd_rbf_median"] = mmd_rbf_median(pred, truth, a, b)
    out["energy_distance"] = energy_distance(pred, truth, a, b)
    divergence, cost = sinkhorn_terms(pred, truth, a, b, sinkhorn_epsilon, sinkhorn_iterations)
    out[f"sinkhorn_div_eps{sinkhorn_epsilon:g}"] = divergence
    out["w2_entropic"] = jnp.sqrt(jnp.maximum(cost, 0.0))
    out["drug_signature"] = drug_signature(pred, truth, a, b)
    out.update(moment_errors(pred, truth, a, b))
    return out


def metric_higher_is_better(name: str) -> bool:
    """Direction of a metric by its name: R² values are better high, distances and errors low.

    Args:
      name: a metric name (a column of :func:`evaluate_populations`).
    """
    return name.startswith(("r2_", "pearson_r2_"))


#: Direction of the standard metrics (``True``: higher is better).
METRIC_DIRECTIONS = {
    name: metric_higher_is_better(name)
    for name in [
        *(
            f"{p}_{k}_{s}"
            for p in ("r2", "pearson_r2")
            for k in ("mean", "delta")
            for s in ("all", *(f"top{n}" for n in DE_SIZES))
        ),
        "mmd_rbf",
        "mmd_rbf_median",
        "energy_distance",
        "sinkhorn_div_eps0.1",
        "w2_entropic",
        "drug_signature",
        "r2_var",
        "mae_var",
        "r2_skew",
        "mae_skew",
        "r2_kurtosis",
        "mae_kurtosis",
        "l2_uvp",
    ]
}


def _pad(arrays: Sequence[np.ndarray], size: int, rng: np.random.Generator):
    """Stack ``[n_i, d]`` arrays into ``[K, size, d]`` + weights; larger sets are subsampled."""
    d = arrays[0].shape[1]
    out = np.zeros((len(arrays), size, d), np.float32)
    w = np.zeros((len(arrays), size), np.float32)
    for i, arr in enumerate(arrays):
        arr = np.asarray(arr, np.float32)
        if arr.shape[0] > size:
            arr = arr[np.sort(rng.choice(arr.shape[0], size, replace=False))]
        out[i, : arr.shape[0]] = arr
        w[i, : arr.shape[0]] = 1.0
    return out, w


@functools.lru_cache(maxsize=8)
def _batched_metrics(de_sizes: tuple[int, ...], epsilon: float, iterations: int):
    # Cached so that every method and every call with the same shapes reuses one compilation.
    def one(*args):
        return population_metrics(
            *args, de_sizes=de_sizes, sinkhorn_epsilon=epsilon, sinkhorn_iterations=iterations
        )

    return jax.jit(jax.vmap(one))


def evaluate_populations(  # noqa: PLR0913  keyword options of a public entry point
    predictions: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    controls: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    max_cells: int = 500,
    chunk_size: int = 16,
    seed: int = 0,
    de_sizes: Sequence[int] = DE_SIZES,
    sinkhorn_epsilon: float = 0.1,
    sinkhorn_iterations: int = 1000,
) -> pd.DataFrame:
    """Every metric for many conditions in batched, jitted calls: one row per condition.

    Populations are padded (zero weight) to a common size; sets larger than ``max_cells`` are
    subsampled without replacement (seeded) so cost stays bounded. Conditions are processed
    ``chunk_size`` at a time under ``vmap`` (one compilation for all chunks).

    Args:
      predictions, truths, controls: per condition ``[n_i, d]`` arrays (same ``d``).
      names: condition names, the index of the result.
    """
    if not (len(predictions) == len(truths) == len(controls) == len(names)):
        raise ValueError("predictions, truths, controls and names must have the same length")
    if not names:
        return pd.DataFrame()
    rng = np.random.default_rng(seed)

    def size(arrs):
        return min(max_cells, max(a.shape[0] for a in arrs))

    sizes = [size(predictions), size(truths), size(controls)]
    (p, a), (t, b), (c, w) = (
        _pad(arrs, s, rng) for arrs, s in zip((predictions, truths, controls), sizes, strict=True)
    )
    k = len(names)
    chunk = min(chunk_size, k)
    n_chunks = -(-k // chunk)
    pad_to = n_chunks * chunk

    def pad_conditions(arr):
        # Repeat the last condition to fill the last chunk (results dropped afterwards).
        extra = np.repeat(arr[-1:], pad_to - k, axis=0)
        return np.concatenate([arr, extra]).reshape(n_chunks, chunk, *arr.shape[1:])

    fn = _batched_metrics(tuple(de_sizes), float(sinkhorn_epsilon), int(sinkhorn_iterations))
    results = [
        jax.device_get(fn(*(jnp.asarray(pad_conditions(arr)[i]) for arr in (p, t, c, a, b, w))))
        for i in range(n_chunks)
    ]
    table = {key: np.concatenate([np.asarray(r[key]) for r in results])[:k] for key in results[0]}
    return pd.DataFrame(table, index=pd.Index(list(names), name="condition"))


# ----------------------------------------------------------------------------- numpy helpers


def l2_uvp(predicted: np.ndarray, true_mapped: np.ndarray) -> float:
    r"""Unexplained variance percentage of a map (Korotin et al. 2021).

    .. math::
        \mathrm{L2\text{-}UVP} = 100 \cdot \frac{\mathbb{E}\|\hat T(x) - T^*(x)\|^2}
            {\operatorname{tr}\operatorname{Cov}(T^*\sharp\mu)}

    Args:
      predicted: ``[n, d]`` images under the learned map.
      true_mapped: ``[n, d]`` images of the same cells under the true map ``T*``.

    Returns:
      The percentage (0 for a perfect map, about 100 for predicting the mean image).
    """
    err = np.mean(np.sum((predicted - true_mapped) ** 2, axis=1))
    var = np.sum(np.var(true_mapped, axis=0))
    return float(100.0 * err / var)


def top_de_features(truth: np.ndarray, control: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` features whose observed mean moves most from control (|Δ mean|).

    Args:
      truth: ``[m, d]`` treated cells; control: ``[l, d]`` controls; k: how many.

    Returns:
      ``[k]`` feature indices, largest change first.
    """
    delta = np.abs(np.asarray(truth).mean(0) - np.asarray(control).mean(0))
    return np.argsort(-delta, kind="stable")[:k]


def mean_delta_r2(
    pred: np.ndarray, truth: np.ndarray, control: np.ndarray, features: np.ndarray | None = None
) -> float:
    r"""Coefficient of determination of mean deltas vs control, over ``features`` (numpy).

    .. math::
        R^2 = 1 - \frac{\sum_g (\hat\delta_g - \delta_g)^2}{\sum_g (\delta_g - \bar\delta)^2},
        \quad \delta_g = \bar y_g - \bar x^{ctrl}_g

    Args:
      pred: ``[n, d]``; truth: ``[m, d]``; control: ``[l, d]`` cells.
      features: indices of the features to score (``None``: all).
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
    """Squared Pearson correlation of mean expression (the cmonge paper's "R²"), numpy.

    Args:
      pred: ``[n, d]``; truth: ``[m, d]`` cells.
      features: indices of the features to score (``None``: all).
    """
    sel = slice(None) if features is None else features
    a, b = pred.mean(0)[sel], truth.mean(0)[sel]
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1] ** 2)
