"""An experiment: split → train → predict → evaluate the model and every baseline → report.

Everything an experiment does is in one validated YAML file (:class:`ExperimentConfig`); the
model's own settings are its ``model`` section (a full :class:`condmonge.Config`). Outputs in the
run directory:

- ``report.md``: the split, timings, the metrics table (model vs baselines, mean ± sd over the
  held-out conditions) and the figures below;
- ``per_condition.csv`` (every metric, method and condition), ``summary.csv``, ``summary.json``;
- ``summary.png`` (headline metrics), ``per_condition.png`` (model vs best baseline, per
  condition), ``mean_deltas.png`` (predicted vs true mean deltas), ``moments.png`` (variance and
  skewness), ``pca.png`` (control / true / predicted cells for a few conditions);
- ``predictions.h5ad`` (the model's), ``model/`` (checkpoint), ``experiment.yaml`` (the config).

This module is the top of the evaluation layer: it drives the model facade
(:class:`condmonge.ConditionalMonge`), the baselines and the reports.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import pandas as pd
import yaml
from pydantic import Field, field_validator

from condmonge.conditions.effect import effect_embedding, infer_effect_embedding
from condmonge.conditions.smiles import parse_smiles_spec, read_smiles_table, reduce_embedding
from condmonge.config import Config, StrictModel, read_yaml_mapping, validate_tree
from condmonge.data.anndata_io import feature_matrix, read_h5ad, write_h5ad_atomic
from condmonge.data.prepare import label_cells
from condmonge.data.splits import SplitPlan, make_split, split_summary
from condmonge.datasets import convex_task, norman_mcfaline, sciplex_like
from condmonge.errors import ConfigError
from condmonge.evaluate.baselines import MongeGapPerCondition, make_baseline
from condmonge.evaluate.evaluation import TruthSets, evaluate_prediction, truth_sets
from condmonge.evaluate.report import (
    best_baseline,
    plot_history,
    plot_mean_deltas,
    plot_metric_per_condition,
    plot_moments,
    plot_pca,
    plot_summary,
    summarize,
    to_markdown,
    validation_line,
)
from condmonge.files import replace_atomically
from condmonge.model import ConditionalMonge

__all__ = ["ExperimentConfig", "ExperimentResult", "load_experiment_config", "run_experiment"]

MODEL_NAME = "condmonge"


class SplitSettings(StrictModel):
    """Arguments of :func:`condmonge.data.splits.make_split`."""

    kind: str = "condition"
    holdout: list[str | float] | None = Field(
        default=None, description="labels, perturbations, cell types, or doses (numbers or 'A=10')"
    )
    fraction: float | None = None
    n_folds: int = Field(default=5, gt=1)
    fold: int = Field(default=0, ge=0)
    control_test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    seed: int = 0


class SyntheticSettings(StrictModel):
    """Arguments of :func:`condmonge.datasets.convex_task` (``dataset: synthetic``)."""

    n_conditions: int = Field(default=20, gt=1)
    n_features: int = Field(default=10, gt=0)
    n_cells: int = Field(default=500, gt=1)
    embedding_dim: int = Field(default=8, gt=0)
    n_unseen: int = Field(default=5, ge=0)
    seed: int = 0


class SciplexLikeSettings(StrictModel):
    """Arguments of :func:`condmonge.datasets.sciplex_like` (``dataset: sciplex_like``).

    ``smiles`` is a CSV of drug names and SMILES (relative to the config file; ``None``: the
    package's small example set); ``n_drugs`` keeps its first drugs.
    """

    smiles: str | None = None
    n_drugs: int | None = Field(default=None, gt=1)
    doses: list[float] = [10.0, 100.0, 1000.0, 10000.0]
    cell_types: list[str] = ["A549", "K562", "MCF7"]
    n_cells: int = Field(default=100, gt=1)
    n_features: int = Field(default=50, gt=0)
    seed: int = 0


class EffectSettings(StrictModel):
    """The ``effect`` embeddings (:func:`condmonge.conditions.effect.effect_embedding`).

    Fitted on the training split only; with ``effect+smiles:PATH`` the drugs without training
    cells are inferred from structure (:func:`~condmonge.conditions.effect.
    infer_effect_embedding`).
    """

    n_components: int = Field(default=10, gt=0)
    method: Literal["mean_shift", "energy_mds", "ot_mds"] = "mean_shift"
    infer: Literal["ridge", "knn"] = "ridge"


class MongeGapSettings(StrictModel):
    """The per-condition Monge gap baseline (ott-jax estimator, one per condition)."""

    steps: int = Field(default=500, gt=0)
    n_pca: int | None = Field(default=None, gt=0)
    seed: int = 0


class EvaluationSettings(StrictModel):
    """How predictions are scored and plotted."""

    max_cells: int = Field(default=500, gt=1, description="subsample size per population")
    plot_conditions: int = Field(default=3, ge=1, description="conditions in pca.png")
    headline_metric: str = "r2_delta_top20"
    seed: int = 0


class ExperimentConfig(StrictModel):
    """One experiment, validated; unknown keys are errors.

    ``dataset`` is ``norman_mcfaline`` (shipped), ``synthetic`` (known OT maps, L2-UVP
    reported), ``sciplex_like`` (semi-synthetic sci-Plex: real SMILES, known maps, L2-UVP) or a
    path to an ``.h5ad`` (relative to the config file).

    ``embeddings`` maps an obs column to a CSV table, a SMILES spec ``smiles:PATH`` /
    ``smiles,kind=both,pca=32:PATH`` (RDKit features fitted on the training drugs), ``effect``
    (response signatures of the training split), ``effect+smiles...:PATH`` (the same, with
    drugs unseen in training inferred from structure) or, for the cell-type column,
    ``controls`` (each cell type's mean control profile, for cell-type-out splits). Paths are
    relative to the config file. The model and every baseline get the same tables.
    """

    dataset: str = "norman_mcfaline"
    synthetic: SyntheticSettings = SyntheticSettings()
    sciplex_like: SciplexLikeSettings = SciplexLikeSettings()
    split: SplitSettings = SplitSettings()
    embeddings: dict[str, str] = Field(
        default_factory=dict,
        description="obs column -> CSV table, smiles:PATH, effect or effect+smiles:PATH",
    )
    effect: EffectSettings = EffectSettings()
    baselines: list[str] = ["identity", "mean_shift", "additive", "linear", "monge_gap"]
    monge_gap: MongeGapSettings = MongeGapSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    model: Config = Config()

    @field_validator("embeddings")
    @classmethod
    def _check_embeddings(cls, value: dict[str, str]) -> dict[str, str]:
        for key, spec in value.items():
            rest = spec[len("effect+") :] if spec.startswith("effect+") else spec
            if spec in ("effect", "controls"):
                continue
            try:
                parsed = parse_smiles_spec(rest)
            except ConfigError as exc:
                raise ValueError(f"{key}: {exc}") from None
            if spec.startswith("effect+") and parsed is None:
                raise ValueError(f"{key}: '{spec}' must be effect+smiles[,OPTION=VALUE...]:PATH")
        return value


def experiment_config_from_dict(tree: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a nested dict; unknown or ill-typed keys are a :class:`ConfigError`.

    Args:
      tree: nested mapping (parsed YAML).
      source: where it came from, for messages.
    """
    return validate_tree(ExperimentConfig, tree or {}, source)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment YAML file (safe loader: data only).

    Args:
      path: the YAML file.

    Raises:
      ConfigError: missing file, invalid YAML, unknown or ill-typed key.
    """
    return experiment_config_from_dict(read_yaml_mapping(path, "experiment config"), str(path))


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns (everything is also written to ``out``)."""

    per_condition: pd.DataFrame
    summary: pd.DataFrame
    predictions: dict[str, ad.AnnData]
    record: dict[str, Any]


@dataclass
class _Data:
    """An experiment's data once loaded and split (see :func:`_prepare`)."""

    train: ad.AnnData
    test: ad.AnnData
    truth: TruthSets
    embeddings: dict[str, Any]
    true_map: Callable | None
    sides: pd.DataFrame


@dataclass
class _Run:
    """What an experiment produced, for :func:`_write_report`."""

    config: ExperimentConfig
    out: Path
    data: _Data
    model: ConditionalMonge
    predictions: dict[str, ad.AnnData]
    per_condition: pd.DataFrame
    summary: pd.DataFrame
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _load(config: ExperimentConfig, base: Path):
    """The AnnData, embedding sources, true maps (synthetic data) and holdout of an experiment.

    Embedding sources are tables or callables ``(train_adata, fit_names) -> table``, resolved
    by :func:`_resolve_embeddings` once the training split is known.
    """
    embeddings: dict[str, Any] = {
        key: _embedding_source(config, base, spec) for key, spec in config.embeddings.items()
    }
    holdout = config.split.holdout
    true_map: Callable | None = None
    if config.dataset == "norman_mcfaline":
        adata = norman_mcfaline()
    elif config.dataset == "synthetic":
        adata, table, true_map, unseen = _synthetic(config)
        embeddings.setdefault(config.model.data.condition_key, table)
        if holdout is None and config.split.kind == "condition" and unseen:
            holdout = unseen
    elif config.dataset == "sciplex_like":
        adata, true_map = _sciplex_like(config, base)
    else:
        adata = read_h5ad(base / config.dataset)
    return adata, embeddings, true_map, holdout


def _synthetic(config: ExperimentConfig):
    """``dataset: synthetic``: the AnnData, its embedding table, true maps and unseen names."""
    task = convex_task(**config.synthetic.model_dump())
    dose_key = config.model.data.dose_key

    def true_map(cond, x):
        return task.true_map(cond.label(), x, cond.doses[0] if dose_key else None)

    return task.adata, task.embeddings, true_map, list(task.unseen)


def _sciplex_like(config: ExperimentConfig, base: Path):
    """``dataset: sciplex_like``: the AnnData and its true maps."""
    d, s = config.model.data, config.sciplex_like
    if (d.condition_key, d.dose_key, d.cell_type_key) != ("condition", "dose", "cell_type"):
        raise ConfigError(
            "dataset sciplex_like needs model.data.condition_key: condition, dose_key: dose "
            "and cell_type_key: cell_type"
        )
    smiles = read_smiles_table(base / s.smiles) if s.smiles is not None else None
    task = sciplex_like(smiles, control=d.control, **s.model_dump(exclude={"smiles"}))

    def true_map(cond, x):
        return task.true_map(cond.label(), cond.doses[0], cond.cell_type, x)

    return task.adata, true_map


def _embedding_source(config: ExperimentConfig, base: Path, spec: str):
    """A table (plain CSV) or a callable ``(train, fit_names) -> table`` for one spec."""
    d = config.model.data
    if spec == "controls":
        return _controls_source(config)
    structure = parse_smiles_spec(spec[len("effect+") :] if spec.startswith("effect+") else spec)
    if structure is not None:
        structure = replace(structure, path=str(base / structure.path))
    if spec != "effect" and not spec.startswith("effect+"):
        if structure is None:
            return pd.read_csv(base / spec, index_col=0)

        def smiles(train, fit_names):
            return structure.load(fit_names=fit_names, control=d.control)

        return smiles

    def effect(train, fit_names):
        table = _effect_table(config, train, fit_names)
        if structure is None:
            return table
        return infer_effect_embedding(
            table,
            structure.load(fit_names=fit_names, control=d.control),
            method=config.effect.infer,
        )

    return effect


def _effect_table(config: ExperimentConfig, train: ad.AnnData, fit_names: list[str]):
    """The ``effect`` embedding of the training split (drugs seen only in combinations skipped)."""
    d, e = config.model.data, config.effect
    singles = [n for n in fit_names if n in set(train.obs[d.condition_key].astype(str))]
    return effect_embedding(
        train,
        d.condition_key,
        d.control,
        train_conditions=fit_names,
        missing="skip",
        cell_type_key=d.cell_type_key,
        dose_key=d.dose_key,
        n_components=min(e.n_components, max(len(singles), 1)),
        method=e.method,
        use_rep=d.use_rep,
    )


def _controls_source(config: ExperimentConfig):
    """Cell-type context from control cells: each type's mean control profile (training split).

    The means are projected on ``effect.n_components`` principal axes fitted on the training
    cell types; a held-out cell type gets its row from its own control cells, which are
    observed (they are what its prediction starts from).
    """
    d = config.model.data

    def controls(train, fit_names):
        if d.cell_type_key is None:
            raise ConfigError("'controls' embeddings need model.data.cell_type_key")
        is_control = (train.obs[d.condition_key].astype(str) == str(d.control)).to_numpy()
        types = train.obs[d.cell_type_key].astype(str).to_numpy()
        x = feature_matrix(train, d.use_rep)
        names = sorted(set(types[is_control]))
        means = pd.DataFrame(
            [x[is_control & (types == t)].mean(axis=0) for t in names], index=names
        )
        k = min(config.effect.n_components, len(fit_names))
        return reduce_embedding(means, k, fit_names)

    return controls


def _resolve_embeddings(config: ExperimentConfig, sources: dict[str, Any], train: ad.AnnData):
    """Call every embedding source with the training split's names.

    Sources of the cell-type column get the training cell types, the others the training
    perturbations; the same tables then go to the model and to every baseline.
    """
    d = config.model.data
    cells = label_cells(train, d.spec)
    perts = sorted({p for c in cells.conditions for p in c.perturbations})
    types = sorted({str(c.cell_type) for c in cells.conditions if c.cell_type is not None})
    return {
        key: source(train, types if key == d.cell_type_key else perts)
        if callable(source)
        else source
        for key, source in sources.items()
    }


def run_experiment(
    config: ExperimentConfig,
    out: str | Path,
    *,
    config_dir: str | Path = ".",
    log: Callable[[str], None] | None = print,
) -> ExperimentResult:
    """Run ``config`` and write its report to ``out`` (see the module docstring).

    Args:
      config: the validated experiment.
      out: the run directory (created).
      config_dir: the directory relative paths of ``config`` are taken from.
      log: called with one line per stage; ``None`` is silent.

    Returns:
      :class:`ExperimentResult` (everything is also written to ``out``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _msg: None)
    data = _prepare(config, Path(config_dir))
    say(
        f"split {config.split.kind}: {len(data.truth.conditions)} test conditions, "
        f"{data.train.n_obs} training cells"
    )
    timings: dict[str, float] = {}
    model, predictions = _run_model(config, data, out, timings)
    notes = _run_baselines(config, data, predictions, timings, say)
    start = time.perf_counter()
    per_condition = _evaluate_all(config, data, predictions)
    timings["evaluate"] = time.perf_counter() - start
    run = _Run(
        config, out, data, model, predictions, per_condition, summarize(per_condition), timings,
        notes,
    )  # fmt: skip
    record = _write_report(run)
    return ExperimentResult(per_condition, run.summary, predictions, record)


def _prepare(config: ExperimentConfig, base: Path) -> _Data:
    """Load the data, split it, resolve the embeddings on the training side, group the truth."""
    d = config.model.data
    adata, embeddings, true_map, holdout = _load(config, base)
    s = config.split
    plan = SplitPlan(**(s.model_dump() | {"holdout": holdout}))
    split = make_split(adata, plan, d.spec, key_added="split")
    sides = split_summary(adata, "split")
    train = adata[(split == "train").to_numpy()].copy()
    test = adata[(split == "test").to_numpy()].copy()
    embeddings = _resolve_embeddings(config, embeddings, train)
    return _Data(train, test, truth_sets(test, d), embeddings, true_map, sides)


def _run_model(config: ExperimentConfig, data: _Data, out: Path, timings: dict[str, float]):
    """Train the model on the training split and predict every test condition."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sampled with replacement")
        model = ConditionalMonge(config.model).fit(
            data.train,
            embeddings=data.embeddings,
            checkpoint_dir=out / "model",
            test_conditions=list(data.truth.conditions.values()),  # the kind of validation
        )
    timings["train_" + MODEL_NAME] = time.perf_counter() - start
    start = time.perf_counter()
    predictions = {MODEL_NAME: model.predict(data.test, list(data.truth.conditions.values()))}
    timings["predict_" + MODEL_NAME] = time.perf_counter() - start
    return model, predictions


def _run_baselines(config, data: _Data, predictions, timings, say) -> list[str]:
    """Fit every baseline, add its predictions; returns the notes for the report."""
    d, s = config.model.data, config.split
    notes = []
    for name in config.baselines:
        start = time.perf_counter()
        if name == "monge_gap":
            m = config.monge_gap
            baseline = MongeGapPerCondition(
                steps=m.steps, n_pca=m.n_pca, loss=config.model.loss, seed=m.seed
            )
            if s.kind == "random":
                baseline.fit(data.train, d.spec)
            else:
                # Out-of-distribution splits leave no training cells of a test condition: the
                # condition-specific model is then an oracle fitted on the test cells.
                name = "monge_gap_oracle"
                notes.append(
                    "`monge_gap_oracle` is one Monge gap map per held-out condition fitted on "
                    "that condition's *test* cells (an in-sample upper reference, not a "
                    "competitor): condition-specific models cannot predict unseen conditions."
                )
                baseline.fit(data.test, d.spec)
        else:
            baseline = make_baseline(name).fit(data.train, d.spec, embeddings=data.embeddings)
        say(f"baseline {name}")
        predictions[name] = baseline.predict(data.test, list(data.truth.conditions.values()))
        timings[f"fit_predict_{name}"] = time.perf_counter() - start
    return notes


def _evaluate_all(config: ExperimentConfig, data: _Data, predictions) -> pd.DataFrame:
    """Every metric of every method on every test condition (one row per method x condition)."""
    ev, d = config.evaluation, config.model.data
    sources = feature_matrix(data.test, d.use_rep) if data.true_map is not None else None
    return pd.concat(
        [
            evaluate_prediction(
                pred,
                data.truth,
                d,
                method=method,
                true_map=data.true_map,
                sources=sources,
                max_cells=ev.max_cells,
                seed=ev.seed,
            )
            for method, pred in predictions.items()
        ]
    )


def _write_report(run: _Run) -> dict[str, Any]:
    """Write the tables, figures, ``summary.json`` and ``report.md``; returns the record."""
    out, config = run.out, run.config
    # Every file is written under a temporary name and renamed: never half-written.
    replace_atomically(
        out / "per_condition.csv", lambda t: run.per_condition.to_csv(t, index_label="condition")
    )
    replace_atomically(out / "summary.csv", lambda t: run.summary.to_csv(t, index_label="method"))
    write_h5ad_atomic(run.predictions[MODEL_NAME], out / "predictions.h5ad")
    _write_text(
        out / "experiment.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    # Top-k DE sets exist only when there are more than k features.
    ev = config.evaluation
    headline = ev.headline_metric if ev.headline_metric in run.summary else "r2_delta_all"
    rival = best_baseline(run.summary, MODEL_NAME, headline) if len(run.summary) > 1 else MODEL_NAME
    figures = _write_figures(run, headline, rival)
    record = _record(run, headline, rival)
    _write_text(out / "summary.json", json.dumps(record, indent=2))
    _write_text(out / "report.md", _report_markdown(run, record, headline, figures))
    return record


def _write_figures(run: _Run, headline: str, rival: str) -> list[str]:
    """The figures of the report (model and best baseline); returns their file names."""
    out, truth = run.out, run.data.truth
    shown = {MODEL_NAME: run.predictions[MODEL_NAME]}
    if rival != MODEL_NAME:
        shown[rival] = run.predictions[rival]
    keys = list(truth.conditions)[: run.config.evaluation.plot_conditions]
    plot_summary(run.per_condition, out / "summary.png")
    history = run.model.history  # the training curve: loss.png beside history.csv
    replace_atomically(out / "history.csv", lambda t: history.to_csv(t, index=False))
    replace_atomically(out / "loss.png", lambda t: plot_history(history, t), suffix=".png")
    figures = ["summary.png", "loss.png"]
    if rival != MODEL_NAME:
        plot_metric_per_condition(
            run.per_condition, headline, MODEL_NAME, rival, out / "per_condition.png"
        )
        figures.append("per_condition.png")
    plot_mean_deltas(shown, truth, out / "mean_deltas.png")
    plot_moments(shown, truth, out / "moments.png")
    plot_pca(shown, truth, keys, out / "pca.png")
    return figures + ["mean_deltas.png", "moments.png", "pca.png"]


def _record(run: _Run, headline: str, rival: str) -> dict[str, Any]:
    """The ``summary.json`` record: split, steps, timings, best baseline and wins."""
    per_condition = run.per_condition
    wins = {}
    model_rows = per_condition[per_condition["method"] == MODEL_NAME][headline]
    if rival != MODEL_NAME:
        rival_rows = per_condition[per_condition["method"] == rival][headline]
        wins = {"conditions": int((model_rows > rival_rows).sum()), "of": int(len(model_rows))}
    return {
        "dataset": run.config.dataset,
        "split": run.config.split.model_dump(mode="json"),
        "test_conditions": list(run.data.truth.conditions),
        "steps": int(run.model.state.step),
        "seconds": {k: round(v, 2) for k, v in run.timings.items()},
        "validation": run.model.validation,
        "best_baseline": rival,
        "model_beats_best_baseline_on": wins,
        "summary": json.loads(run.summary.to_json(orient="index")),
    }


def _report_markdown(run: _Run, record: dict[str, Any], headline: str, figures: list[str]) -> str:
    """The text of ``report.md``."""
    timings, wins, rival = (
        run.timings,
        record["model_beats_best_baseline_on"],
        record["best_baseline"],
    )
    lines = [
        f"# condmonge experiment: {run.config.dataset}, {run.config.split.kind} split",
        "",
        f"Held-out (test) conditions: {len(run.data.truth.conditions)}. "
        f"Training stopped at step {record['steps']}; "
        f"training took {timings['train_' + MODEL_NAME]:.0f} s, evaluation "
        f"{timings['evaluate']:.1f} s.",
        "",
        validation_line(run.model.validation) + ".",
        "",
        "## Split",
        "",
        _frame_markdown(run.data.sides),
        "",
        "## Metrics (mean ± sd over held-out conditions; best in bold)",
        "",
        to_markdown(run.summary),
    ]
    if wins:
        lines += [
            f"On `{headline}`, {MODEL_NAME} beats the best baseline (`{rival}`) on "
            f"{wins['conditions']} of {wins['of']} conditions.",
            "",
        ]
    lines += [f"- {n}" for n in dict.fromkeys(run.notes)]
    lines += [
        "",
        "Metric names: `r2_*` coefficient of determination, `pearson_r2_*` squared Pearson; "
        "`mean` = mean expression, `delta` = mean change vs control; `topK` = the K features "
        "that move most in the truth. All metrics per condition: `per_condition.csv`.",
        "",
        "## Figures",
        "",
    ]
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def _frame_markdown(frame: pd.DataFrame) -> str:
    header = ["", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)
