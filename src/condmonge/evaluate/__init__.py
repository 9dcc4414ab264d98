"""Metrics, baselines, evaluation of predictions, experiments and reports."""

from condmonge.evaluate import baselines, metrics
from condmonge.evaluate.baselines import BASELINES, make_baseline
from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets
from condmonge.evaluate.report import plot_summary, summarize, to_markdown
from condmonge.evaluate.scoring import baseline_predictions, score_predictions

__all__ = [
    "BASELINES",
    "baseline_predictions",
    "baselines",
    "evaluate_prediction",
    "make_baseline",
    "metrics",
    "plot_summary",
    "score_predictions",
    "summarize",
    "to_markdown",
    "truth_sets",
]
