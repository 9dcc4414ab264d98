r"""The metrics that published perturbation benchmarks report, each named for its source.

All functions are numpy on per-condition **mean** profiles over genes: the prediction's mean
:math:`\hat\mu_c`, the truth's mean :math:`\mu_c` and the truth's control mean :math:`\mu_0` of
the same cell type, so that any model's prediction (with or without control cells of its own)
is scored against the same reference. Mean deltas are :math:`\hat\delta_c = \hat\mu_c - \mu_0`
and :math:`\delta_c = \mu_c - \mu_0`. docs/METRICS.md gives every definition with its source.

- PerturBench (altoslabs/perturbench, ``analysis/benchmarks``): :func:`cosine_logfc` and the rank
  metric :func:`rank_metric` (lower is better).
- cell-eval (ArcInstitute/cell-eval, ``metrics``): :func:`pearson` of deltas
  (``pearson_delta``), :func:`discrimination_scores` (L1), :func:`de_overlap` (overlap / precision
  at N) and :func:`de_direction_match`.
- scPerturBench: Pearson of deltas on the top-k DE genes.
- cmonge: squared Pearson of means on the top-50 DE genes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "PSEUDOCOUNT",
    "cosine",
    "cosine_logfc",
    "de_direction_match",
    "de_overlap",
    "discrimination_scores",
    "log2_fold_change",
    "mid_rank",
    "pearson",
    "rank_metric",
]

#: PerturBench's pseudocount in :math:`\log_2(\mu + 0.1)`.
PSEUDOCOUNT = 0.1


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    r"""Pearson correlation of two ``[g]`` vectors; NaN when either is constant.

    .. math:: r = \frac{\sum_g (x_g-\bar x)(y_g-\bar y)}
        {\sqrt{\sum_g (x_g-\bar x)^2 \sum_g (y_g-\bar y)^2}}
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xc**2) * np.sum(yc**2))
    return float(np.sum(xc * yc) / denom) if denom > 0 else float("nan")


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    r"""Cosine similarity :math:`x\cdot y / (\|x\|\|y\|)` of ``[g]`` vectors; NaN for a zero one."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    denom = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / denom) if denom > 0 else float("nan")


def log2_fold_change(
    mean: np.ndarray, control_mean: np.ndarray, pseudocount: float = PSEUDOCOUNT
) -> np.ndarray:
    r"""PerturBench's log fold change of mean expression, ``[..., g]``.

    .. math:: \mathrm{LFC}_g = \log_2(\mu_g + 0.1) - \log_2(\mu^{0}_g + 0.1)

    on the expression as stored (log-normalised counts in PerturBench); undefined values (a mean
    at or below :math:`-0.1`, e.g. in PCA units) are set to 0 as PerturBench does.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log2(np.asarray(mean, np.float64) + pseudocount) - np.log2(
            np.asarray(control_mean, np.float64) + pseudocount
        )
    return np.where(np.isfinite(out), out, 0.0)


def cosine_logfc(pred_mean: np.ndarray, true_mean: np.ndarray, control_mean: np.ndarray) -> float:
    """PerturBench's cosine similarity of log fold changes (prediction vs truth), all genes."""
    return cosine(
        log2_fold_change(pred_mean, control_mean), log2_fold_change(true_mean, control_mean)
    )


def mid_rank(values: np.ndarray, own: np.ndarray) -> np.ndarray:
    r"""Rank of ``own[i]`` among row ``values[i]`` (ascending, 0 = smallest), ties counted half.

    .. math:: \rho_i = \#\{q: v_{iq} < o_i\} + \tfrac12\,(\#\{q: v_{iq} = o_i\} - 1)

    PerturBench shuffles before sorting and cell-eval sorts stably, so with ties their rank is
    random or order-dependent; the mid-rank is the expectation of the shuffled rank and equals
    both when there are no ties.

    Args:
      values: ``[K, K]`` scores; row ``i`` holds the candidates for item ``i`` (itself included).
      own: ``[K]`` the score of item ``i``'s own match.
    """
    below = np.sum(values < own[:, None], axis=1)
    ties = np.sum(values == own[:, None], axis=1)
    rank = below + 0.5 * (ties - 1)
    return np.where(np.isfinite(own), rank, np.nan)


def rank_metric(pred_lfc: np.ndarray, true_lfc: np.ndarray) -> np.ndarray:
    r"""PerturBench's rank metric of cosine similarities of log fold changes (lower is better).

    For the true profile of condition :math:`p`, the predictions of all :math:`K` conditions are
    sorted by similarity to it; the rank is the position of :math:`p`'s own prediction over
    :math:`K`: :math:`\#\{q: \cos(\hat l_q, l_p) > \cos(\hat l_p, l_p)\} / K`, 0 when the own
    prediction is the closest, about 0.5 when predictions are interchangeable.

    Args:
      pred_lfc, true_lfc: ``[K, g]`` log fold changes of the conditions that are compared
        together (one cell type).

    Returns:
      ``[K]`` ranks in ``[0, 1)``.
    """
    p = np.asarray(pred_lfc, np.float64)
    t = np.asarray(true_lfc, np.float64)
    pn = np.linalg.norm(p, axis=1, keepdims=True)
    tn = np.linalg.norm(t, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = (t / tn) @ (p / pn).T  # sim[i, q] = cos(pred q, true i)
    # Negated: a higher similarity is a lower (better) rank.
    return mid_rank(-sim, -np.diag(sim)) / len(p)


def discrimination_scores(
    pred_delta: np.ndarray,
    true_delta: np.ndarray,
    exclude: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    r"""cell-eval's discrimination score with the L1 distance (higher is better, best 1).

    For the prediction of condition :math:`p`, the L1 distances to the true deltas of all
    :math:`K` conditions are sorted; with :math:`\rho_p` the position of :math:`p`'s own truth,
    the score is :math:`1 - \rho_p / K`.

    Args:
      pred_delta, true_delta: ``[K, g]`` mean deltas vs control.
      exclude: per condition, a boolean ``[g]`` mask of genes to leave out (cell-eval drops the
        perturbed gene itself), or ``None``.

    Returns:
      ``[K]`` scores in ``(0, 1]``.
    """
    p = np.asarray(pred_delta, np.float64)
    t = np.asarray(true_delta, np.float64)
    k = len(p)
    dist = np.empty((k, k))
    for i in range(k):
        keep = slice(None) if exclude is None or exclude[i] is None else ~exclude[i]
        dist[i] = np.abs(t[:, keep] - p[i, keep]).sum(1)
    return 1.0 - mid_rank(dist, np.diag(dist).copy()) / k


def de_overlap(
    true_genes: Sequence[str], pred_genes: Sequence[str], k: int | None, metric: str = "overlap"
) -> float:
    r"""cell-eval's ``overlap_at_k`` / ``precision_at_k`` of two ranked DE gene lists.

    Both lists hold the significant genes (FDR < 0.05) sorted by decreasing
    :math:`|\log_2 \mathrm{FC}|`. With :math:`k' = \min(k, n)` where :math:`n` is the number
    of true (``overlap``: a recall) or predicted (``precision``) significant genes (all of them
    when ``k`` is None), the value is :math:`|T_{:k'} \cap P_{:k'}| / k'`; 0 when :math:`k'=0`.
    """
    if metric not in ("overlap", "precision"):
        raise ValueError(f"metric must be 'overlap' or 'precision', not {metric!r}")
    n = len(true_genes) if metric == "overlap" else len(pred_genes)
    k_eff = min(n, k) if k else n
    if k_eff == 0:
        return 0.0
    shared = set(true_genes[:k_eff]) & set(pred_genes[:k_eff])
    return len(shared) / k_eff


def de_direction_match(
    true_lfc: np.ndarray, pred_lfc: np.ndarray, true_significant: np.ndarray
) -> float:
    r"""cell-eval's ``de_direction_match``: sign agreement on the truly significant genes.

    .. math:: \frac{1}{|S|}\sum_{g\in S} [\mathrm{sign}\,\hat l_g = \mathrm{sign}\, l_g]

    with :math:`S` the genes with FDR < 0.05 in the truth's DE test and :math:`\hat l` the log
    fold changes of the prediction's own DE test; NaN when :math:`S` is empty.
    """
    sig = np.asarray(true_significant, bool)
    if not sig.any():
        return float("nan")
    return float(np.mean(np.sign(true_lfc[sig]) == np.sign(pred_lfc[sig])))
