"""Tables and figures comparing methods across conditions, ready for a paper.

Inputs are *per-condition* tables (one row per method × condition, one column per metric), as
returned by :func:`condmonge.evaluate.evaluation.evaluate_prediction` and concatenated.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import skew  # noqa: E402

from condmonge.data.pca import principal_axes  # noqa: E402
from condmonge.data.validation import describe  # noqa: E402
from condmonge.evaluate.metrics import METRIC_DIRECTIONS, metric_higher_is_better  # noqa: E402
from condmonge.files import replace_atomically  # noqa: E402

__all__ = [
    "HEADLINE_METRICS",
    "best_baseline",
    "metric_columns",
    "plot_history",
    "plot_mean_deltas",
    "plot_metric_per_condition",
    "plot_moments",
    "plot_pca",
    "plot_summary",
    "summarize",
    "to_markdown",
    "validation_line",
]

#: The metrics shown in report tables (all are in the per-condition CSV).
HEADLINE_METRICS = (
    "r2_delta_top20",
    "r2_delta_all",
    "pearson_r2_mean_top50",
    "energy_distance",
    "mmd_rbf",
    "sinkhorn_div_eps0.1",
    "w2_entropic",
    "r2_var",
    "mae_skew",
    "l2_uvp",
)


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The metric columns of a per-condition table (known metrics first, then the rest).

    Args:
      table: a per-condition table (one column per metric).
    """
    known = [m for m in METRIC_DIRECTIONS if m in table.columns]
    extra = [
        c
        for c in table.columns
        if c not in known and c.startswith(("r2_", "pearson_r2_", "mae_", "mmd", "sinkhorn"))
    ]
    return known + extra


def summarize(per_condition: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over conditions: one row per method, ``metric`` and ``metric_sd`` columns.

    NaN values (e.g. R² on a condition whose truth does not move) are skipped.

    Args:
      per_condition: rows = method x condition, with a ``method`` column.
    """
    cols = metric_columns(per_condition)
    grouped = per_condition.groupby("method", sort=False)[cols]
    mean, sd = grouped.mean(), grouped.std(ddof=0).add_suffix("_sd")
    order = [c for name in cols for c in (name, f"{name}_sd")]
    return pd.concat([mean, sd], axis=1)[order]


def best_baseline(summary: pd.DataFrame, model: str, metric: str = "r2_delta_top20") -> str:
    """The non-model method with the best mean ``metric`` (oracles see test cells: excluded).

    Args:
      summary: :func:`summarize` output (index = methods).
      model: the model's method name (excluded).
      metric: the column that decides.
    """
    keep = [m for m in summary.index if m != model and not str(m).endswith("_oracle")]
    others = summary.loc[keep, metric].dropna()
    if others.empty:
        raise ValueError(f"no baseline has a value for '{metric}'")
    return str(others.idxmax() if metric_higher_is_better(metric) else others.idxmin())


def to_markdown(summary: pd.DataFrame, metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """A Markdown table, ``mean ± sd`` per cell, the best method of each column in bold.

    Args:
      summary: :func:`summarize` output.
      metrics: the columns to show (those present).
    """
    metrics = [m for m in metrics if m in summary.columns]
    header = ["method"] + [f"{m} {'↑' if metric_higher_is_better(m) else '↓'}" for m in metrics]
    best = {}
    for m in metrics:
        col = summary[m].dropna()
        if not col.empty:
            best[m] = col.idxmax() if metric_higher_is_better(m) else col.idxmin()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary.iterrows():
        cells = []
        for m in metrics:
            text = "n/a" if pd.isna(row[m]) else f"{row[m]:.4g} ± {row[m + '_sd']:.2g}"
            cells.append(f"**{text}**" if best.get(m) == method else text)
        lines.append("| " + " | ".join([str(method)] + cells) + " |")
    return "\n".join(lines) + "\n"


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    plt.close(fig)
    return Path(path)


def plot_summary(
    per_condition: pd.DataFrame, path: str | Path, metrics: Sequence[str] = HEADLINE_METRICS
) -> Path:
    """Bar chart (mean ± sd over conditions) of the headline metrics for every method.

    Args:
      per_condition: rows = method x condition.
      path: the PNG to write (atomically).
      metrics: the metrics shown (those present).
    """
    metrics = [m for m in metrics if m in per_condition.columns]
    methods = list(dict.fromkeys(per_condition["method"]))
    ncols = min(5, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 3.3 * nrows), squeeze=False)
    colors = plt.cm.tab10(np.arange(len(methods)) % 10)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, metrics, strict=False):
        sub = per_condition.groupby("method")[name]
        means, sds = sub.mean().reindex(methods), sub.std(ddof=0).reindex(methods)
        ax.bar(range(len(methods)), means, yerr=sds, color=colors)
        ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right", fontsize=7)
        arrow = "higher" if metric_higher_is_better(name) else "lower"
        ax.set_title(f"{name}\n({arrow} is better)", fontsize=8)
    return _save(fig, path)


def plot_metric_per_condition(
    per_condition: pd.DataFrame, metric: str, model: str, baseline: str, path: str | Path
) -> Path:
    """Per-condition ``metric`` of the model (y) against a baseline (x), with the diagonal.

    Args:
      per_condition: rows = method x condition.
      metric: the metric plotted.
      model: the method on the y axis; baseline: the method on the x axis.
      path: the PNG to write.
    """
    wide = per_condition.pivot_table(index=per_condition.index, columns="method", values=metric)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    x, y = wide[baseline], wide[model]
    ax.scatter(x, y, s=18)
    lo = np.nanmin([x.min(), y.min()])
    hi = np.nanmax([x.max(), y.max()])
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    if len(wide) <= 25:
        for name, xi, yi in zip(wide.index, x, y, strict=True):
            ax.annotate(str(name).split("|")[0], (xi, yi), fontsize=6)
    better = "above" if metric_higher_is_better(metric) else "below"
    ax.set_xlabel(f"{baseline}: {metric}")
    ax.set_ylabel(f"{model}: {metric}")
    ax.set_title(f"per condition ({model} better {better} the diagonal)", fontsize=8)
    return _save(fig, path)


def _block_means(pred: ad.AnnData, key: str) -> np.ndarray:
    rows = (pred.obs["condition_id"].astype(str) == key).to_numpy()
    return np.asarray(pred.X[rows]).mean(0)


def plot_mean_deltas(
    predictions: Mapping[str, ad.AnnData],
    truth,
    path: str | Path,
    top: int = 20,
) -> Path:
    """Predicted vs true mean delta (vs control) on each condition's top-``top`` DE features.

    ``truth`` is a :class:`~condmonge.evaluate.evaluation.TruthSets`; one panel per method.

    Args:
      predictions: ``{method: predicted AnnData}``.
      truth: the observed cells (:class:`~condmonge.evaluate.evaluation.TruthSets`).
      path: the PNG to write.
      top: DE features per condition.
    """
    fig, axes = plt.subplots(
        1, len(predictions), figsize=(3.6 * len(predictions), 3.6), squeeze=False
    )
    for ax, (method, pred) in zip(axes[0], predictions.items(), strict=True):
        xs, ys = [], []
        for key in dict.fromkeys(pred.obs["condition_id"].astype(str)):
            cond = truth.conditions[key]
            control = truth.control[cond.cell_type].mean(0)
            true_delta = truth.treated[key].mean(0) - control
            idx = np.argsort(-np.abs(true_delta))[:top]
            xs.append(true_delta[idx])
            ys.append((_block_means(pred, key) - control)[idx])
        x, y = np.concatenate(xs), np.concatenate(ys)
        ax.scatter(x, y, s=5, alpha=0.6)
        lim = np.abs(np.concatenate([x, y])).max() * 1.05
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        r2 = 1 - np.sum((y - x) ** 2) / np.sum((x - x.mean()) ** 2)
        ax.set_title(f"{method} (pooled R² = {r2:.2f})", fontsize=9)
        ax.set_xlabel(f"true mean delta (top {top} DE)")
        ax.set_ylabel("predicted mean delta")
    return _save(fig, path)


def plot_moments(predictions: Mapping[str, ad.AnnData], truth, path: str | Path) -> Path:
    """Per-feature variance and skewness, predicted vs true, pooled over conditions.

    Args:
      predictions: ``{method: predicted AnnData}``.
      truth: the observed cells (:class:`~condmonge.evaluate.evaluation.TruthSets`).
      path: the PNG to write.
    """
    fig, axes = plt.subplots(
        2, len(predictions), figsize=(3.4 * len(predictions), 6.4), squeeze=False
    )
    for j, (method, pred) in enumerate(predictions.items()):
        tv, pv, ts, ps = [], [], [], []
        for key in dict.fromkeys(pred.obs["condition_id"].astype(str)):
            rows = (pred.obs["condition_id"].astype(str) == key).to_numpy()
            p, t = np.asarray(pred.X[rows]), truth.treated[key]
            tv.append(t.var(0))
            pv.append(p.var(0))
            with warnings.catch_warnings():
                # Near-constant features (e.g. unexpressed genes): their skew is noise anyway.
                warnings.simplefilter("ignore", RuntimeWarning)
                ts.append(skew(t, axis=0))
                ps.append(skew(p, axis=0))
        for i, (name, x, y) in enumerate((("variance", tv, pv), ("skewness", ts, ps))):
            x, y = np.nan_to_num(np.concatenate(x)), np.nan_to_num(np.concatenate(y))
            ax = axes[i, j]
            ax.scatter(x, y, s=3, alpha=0.4)
            lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"{method}: {name}", fontsize=9)
            ax.set_xlabel(f"true {name}")
            ax.set_ylabel(f"predicted {name}")
    return _save(fig, path)


def plot_pca(
    predictions: Mapping[str, ad.AnnData],
    truth,
    keys: Sequence[str],
    path: str | Path,
    max_points: int = 300,
    seed: int = 0,
) -> Path:
    """PCA (fitted on control + true cells) of control, true and predicted cells per condition.

    Args:
      predictions: ``{method: predicted AnnData}``.
      truth: the observed cells (:class:`~condmonge.evaluate.evaluation.TruthSets`).
      keys: the condition keys, one row of panels each.
      path: the PNG to write.
      max_points: cells drawn per population at most (seeded with ``seed``).
    """
    rng = np.random.default_rng(seed)

    def sample(a):
        return a if len(a) <= max_points else a[rng.choice(len(a), max_points, replace=False)]

    fig, axes = plt.subplots(
        len(keys), len(predictions), figsize=(3.3 * len(predictions), 3.0 * len(keys)),
        squeeze=False,
    )  # fmt: skip
    for i, key in enumerate(keys):
        cond = truth.conditions[key]
        control, treated = sample(truth.control[cond.cell_type]), sample(truth.treated[key])
        both = np.concatenate([control, treated])
        pcs = principal_axes(both, 2)
        mean, proj = pcs.mean, pcs.components
        for j, (method, pred) in enumerate(predictions.items()):
            rows = (pred.obs["condition_id"].astype(str) == key).to_numpy()
            ax = axes[i, j]
            for arr, label, color in (
                (control, "control", "0.7"),
                (treated, "true", "tab:blue"),
                (sample(np.asarray(pred.X[rows])), "predicted", "tab:orange"),
            ):
                z = (arr - mean) @ proj
                ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.5, c=color, label=label)
            ax.set_title(f"{method}: {key.split('|')[0]}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and j == 0:
                ax.legend(fontsize=6, markerscale=2)
    return _save(fig, path)


def validation_line(record: Mapping | None) -> str:
    """One line saying how the model's parameters were chosen, for every report.

    Args:
      record: ``ConditionalMonge.validation`` (``None`` for a checkpoint that predates it).
    """
    return describe(dict(record) if record else None)


def plot_history(history: pd.DataFrame, path: Path) -> Path:
    """Training and validation loss against step (``history`` as ``ConditionalMonge.history``)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if len(history):
        ax.plot(history["step"], history["loss"], label="training loss", lw=1)
        if "val_loss" in history:
            val = history.dropna(subset=["val_loss"])
            ax.plot(val["step"], val["val_loss"], "o-", label="validation loss", ms=3)
        if "val_fit" in history:  # the value that selects the parameters
            val = history.dropna(subset=["val_fit"])
            ax.plot(val["step"], val["val_fit"], "s-", label="validation fit", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return Path(path)
