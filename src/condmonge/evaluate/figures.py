"""Side-by-side reports of scored predictions: leaderboard table and figure, scatter plots.

Input is the table of :func:`condmonge.evaluate.scoring.score_predictions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from condmonge.evaluate.scoring import higher_is_better  # noqa: E402

__all__ = [
    "LEADERBOARD_METRICS",
    "common_conditions",
    "leaderboard",
    "leaderboard_markdown",
    "plot_leaderboard",
    "plot_scatter",
]

#: The metrics of published benchmarks shown by default, in the docs' order.
LEADERBOARD_METRICS = (
    "pearson_delta",
    "pearson_delta_de20",
    "pearson_delta_de100",
    "cmonge_r2_mean_de50",
    "cosine_logfc",
    "rank_cosine_logfc",
    "discrimination_score_l1",
    "de_overlap_at_N",
    "de_precision_at_N",
    "de_direction_match",
    "mmd_rbf",
    "energy_distance",
)


def common_conditions(table: pd.DataFrame) -> list[str]:
    """Conditions scored for every method (a fair leaderboard compares on these only)."""
    per_method = table.groupby("method", sort=False)["condition"].apply(set)
    shared = set.intersection(*per_method) if len(per_method) else set()
    return [c for c in dict.fromkeys(table["condition"]) if c in shared]


def leaderboard(
    table: pd.DataFrame, metrics: Sequence[str] = LEADERBOARD_METRICS, common: bool = True
) -> pd.DataFrame:
    """Mean over conditions of each metric, one row per method (NaN skipped).

    With ``common`` (default) only the conditions every method predicted are averaged, so
    that a method is not ranked on easier or fewer conditions than another.
    """
    metrics = [m for m in metrics if m in table.columns]
    if common:
        table = table[table["condition"].isin(common_conditions(table))]
    return table.groupby("method", sort=False)[metrics].mean()


def _ranks(board: pd.DataFrame) -> pd.DataFrame:
    """Rank of each method per metric (1 = best, by the metric's direction)."""
    return pd.DataFrame(
        {m: board[m].rank(ascending=not higher_is_better(m), method="min") for m in board.columns}
    )


def leaderboard_markdown(table: pd.DataFrame, metrics: Sequence[str] = LEADERBOARD_METRICS) -> str:
    """Markdown table of :func:`leaderboard`; arrows give directions, the best is bold."""
    board = leaderboard(table, metrics)
    ranks = _ranks(board)
    header = ["method"] + [f"{m} {'↑' if higher_is_better(m) else '↓'}" for m in board.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in board.iterrows():
        cells = [str(method)]
        for m, v in row.items():
            text = "nan" if v != v else f"{v:.3f}"
            cells.append(f"**{text}**" if ranks.loc[method, m] == 1 else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_leaderboard(
    table: pd.DataFrame, path: str | Path, metrics: Sequence[str] = LEADERBOARD_METRICS
) -> Path:
    """Heat map methods x metrics coloured by rank (1 = best), annotated with the mean value."""
    board = leaderboard(table, metrics)
    ranks = _ranks(board)
    fig, ax = plt.subplots(
        figsize=(1.0 + 0.95 * board.shape[1], 1.2 + 0.5 * board.shape[0]), constrained_layout=True
    )
    image = ax.imshow(
        ranks.to_numpy(float), cmap="RdYlGn_r", vmin=1, vmax=max(len(board), 2), aspect="auto"
    )
    for i in range(board.shape[0]):
        for j in range(board.shape[1]):
            v = board.iloc[i, j]
            ax.text(j, i, "nan" if v != v else f"{v:.3g}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(board.shape[1]))
    ax.set_xticklabels(
        [f"{m} {'↑' if higher_is_better(m) else '↓'}" for m in board.columns],
        rotation=40, ha="right", fontsize=8,
    )  # fmt: skip
    ax.set_yticks(range(board.shape[0]))
    ax.set_yticklabels(board.index)
    fig.colorbar(image, ax=ax, label="rank (1 = best)", shrink=0.8)
    n = len(common_conditions(table))
    ax.set_title(f"mean over the {n} conditions all methods predicted; colour = rank")
    return _save(fig, path)


def plot_scatter(table: pd.DataFrame, path: str | Path, max_panels: int = 12) -> Path:
    """Predicted vs true mean delta of each condition's top-20 DE genes, one panel a condition.

    Uses ``table.attrs['top_de_deltas']`` (kept by ``score_predictions``); the conditions that
    every method predicted come first, up to ``max_panels``; one colour per method.
    """
    deltas = table.attrs.get("top_de_deltas", {})
    shared = common_conditions(table)
    keys = shared + [c for c in dict.fromkeys(table["condition"]) if c not in shared]
    keys = keys[:max_panels]
    methods = list(dict.fromkeys(table["method"]))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    cols = min(4, max(len(keys), 1))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows + 0.4), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for ax, key in zip(axes.flat, keys, strict=False):
        entry = deltas.get(key, {})
        true = np.asarray(entry.get("truth", []))
        for m in methods:
            if m in entry:
                ax.scatter(true, entry[m], s=10, alpha=0.7, color=colours[m])
        if true.size:
            lim = [float(true.min()), float(true.max())]
            ax.plot(lim, lim, color="grey", lw=0.8)
        ax.set_title(key.split("|")[0][:30], fontsize=8)
        ax.set_xlabel("true mean delta", fontsize=7)
        ax.set_ylabel("predicted mean delta", fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[m]) for m in methods]
    fig.legend(handles, methods, loc="outside upper center", ncols=min(len(methods), 6))
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
