"""Leaderboard: condmonge (defaults, tuned) vs every baseline on every held-out task, 3 seeds.

    python benchmarks/leaderboard.py [--quick] [--seeds 3] [--tasks norman_combination,...]
        [--tuned auto|none|RUN_DIR] [--steps N] [--claims in_distribution,representations]
        [--data-dir ../shared/data] [--out runs/leaderboard] [--reuse] [--no-docs]

Tasks (``benchmarks/tasks.py``): Norman K562 combination-out (the 5 pairs whose singles are
measured), McFaline cell-type-out (3 perturbations held out in U87MG only), Kang cell-type-out
(each cell type in turn), sci-Plex-like drug-out and dose-out, the synthetic unseen-drug task.
Each (task, seed) is one :func:`condmonge.evaluate.experiment.run_experiment`; the baselines
are deterministic (fixed split seed 0) and are fitted once, with the first seed.

- ``defaults``: the library's ``condmonge.Config()`` at run time with only the data keys, the
  training seed and the step budget (``--steps``) set; nothing chosen on these tests.
- ``tuned``: ``condmonge.tuning.tune`` (when the module exists) on each experiment's
  *training* split, its objective the condition-level validation of the training conditions;
  ``auto`` runs it here with a small budget, ``RUN_DIR`` reads
  ``RUN_DIR/<task>/tune/<tag>/best.yaml`` (an earlier run's ``--out``), ``none`` skips it
  ("not run" in the tables).
- ``2x``: the defaults at twice the steps, every seed, for the tasks of ``double`` (Norman);
  reported as the change from the defaults, mean over seeds.
- Claims' seeds: ``claim_seeds`` (3 for the in-distribution claim of a full run).
- Metrics: ``r2_delta_top20``, ``energy_distance``, ``r2_var`` (+ ``l2_uvp`` with known maps);
  mean ± sd over seeds of the per-seed means over conditions; **wins** = (condition, seed)
  pairs where the model beats the best non-oracle baseline of that metric (best by its mean).
- Claims: ``in_distribution`` (held-out cells of seen conditions: the conditional map vs one
  Monge gap map per condition) and ``representations`` (sci-Plex-like drug-out with smiles vs
  effect+smiles, dose-out with one-hot too, and drug-out as the training drugs grow).

Writes ``docs/results/leaderboard.csv`` (every row) and ``.json`` (the summary), regenerates
the tables of ``docs/RESULTS.md`` between ``<!-- leaderboard:start -->`` and
``<!-- leaderboard:end -->`` (unless ``--no-docs``) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def _out_dir(argv: list[str]) -> str:
    """``--out`` of the command line (read before JAX starts, for its compilation cache)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
        if arg == "--out" and i + 1 < len(argv):
            return argv[i + 1]
    return f"runs/{NAME}"


NAME = "leaderboard"
# Seeds of one task train the same shapes: JAX's persistent cache (inside --out, so a fresh
# run directory starts cold) compiles each training step once instead of once per seed.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(_out_dir(sys.argv)) / "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

import tasks as T  # noqa: E402
from _gen import MODEL, data_dir, run  # noqa: E402
from condmonge.config import Config, DataConfig  # noqa: E402
from condmonge.evaluate.experiment import _prepare, experiment_config_from_dict  # noqa: E402
from condmonge.evaluate.metrics import metric_higher_is_better  # noqa: E402

try:  # issue 13 part 3; without it the tables say "not run"
    from condmonge.tuning import parse_space, tune
except ImportError:
    parse_space = tune = None

METRICS = ["r2_delta_top20", "energy_distance", "r2_var", "l2_uvp"]
ROOT = Path(__file__).resolve().parents[1]
FULL = {
    "seeds": 3, "steps": 300, "kang_types": T.KANG_TYPES, "drugs": 40, "cells": 50,
    "synthetic_cells": 300, "oracle": True, "scaling": [10, 40, 187],
    "dose_embeddings": ["smiles", "onehot"], "in_dist_conditions": 6, "claim_seeds": 3,
    "tune_trials": 3, "tune_tasks": ["norman_combination", "mcfaline_cell_type"],
    "double": ["norman_combination"],
}  # fmt: skip
QUICK = {
    "seeds": 1, "steps": 100, "kang_types": ["CD14+Mono"], "drugs": 20, "cells": 30,
    "synthetic_cells": 100, "oracle": False, "scaling": [10, 20],
    "dose_embeddings": ["smiles", "onehot"], "in_dist_conditions": 4, "claim_seeds": 1,
    "tune_trials": 2, "tune_tasks": ["mcfaline_cell_type"], "double": ["mcfaline_cell_type"],
}  # fmt: skip
TASKS = [
    "norman_combination", "mcfaline_cell_type", "kang_cell_type", "sciplex_drug_out",
    "sciplex_dose_out", "synthetic_unseen",
]  # fmt: skip


def build_tasks(names: list[str], sizes: dict[str, Any], root: Path, out: Path) -> list[T.Task]:
    """The chosen tasks at the run's sizes (``tasks.py`` holds their definitions)."""
    makers = {
        "norman_combination": T.norman_combination,
        "mcfaline_cell_type": lambda: T.mcfaline_cell_type(out),
        "kang_cell_type": lambda: T.kang_cell_type(root, sizes["kang_types"]),
        "sciplex_drug_out": lambda: T.sciplex_drug_out(root, sizes["drugs"], sizes["cells"]),
        "sciplex_dose_out": lambda: T.sciplex_dose_out(root, sizes["drugs"], sizes["cells"]),
        "synthetic_unseen": lambda: T.synthetic_unseen(sizes["synthetic_cells"], sizes["oracle"]),
    }
    return [makers[n]() for n in names]


def with_model(
    tree: dict[str, Any], steps: int, seed: int, base: dict | None = None, kind: str | None = None
) -> dict:
    """``tree`` with its model section: ``base`` (a tuned config) or the defaults, + budget.

    Only the data keys of the task, the seed, quiet progress and (for the defaults) the step
    budget are set; everything else is the library's default at run time. ``kind`` sets
    ``data.validation_kind`` (for ``tune``, which sees the training split alone, so the kind
    of question cannot be inferred from the test conditions as ``run_experiment`` does).
    """
    model = json.loads(json.dumps(base)) if base else {}
    model.setdefault("data", {}).update(tree["model"]["data"])
    if kind is not None and "validation_kind" in DataConfig.model_fields:
        model["data"]["validation_kind"] = kind
    train = model.setdefault("train", {})
    train.update(seed=seed, progress=False, checkpoint_every=10**6)
    if base is None:
        train["steps"] = steps
    return {**tree, "model": model}


def run_variant(
    task: T.Task,
    variant: str,
    seeds: list[int],
    steps: int,
    out: Path,
    configs: dict[str, dict] | None = None,
    baselines: bool = True,
) -> pd.DataFrame:
    """Every (experiment, seed) of ``task`` for one model variant; rows tagged.

    Baselines are fitted with the first seed only (they do not depend on it) when
    ``baselines``; ``configs`` maps experiment tags to tuned config trees.
    """
    frames = []
    for i, seed in enumerate(seeds):
        for tag, tree in task.experiments.items():
            base = (configs or {}).get(tag)
            full = with_model(tree, steps, seed, base)
            if not (baselines and i == 0):
                full["baselines"] = []
            slug = variant.replace(", ", "_").replace(" ", "_")
            where = out / task.name / slug / f"{tag.replace('+', 'p')}_seed{seed}"
            rows, _ = run(full, where, f"{task.name}/{tag}")
            rows = rows.rename_axis("condition").reset_index()
            is_model = rows["method"] == MODEL
            rows["variant"] = rows["method"].where(~is_model, f"{MODEL} ({variant})")
            rows["seed"] = np.where(is_model, seed, -1)
            rows.insert(0, "task", task.name)
            rows.insert(1, "experiment", tag)
            frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def tune_configs(task: T.Task, sizes: dict[str, Any], tuned: str, out: Path) -> dict | None:
    """Tuned config trees by experiment tag, or ``None`` (not run / no ``condmonge.tuning``)."""
    if tuned == "none":
        return None
    if tuned != "auto":
        found = {
            tag: yaml.safe_load(p.read_text())
            for tag in task.experiments
            if (p := Path(tuned) / task.name / "tune" / tag / "best.yaml").is_file()
        }
        return found or None
    if tune is None or task.name not in sizes["tune_tasks"]:
        return None
    return {
        tag: tune_experiment(tree, task.kind, out / task.name / "tune" / tag, sizes)
        for tag, tree in task.experiments.items()
    }


def tune_experiment(tree: dict[str, Any], kind: str, where: Path, sizes: dict[str, Any]) -> dict:
    """Tune on the experiment's *training* split only; returns the best config tree.

    The split and the embeddings are those of the experiment (``_prepare``: the same code path
    as ``run_experiment``); the test cells never reach ``tune``. Its objective is the library's
    condition-level validation of held-out training conditions of the task's kind. The step
    budget is fixed (``train.steps`` leaves the space) so the tuned model trains as long as
    the defaults.
    """
    config = experiment_config_from_dict(with_model(tree, sizes["steps"], 0, None, kind), "tune")
    data = _prepare(config, Path("."))
    result = tune(
        data.train, config.model, parse_space({"train.steps": None}), sizes["tune_trials"],
        storage_dir=where, embeddings=data.embeddings, seed=0, progress=False,
    )  # fmt: skip
    return result.best_config.model_dump(mode="json")


def seed_table(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per (task, variant): mean ± sd over seeds of the per-seed means over conditions."""
    metrics = [m for m in metrics if m in rows and rows[m].notna().any()]
    per_seed = rows.groupby(["task", "variant", "seed"], sort=False)[metrics].mean()
    grouped = per_seed.groupby(level=["task", "variant"], sort=False)
    n = rows.groupby(["task", "variant"], sort=False).size().rename("n")
    return pd.concat([grouped.mean(), grouped.std(ddof=0).add_suffix("_sd"), n], axis=1)


def wins(rows: pd.DataFrame, metrics: list[str]) -> list[dict[str, Any]]:
    """Per task, model variant and metric: the best non-oracle baseline and the model's wins.

    The best baseline has the best mean over the task's conditions; a win is a (condition,
    seed) pair where the model is strictly better than it on that condition.
    """
    out = []
    base = rows[(rows["seed"] == -1) & ~rows["method"].str.endswith("_oracle")]
    for task, group in rows.groupby("task", sort=False):
        ref = base[base["task"] == task]
        for variant in group.loc[group["seed"] != -1, "variant"].unique():
            model = group[group["variant"] == variant]
            for m in [m for m in metrics if m in group and group[m].notna().any()]:
                means = ref.groupby("method")[m].mean().dropna()
                if means.empty:
                    continue
                high = metric_higher_is_better(m)
                best = str(means.idxmax() if high else means.idxmin())
                theirs = ref[ref["method"] == best].set_index("condition")[m]
                mine = model[m].to_numpy()
                other = theirs.reindex(model["condition"]).to_numpy()
                won = (mine > other) if high else (mine < other)
                out.append({
                    "task": task, "variant": variant, "metric": m, "best_baseline": best,
                    "model": float(model.groupby("seed")[m].mean().mean()),
                    "baseline": float(means[best]), "wins": int(won.sum()), "of": len(mine),
                })  # fmt: skip
    return out


def double_notes(rows: pd.DataFrame) -> dict[str, str]:
    """Per task with a 2x-steps run: its change in every metric vs the defaults, mean over the
    seeds both ran (each seed's mean over held-out conditions), and the R² change per seed."""
    notes = {}
    long = rows[rows["variant"] == f"{MODEL} (defaults, 2x steps)"]
    for task, group in long.groupby("task", sort=False):
        short = rows[(rows["task"] == task) & (rows["variant"] == f"{MODEL} (defaults)")]
        seeds = sorted(set(group["seed"]) & set(short["seed"]))
        metrics = [m for m in METRICS if m in group and group[m].notna().any()]
        delta = (
            group.groupby("seed")[metrics].mean().loc[seeds]
            - short.groupby("seed")[metrics].mean().loc[seeds]
        )
        change = ", ".join(f"{m} {delta[m].mean():+.3f}" for m in metrics)
        per_seed = ", ".join(f"{v:+.3f}" for v in delta["r2_delta_top20"])
        notes[task] = (
            f"Twice the steps vs the defaults, mean over seeds {seeds}: {change} "
            f"(r2_delta_top20 per seed: {per_seed})."
        )
    return notes


def fmt(value: float, sd: float | None = None) -> str:
    """``0.123 ± 0.045`` (sd omitted when absent or for deterministic baselines)."""
    if pd.isna(value):
        return "–"
    return f"{value:.3f}" if sd is None or pd.isna(sd) or sd == 0 else f"{value:.3f} ± {sd:.3f}"


def task_markdown(task: T.Task, table: pd.DataFrame, won: list[dict], tuned: str) -> str:
    """One task's table (methods x metrics, mean ± sd over seeds) and its win counts."""
    sub = table.loc[task.name]
    metrics = [m for m in METRICS if m in sub and sub[m].notna().any()]
    head = [f"{m} {'↑' if metric_higher_is_better(m) else '↓'}" for m in metrics]
    lines = [f"### {task.title}", "", *[f"{n}." for n in task.notes], ""]
    lines += ["| method | " + " | ".join(head) + " | n |", "|---" * (len(metrics) + 2) + "|"]
    for method, row in sub.iterrows():
        cells = [fmt(row[m], row.get(m + "_sd")) for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {int(row['n'])} |")
    if tuned != "run":
        lines.append(f"| {MODEL} (tuned) | " + " | ".join([tuned] * len(metrics)) + " | 0 |")
    oracle = "monge_gap_oracle"
    if oracle in sub.index and "l2_uvp" in metrics:
        for method in [m for m in sub.index if str(m).startswith(MODEL)]:
            ratio = sub.loc[method, "l2_uvp"] / sub.loc[oracle, "l2_uvp"]
            lines.append(f"\n{method}: L2-UVP {ratio:.2f} x the per-condition oracle's.")
    lines += [
        "",
        "Wins of (condition, seed) pairs over the best non-oracle baseline per metric:",
        "",
    ]
    for w in [w for w in won if w["task"] == task.name]:
        lines.append(
            f"- {w['variant']}, {w['metric']}: {w['wins']} of {w['of']} vs `{w['best_baseline']}`"
            f" (mean {w['model']:.3f} vs {w['baseline']:.3f})"
        )
    return "\n".join(lines)


def overview_markdown(won: list[dict[str, Any]]) -> str:
    """One line per (task, model variant, metric): the model's mean, the best baseline's, wins."""
    lines = [
        "| task | model | metric | model mean | best non-oracle baseline | its mean | beats it "
        "(mean over seeds) | wins (condition, seed) |",
        "|---" * 8 + "|",
    ]
    for w in won:
        high = metric_higher_is_better(w["metric"])
        beats = w["model"] > w["baseline"] if high else w["model"] < w["baseline"]
        lines.append(
            f"| {w['task']} | {w['variant']} | {w['metric']} {'↑' if high else '↓'} | "
            f"{w['model']:.3f} | {w['best_baseline']} | {w['baseline']:.3f} | "
            f"{'**yes**' if beats else 'no'} | {w['wins']} / {w['of']} |"
        )
    return "\n".join(lines)


def claim_in_distribution(sizes: dict[str, Any], seeds: list[int], out: Path) -> pd.DataFrame:
    """Held-out cells of seen conditions: the conditional map vs one Monge gap map per condition."""
    task = T.Task(
        "in_distribution", "In distribution: held-out cells of seen conditions", "random",
        {"synthetic": T.in_distribution(sizes["synthetic_cells"], sizes["in_dist_conditions"])},
        real=False,
    )  # fmt: skip
    return run_variant(task, "defaults", seeds, sizes["steps"], out)


def claim_representations(
    root: Path, sizes: dict[str, Any], out: Path, main: pd.DataFrame
) -> pd.DataFrame:
    """Drug representations on sci-Plex-like (seed 0): drug-out and dose-out, and drug scaling.

    Drug-out: ``smiles`` vs ``effect+smiles`` (effect signatures of the training drugs, unseen
    drugs inferred from structure); one-hot cannot place an unseen drug. Dose-out: the
    ``sizes['dose_embeddings']`` (of ``smiles``, ``effect``, ``onehot``). Scaling: drug-out
    with both at each ``sizes['scaling']`` drugs.
    The ``smiles`` runs at the main size are the leaderboard's own (seed 0), not rerun.
    """
    small = [n for n in sizes["scaling"] if n <= sizes["drugs"]]
    runs = [("drug-out", e, n) for n in small for e in ("smiles", "effect+smiles")]
    runs += [("dose-out", e, sizes["drugs"]) for e in sizes["dose_embeddings"]]
    runs += [("drug-out", e, n) for n in sizes["scaling"] if n > sizes["drugs"]
             for e in ("smiles", "effect+smiles")]  # the largest last  # fmt: skip
    frames = []
    for split, embedding, n in runs:
        name = {"drug-out": "sciplex_drug_out", "dose-out": "sciplex_dose_out"}[split]
        if embedding == "smiles" and n == sizes["drugs"] and name in set(main["task"]):
            rows = main[(main["task"] == name) & main["seed"].isin([0, -1])].copy()
            rows = rows[~rows["variant"].str.contains("tuned|2x")]
        else:
            make = T.sciplex_drug_out if split == "drug-out" else T.sciplex_dose_out
            task = make(root, n, sizes["cells"], embedding)
            name = f"{split}_{embedding.replace('+', 'p')}_{n}drugs"
            task = T.Task(name, task.title, task.kind, task.experiments)
            rows = run_variant(task, "defaults", [0], sizes["steps"], out / "representations")
        rows.insert(1, "split", split)
        rows.insert(2, "embedding", embedding)
        rows.insert(3, "drugs", n)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def claims_markdown(in_dist: pd.DataFrame | None, reps: pd.DataFrame | None) -> list[str]:
    """The two claims' tables."""
    lines = []
    if in_dist is not None:
        table = seed_table(in_dist, METRICS).loc["in_distribution"]
        metrics = [m for m in METRICS if m in table and table[m].notna().any()]
        lines += [
            "### In distribution: held-out cells of seen conditions",
            "",
            "Synthetic convex maps (d = 50, generator seed 1, every drug seen, a quarter of "
            "each condition's cells held out); `monge_gap` = one Monge gap map per "
            "condition trained on that condition's training cells.",
            "",
            "| method | " + " | ".join(metrics) + " |",
            "|---" * (len(metrics) + 1) + "|",
        ]
        for method, row in table.iterrows():
            lines.append(
                f"| {method} | "
                + " | ".join(fmt(row[m], row.get(m + "_sd")) for m in metrics)
                + " |"
            )
        if "monge_gap" in table.index:
            ratio = {
                m: table.loc[f"{MODEL} (defaults)", m] / table.loc["monge_gap", m] for m in metrics
            }
            lines += [
                "",
                "condmonge / monge_gap: " + ", ".join(f"{m} {r:.2f}" for m, r in ratio.items()),
            ]
        lines.append("")
    if reps is not None:
        model = reps[reps["method"] == MODEL]
        other = reps[(reps["method"] == "linear")]
        key = ["split", "embedding", "drugs"]
        a = model.groupby(key, sort=False)[["l2_uvp", "r2_delta_top20", "energy_distance"]].mean()
        b = other.groupby(key, sort=False)[["l2_uvp"]].mean().add_prefix("linear_")
        both = a.join(b)
        lines += [
            "### Drug representations (sci-Plex-like, seed 0)",
            "",
            "| split | embedding | drugs | condmonge l2_uvp ↓ | linear l2_uvp ↓ | "
            "condmonge r2_delta_top20 ↑ | condmonge energy ↓ |",
            "|---" * 7 + "|",
        ]
        for (split, emb, n), row in both.iterrows():
            lines.append(
                f"| {split} | {emb} | {n} | {fmt(row['l2_uvp'])} | "
                f"{fmt(row['linear_l2_uvp'])} | {fmt(row['r2_delta_top20'])} | "
                f"{fmt(row['energy_distance'])} |"
            )
        lines.append("")
    return lines


def tuned_status(task: T.Task, sizes: dict[str, Any], tuned: str) -> str:
    """What the tables say until (unless) the tuned phase of ``task`` runs."""
    if tuned == "none":
        return "not run (--tuned none)"
    if tuned == "auto" and tune is None:
        return "not run (no condmonge.tuning)"
    if tuned == "auto" and task.name not in sizes["tune_tasks"]:
        return "not run (time budget)"
    return "not run"


def tuned_config_record(tasks: list[T.Task], tuned: str, out: Path) -> dict[str, Any]:
    """The best configs the tuned rows trained with, by task and experiment (for the JSON)."""
    where = out if tuned == "auto" else Path(tuned)
    record: dict[str, Any] = {}
    for task in tasks:
        for tag in task.experiments:
            path = where / task.name / "tune" / tag / "best.yaml"
            if tuned != "none" and path.is_file():
                record.setdefault(task.name, {})[tag] = yaml.safe_load(path.read_text())
    return record


def run_phase(task: T.Task, phase: str, sizes: dict[str, Any], args, out: Path):
    """One phase of a task: ``defaults`` (every seed, with the baselines), ``tuned`` (when
    ``tune`` ran) or ``2x`` (twice the steps, every seed); ``None`` when it does not apply."""
    seeds = list(range(sizes["seeds"]))
    if phase == "defaults":
        return run_variant(task, "defaults", seeds, sizes["steps"], out)
    if phase == "tuned":
        configs = tune_configs(task, sizes, args.tuned, out)
        return (
            run_variant(task, "tuned", seeds, sizes["steps"], out, configs, False)
            if configs
            else None
        )
    if task.name in sizes["double"]:
        return run_variant(task, "defaults, 2x steps", seeds, 2 * sizes["steps"], out,
                           baselines=False)  # fmt: skip
    return None


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one seed")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=None, help="training steps (defaults)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list of tasks")
    parser.add_argument("--tuned", default="auto", help="auto, none or a RUN_DIR of best.yaml")
    parser.add_argument("--claims", default="in_distribution,representations")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=f"runs/{NAME}")
    parser.add_argument("--results", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--no-docs", action="store_true", help="do not edit docs/RESULTS.md")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs in --out")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({k: v for k, v in (("seeds", args.seeds), ("steps", args.steps)) if v})
    names = [n for n in args.tasks.split(",") if n]
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {TASKS}")
    root = data_dir(args.data_dir, NAME, T.KANG, T.SMILES)
    out = Path(args.out)
    start = time.perf_counter()
    frames, tuned_ran, times = [], {}, {}
    tasks = build_tasks(names, sizes, root, out)
    # Every task's defaults first, then tuned, then 2x steps: a run cut short keeps the most.
    for phase in ("defaults", "tuned", "2x"):
        for task in tasks:
            t0 = time.perf_counter()
            rows = run_phase(task, phase, sizes, args, out)
            # Every XLA CPU executable keeps its memory mappings while jax caches it; one
            # 45-minute run reached vm.max_map_count (65,530) in the tuned phase and LLVM
            # failed ("Cannot allocate memory", then a segfault). Drop them between phases.
            jax.clear_caches()
            if rows is None:
                continue
            if phase == "defaults":
                tuned_ran[task.name] = tuned_status(task, sizes, args.tuned)
            if phase == "tuned":
                tuned_ran[task.name] = "run"
            frames.append(rows)
            times[f"{task.name}/{phase}"] = round(time.perf_counter() - t0, 1)
            done = pd.concat(frames, ignore_index=True)
            report(args, sizes, [t for t in tasks if t.name in set(done["task"])], done,
                   None, None, tuned_ran, times, time.perf_counter() - start, False)  # fmt: skip
    rows = pd.concat(frames, ignore_index=True)
    claims = set(args.claims.split(","))
    in_dist = reps = None
    if "in_distribution" in claims:
        in_dist = claim_in_distribution(sizes, list(range(sizes["claim_seeds"])), out)
    if "representations" in claims:
        reps = claim_representations(root, sizes, out, rows)
    seconds = time.perf_counter() - start
    report(args, sizes, tasks, rows, in_dist, reps, tuned_ran, times, seconds)


def report(args, sizes, tasks, rows, in_dist, reps, tuned_ran, times, seconds, final=True):
    """Write the CSV, the JSON, the RESULTS.md tables and (``final``) print the JSON line."""
    table = seed_table(rows, METRICS)
    won = wins(rows, METRICS)
    command = "python " + " ".join(
        shlex.quote(a) for a in ["benchmarks/leaderboard.py", *sys.argv[1:]]
    )
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    parts = {"leaderboard": rows, "in_distribution": in_dist, "representations": reps}
    every = [f.assign(part=k) for k, f in parts.items() if f is not None]
    pd.concat(every, ignore_index=True).to_csv(results / "leaderboard.csv", index=False)
    record = {
        "benchmark": NAME, "command": command, "quick": args.quick, "seeds": sizes["seeds"],
        "steps": sizes["steps"], "tasks": [t.name for t in tasks],
        "tuned": tuned_ran,
        "tuned_configs": tuned_config_record(tasks, args.tuned, Path(args.out)),
        "summary": {f"{t}/{v}": {m: round(float(r[m]), 4) for m in METRICS if pd.notna(r.get(m))}
                    for (t, v), r in table.iterrows()},
        "wins": won, "seconds": round(seconds, 1), "task_seconds": times,
        "load_average_1min": round(os.getloadavg()[0], 2), "complete": final,
    }  # fmt: skip
    (results / "leaderboard.json").write_text(json.dumps(record, indent=2) + "\n")
    body = [f"Command: `{command}`  ", f"Wall time: {seconds:.0f} s "
            f"(load average {record['load_average_1min']}); {sizes['steps']} training steps "
            f"(the budget; the library's default is {Config().train.steps}, with early stopping), "
            f"seeds 0..{sizes['seeds'] - 1}."
            + ("" if final else " **Partial: the run had not finished.**"), ""]  # fmt: skip
    body += ["### Overview", "", overview_markdown(won), ""]
    longer = double_notes(rows)
    body += [task_markdown(t, table, won, tuned_ran[t.name]) + "\n" for t in tasks]
    body += ["### Training twice as long", "", *[f"- {k}: {v}" for k, v in longer.items()], ""]
    body += claims_markdown(in_dist, reps)
    (results / "leaderboard.md").write_text("# Leaderboard\n\n" + "\n".join(body))
    if not args.no_docs:
        update_results(ROOT / "docs" / "RESULTS.md", "\n".join(body))
    brief = {k: record[k] for k in ("benchmark", "quick", "seeds", "steps", "tuned", "seconds")}
    brief["wins"] = {f"{w['task']}/{w['variant']}/{w['metric']}": f"{w['wins']}/{w['of']}"
                     for w in won}  # fmt: skip
    brief["report"] = str(results / "leaderboard.md")
    if final:
        print(json.dumps(brief))


START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def update_results(path: Path, body: str) -> None:
    """Replace the text between the markers (a new section at the end when they are absent)."""
    text = path.read_text()
    block = f"{START}\n{body.rstrip()}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Leaderboard (issue 13)\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
