"""Metrics, baselines, evaluation of predictions, experiments and reports."""

from condmonge.evaluate import baselines, metrics
from condmonge.evaluate.baselines import BASELINES, make_baseline
from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets
from condmonge.evaluate.report import plot_summary, summarize, to_markdown

__all__ = [
    "BASELINES",
    "baselines",
    "evaluate_prediction",
    "make_baseline",
    "metrics",
    "plot_summary",
    "summarize",
    "to_markdown",
    "truth_sets",
]
