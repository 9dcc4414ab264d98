"""Metric tables and plots comparing methods across conditions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from condmonge.evaluate import metrics as M  # noqa: E402

__all__ = ["METRICS", "evaluate_methods", "plot_summary", "summarize", "to_markdown"]

# name -> (function of (pred, truth, control), higher is better)
METRICS = {
    "r2_mean_delta_top20": (
        lambda p, t, c: M.mean_delta_r2(p, t, c, M.top_de_features(t, c, 20)),
        True,
    ),
    "r2_mean_delta_all": (lambda p, t, c: M.mean_delta_r2(p, t, c), True),
    "r2_pearson_means_top50": (
        lambda p, t, c: M.mean_r2_pearson(p, t, M.top_de_features(t, c, 50)),
        True,
    ),
    "energy_distance": (lambda p, t, c: M.energy_distance(p, t), False),
    "mmd_rbf": (lambda p, t, c: M.mmd_rbf(p, t), False),
    "sinkhorn_div_eps0.1": (lambda p, t, c: M.sinkhorn_divergence(p, t, 0.1), False),
}


def evaluate_methods(
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    truth: Mapping[str, np.ndarray],
    control: Mapping[str, np.ndarray],
) -> pd.DataFrame:
    """Long table (method, condition, metric, value) for every method and condition.

    Args:
      predictions: ``{method: {condition: [n, d]}}``.
      truth: ``{condition: [m, d]}`` observed treated cells.
      control: ``{condition: [n_c, d]}`` the control cells the predictions started from.
    """
    rows = []
    for method, by_condition in predictions.items():
        for cond, pred in by_condition.items():
            for name, (fn, _) in METRICS.items():
                rows.append(
                    {
                        "method": method,
                        "condition": cond,
                        "metric": name,
                        "value": fn(pred, truth[cond], control[cond]),
                    }
                )
    return pd.DataFrame(rows)


def summarize(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over conditions: one row per method, ``metric`` and ``metric_sd`` columns."""
    grouped = long.groupby(["method", "metric"])["value"]
    mean = grouped.mean().unstack()
    sd = grouped.std(ddof=0).unstack().add_suffix("_sd")
    order = [c for name in METRICS for c in (name, f"{name}_sd")]
    return pd.concat([mean, sd], axis=1)[order]


def to_markdown(summary: pd.DataFrame) -> str:
    """A Markdown table, ``mean ± sd`` per cell, with the direction of each metric."""
    header = ["method"] + [f"{m} ({'↑' if up else '↓'})" for m, (_, up) in METRICS.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary.iterrows():
        cells = [f"{row[m]:.4g} ± {row[m + '_sd']:.2g}" for m in METRICS]
        lines.append("| " + " | ".join([str(method)] + cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(long: pd.DataFrame, path: str | Path) -> Path:
    """Bar chart (mean ± sd over conditions) of every metric for every method."""
    methods = list(dict.fromkeys(long["method"]))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4))
    for ax, (name, (_, up)) in zip(axes, METRICS.items(), strict=True):
        sub = long[long.metric == name].groupby("method")["value"]
        means, sds = sub.mean().reindex(methods), sub.std(ddof=0).reindex(methods)
        ax.bar(range(len(methods)), means, yerr=sds, color=plt.cm.tab10(np.arange(len(methods))))
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(f"{name} ({'higher' if up else 'lower'} is better)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
