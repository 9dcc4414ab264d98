"""Metrics, baselines and reports."""

from condmonge.evaluate import baselines, metrics
from condmonge.evaluate.report import evaluate_methods, plot_summary, summarize, to_markdown

__all__ = ["baselines", "evaluate_methods", "metrics", "plot_summary", "summarize", "to_markdown"]
