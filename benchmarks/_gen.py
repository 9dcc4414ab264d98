"""Shared plumbing of the ``gen_*`` generalisation benchmarks (not a benchmark itself).

Each benchmark runs one or more experiments (:func:`condmonge.evaluate.experiment.
run_experiment`), pools the per-condition metrics, writes ``summary.csv``, ``per_condition.csv``
and ``report.md`` into its report directory and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import pandas as pd  # noqa: E402

from condmonge.train.sharding import use_cpu_cores  # noqa: E402

use_cpu_cores()  # as the command line does: one JAX CPU device per core, before any array

MODEL = "condmonge"


def data_dir(given: str | None, benchmark: str, *files: str) -> Path:
    """The shared data directory (``--data-dir`` or ``<repo>/../shared/data``), checked."""
    root = Path(given) if given else Path(__file__).resolve().parents[2] / "shared" / "data"
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        fail(benchmark, f"shared data not found: {root / missing[0]} (pass --data-dir)")
    return root


def fail(benchmark: str, message: str) -> None:
    """Print the one JSON error line and exit 2."""
    print(json.dumps({"benchmark": benchmark, "error": message}))
    sys.exit(2)


def train_section(steps: int, cells: int, conditions: int, seed: int = 0) -> dict[str, Any]:
    """The ``model.train`` section shared by the benchmarks (quiet, fixed number of steps)."""
    return {
        "steps": steps,
        "learning_rate": 0.003,
        "cells_per_condition": cells,
        "conditions_per_step": conditions,
        "validate_every": max(steps // 3, 1),  # validation passes over every condition
        "checkpoint_every": 10**6,
        "progress": False,
        "seed": seed,
    }


REUSE = "--reuse" in sys.argv


def run(tree: dict[str, Any], out: Path, tag: str) -> tuple[pd.DataFrame, float]:
    """Run one experiment config (a dict) into ``out``; per-condition rows tagged ``tag``.

    With ``--reuse`` on the command line, a run whose ``out`` already holds the same
    ``experiment.yaml`` and its ``per_condition.csv`` is read back instead of rerun.
    """
    import warnings

    import yaml

    from condmonge.evaluate.experiment import experiment_config_from_dict, run_experiment

    config = experiment_config_from_dict(tree, tag)
    saved = out / "experiment.yaml"
    if REUSE and saved.is_file() and (out / "per_condition.csv").is_file():
        if yaml.safe_load(saved.read_text()) == config.model_dump(mode="json"):
            rows = pd.read_csv(out / "per_condition.csv", index_col=0)
            rows.insert(0, "run", tag)
            return rows, 0.0
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_experiment(config, out, log=None)
    seconds = time.perf_counter() - start
    rows = result.per_condition.copy()
    rows.insert(0, "run", tag)
    return rows, seconds


def pool(rows: pd.DataFrame, metrics: list[str], by: list[str] | None = None) -> pd.DataFrame:
    """Mean, sd and count of ``metrics`` over conditions per method (and ``by`` columns)."""
    keys = [*(by or []), "method"]
    metrics = [m for m in metrics if m in rows.columns]
    grouped = rows.groupby(keys, sort=False)[metrics]
    out = pd.concat(
        [grouped.mean(), grouped.std(ddof=0).add_suffix("_sd"), grouped.size().rename("n")],
        axis=1,
    )
    return out


def table_markdown(summary: pd.DataFrame, metrics: list[str]) -> str:
    """``mean ± sd`` per metric, one row per index entry."""
    metrics = [m for m in metrics if m in summary.columns]
    index_names = [str(n) for n in summary.index.names]
    lines = [
        "| " + " | ".join([*index_names, *metrics, "n"]) + " |",
        "|" + "---|" * (len(index_names) + len(metrics) + 1),
    ]
    for key, row in summary.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        cells = [f"{row[m]:.3f} ± {row[m + '_sd']:.3f}" for m in metrics]
        lines.append("| " + " | ".join([*map(str, key), *cells, str(int(row["n"]))]) + " |")
    return "\n".join(lines)


def nested(summary: pd.DataFrame, metrics: list[str]) -> dict[str, Any]:
    """The summary as a JSON-able nested dict ``{key: {metric: mean}}``."""
    out: dict[str, Any] = {}
    for key, row in summary.iterrows():
        name = "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
        out[name] = {m: round(float(row[m]), 4) for m in metrics if m in row and pd.notna(row[m])}
    return out


def write_report(
    out: Path, title: str, command: str, summary: pd.DataFrame, metrics: list[str],
    rows: pd.DataFrame, seconds: float, notes: list[str],
) -> None:  # fmt: skip
    """``summary.csv``, ``per_condition.csv`` and ``report.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv")
    rows.to_csv(out / "per_condition.csv", index_label="condition")
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {seconds:.0f} s.",
        "",
        "Mean ± sd over held-out conditions (pooled over runs).",
        "",
        table_markdown(summary, metrics),
        "",
        *[n if not n or n.startswith(("|", "#")) else f"- {n}" for n in notes],
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
