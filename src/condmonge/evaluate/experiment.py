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
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from condmonge.config import Config
from condmonge.data.anndata_io import feature_matrix, read_h5ad, write_h5ad_atomic
from condmonge.data.splits import SplitPlan, make_split, split_summary
from condmonge.errors import ConfigError
from condmonge.evaluate.baselines import MongeGapPerCondition, make_baseline
from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets
from condmonge.evaluate.report import (
    best_baseline,
    plot_mean_deltas,
    plot_metric_per_condition,
    plot_moments,
    plot_pca,
    plot_summary,
    summarize,
    to_markdown,
)
from condmonge.files import replace_atomically

__all__ = ["ExperimentConfig", "ExperimentResult", "load_experiment_config", "run_experiment"]

MODEL_NAME = "condmonge"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSettings(_Strict):
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


class SyntheticSettings(_Strict):
    """Arguments of :func:`condmonge.datasets.convex_task` (``dataset: synthetic``)."""

    n_conditions: int = Field(default=20, gt=1)
    n_features: int = Field(default=10, gt=0)
    n_cells: int = Field(default=500, gt=1)
    embedding_dim: int = Field(default=8, gt=0)
    n_unseen: int = Field(default=5, ge=0)
    seed: int = 0


class SciplexLikeSettings(_Strict):
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


class EffectSettings(_Strict):
    """The ``effect`` embeddings (:func:`condmonge.conditions.effect.effect_embedding`).

    Fitted on the training split only; with ``effect+smiles:PATH`` the drugs without training
    cells are inferred from structure (:func:`~condmonge.conditions.effect.
    infer_effect_embedding`).
    """

    n_components: int = Field(default=10, gt=0)
    method: Literal["mean_shift", "energy_mds", "ot_mds"] = "mean_shift"
    infer: Literal["ridge", "knn"] = "ridge"


class MongeGapSettings(_Strict):
    """The per-condition Monge gap baseline (ott-jax estimator, one per condition)."""

    steps: int = Field(default=500, gt=0)
    n_pca: int | None = Field(default=None, gt=0)
    seed: int = 0


class EvaluationSettings(_Strict):
    """How predictions are scored and plotted."""

    max_cells: int = Field(default=500, gt=1, description="subsample size per population")
    plot_conditions: int = Field(default=3, ge=1, description="conditions in pca.png")
    headline_metric: str = "r2_delta_top20"
    seed: int = 0


class ExperimentConfig(_Strict):
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
        from condmonge.conditions.smiles import parse_smiles_spec

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
    """Validate a nested dict; unknown or ill-typed keys are a :class:`ConfigError`."""
    try:
        return ExperimentConfig.model_validate(tree or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: '{where}': {err['msg']}") from None


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment YAML file (safe loader: data only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config '{path}' does not exist")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return experiment_config_from_dict(tree or {}, str(path))


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns (everything is also written to ``out``)."""

    per_condition: pd.DataFrame
    summary: pd.DataFrame
    predictions: dict[str, ad.AnnData]
    record: dict[str, Any]


def _load(config: ExperimentConfig, base: Path):
    """The AnnData, embedding sources, true maps (synthetic data) and holdout of an experiment.

    Embedding sources are tables or callables ``(train_adata, fit_names) -> table``, resolved
    by :func:`_resolve_embeddings` once the training split is known.
    """
    true_map: Callable | None = None
    embeddings: dict[str, Any] = {
        key: _embedding_source(config, base, spec) for key, spec in config.embeddings.items()
    }
    holdout = config.split.holdout
    d = config.model.data
    if config.dataset == "norman_mcfaline":
        from condmonge.datasets import norman_mcfaline

        adata = norman_mcfaline()
    elif config.dataset == "synthetic":
        from condmonge.datasets import convex_task

        s = config.synthetic
        task = convex_task(
            n_conditions=s.n_conditions,
            n_features=s.n_features,
            n_cells=s.n_cells,
            embedding_dim=s.embedding_dim,
            n_unseen=s.n_unseen,
            seed=s.seed,
        )
        adata = task.adata
        embeddings.setdefault(d.condition_key, task.embeddings)
        dose_key = d.dose_key

        def true_map(cond, x):
            return task.true_map(cond.label(), x, cond.doses[0] if dose_key else None)

        if holdout is None and config.split.kind == "condition" and task.unseen:
            holdout = list(task.unseen)
    elif config.dataset == "sciplex_like":
        from condmonge.conditions.smiles import read_smiles_table
        from condmonge.datasets import sciplex_like

        s = config.sciplex_like
        sciplex = sciplex_like(
            read_smiles_table(base / s.smiles) if s.smiles is not None else None,
            n_drugs=s.n_drugs,
            doses=s.doses,
            cell_types=s.cell_types,
            n_cells=s.n_cells,
            n_features=s.n_features,
            control=d.control,
            seed=s.seed,
        )
        adata = sciplex.adata
        if (d.condition_key, d.dose_key, d.cell_type_key) != ("condition", "dose", "cell_type"):
            raise ConfigError(
                "dataset sciplex_like needs model.data.condition_key: condition, dose_key: dose "
                "and cell_type_key: cell_type"
            )

        def true_map(cond, x):
            return sciplex.true_map(cond.label(), cond.doses[0], cond.cell_type, x)

    else:
        adata = read_h5ad(base / config.dataset)
    return adata, embeddings, true_map, holdout


def _embedding_source(config: ExperimentConfig, base: Path, spec: str):
    """A table (plain CSV) or a callable ``(train, fit_names) -> table`` for one spec."""
    from condmonge.conditions.smiles import parse_smiles_spec

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

    e = config.effect

    def effect(train, fit_names):
        from condmonge.conditions.effect import effect_embedding, infer_effect_embedding

        singles = [n for n in fit_names if n in set(train.obs[d.condition_key].astype(str))]
        table = effect_embedding(
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
        if structure is None:
            return table
        return infer_effect_embedding(
            table, structure.load(fit_names=fit_names, control=d.control), method=e.infer
        )

    return effect


def _controls_source(config: ExperimentConfig):
    """Cell-type context from control cells: each type's mean control profile (training split).

    The means are projected on ``effect.n_components`` principal axes fitted on the training
    cell types; a held-out cell type gets its row from its own control cells, which are
    observed (they are what its prediction starts from).
    """
    d = config.model.data

    def controls(train, fit_names):
        from condmonge.conditions.smiles import reduce_embedding
        from condmonge.data.anndata_io import feature_matrix

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
    from condmonge.data.prepare import label_cells

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
    """Run ``config`` and write its report to ``out`` (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _msg: None)
    d = config.model.data
    adata, embeddings, true_map, holdout = _load(config, Path(config_dir))
    s = config.split
    plan = SplitPlan(**(s.model_dump() | {"holdout": holdout}))
    split = make_split(adata, plan, d.spec, key_added="split")
    sides = split_summary(adata, "split")
    train = adata[(split == "train").to_numpy()].copy()
    test = adata[(split == "test").to_numpy()].copy()
    embeddings = _resolve_embeddings(config, embeddings, train)
    truth = truth_sets(test, d)
    conditions = list(truth.conditions.values())
    say(f"split {s.kind}: {len(conditions)} test conditions, {train.n_obs} training cells")

    timings: dict[str, float] = {}
    predictions: dict[str, ad.AnnData] = {}
    start = time.perf_counter()
    from condmonge.model import ConditionalMonge

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sampled with replacement")
        model = ConditionalMonge(config.model).fit(
            train, embeddings=embeddings, checkpoint_dir=out / "model"
        )
    timings["train_" + MODEL_NAME] = time.perf_counter() - start
    start = time.perf_counter()
    predictions[MODEL_NAME] = model.predict(test, conditions)
    timings["predict_" + MODEL_NAME] = time.perf_counter() - start

    notes = []
    for name in config.baselines:
        start = time.perf_counter()
        if name == "monge_gap":
            m = config.monge_gap
            baseline = MongeGapPerCondition(
                steps=m.steps, n_pca=m.n_pca, loss=config.model.loss, seed=m.seed
            )
            if s.kind == "random":
                baseline.fit(train, d.spec)
            else:
                # Out-of-distribution splits leave no training cells of a test condition: the
                # condition-specific model is then an oracle fitted on the test cells.
                name = "monge_gap_oracle"
                notes.append(
                    "`monge_gap_oracle` is one Monge gap map per held-out condition fitted on "
                    "that condition's *test* cells (an in-sample upper reference, not a "
                    "competitor): condition-specific models cannot predict unseen conditions."
                )
                baseline.fit(test, d.spec)
        else:
            baseline = make_baseline(name).fit(train, d.spec, embeddings=embeddings)
        say(f"baseline {name}")
        predictions[name] = baseline.predict(test, conditions)
        timings[f"fit_predict_{name}"] = time.perf_counter() - start

    ev = config.evaluation
    sources = feature_matrix(test, d.use_rep) if true_map is not None else None
    start = time.perf_counter()
    per_condition = pd.concat(
        [
            evaluate_prediction(
                pred,
                truth,
                d,
                method=method,
                true_map=true_map,
                sources=sources,
                max_cells=ev.max_cells,
                seed=ev.seed,
            )
            for method, pred in predictions.items()
        ]
    )
    timings["evaluate"] = time.perf_counter() - start
    summary = summarize(per_condition)
    record = _write_report(
        config, out, per_condition, summary, predictions, truth, sides, timings, notes, model
    )
    return ExperimentResult(per_condition, summary, predictions, record)


def _write_report(
    config, out, per_condition, summary, predictions, truth, sides, timings, notes, model
):
    ev = config.evaluation
    # Every file is written under a temporary name and renamed: never half-written.
    replace_atomically(
        out / "per_condition.csv", lambda t: per_condition.to_csv(t, index_label="condition")
    )
    replace_atomically(out / "summary.csv", lambda t: summary.to_csv(t, index_label="method"))
    write_h5ad_atomic(predictions[MODEL_NAME], out / "predictions.h5ad")
    _write_text(
        out / "experiment.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    # Top-k DE sets exist only when there are more than k features.
    headline = ev.headline_metric if ev.headline_metric in summary else "r2_delta_all"
    rival = best_baseline(summary, MODEL_NAME, headline) if len(summary) > 1 else MODEL_NAME
    shown = {MODEL_NAME: predictions[MODEL_NAME]}
    if rival != MODEL_NAME:
        shown[rival] = predictions[rival]
    keys = list(truth.conditions)[: ev.plot_conditions]
    plot_summary(per_condition, out / "summary.png")
    figures = ["summary.png"]
    if rival != MODEL_NAME:
        plot_metric_per_condition(
            per_condition, headline, MODEL_NAME, rival, out / "per_condition.png"
        )
        figures.append("per_condition.png")
    plot_mean_deltas(shown, truth, out / "mean_deltas.png")
    plot_moments(shown, truth, out / "moments.png")
    plot_pca(shown, truth, keys, out / "pca.png")
    figures += ["mean_deltas.png", "moments.png", "pca.png"]

    s = config.split
    wins = {}
    model_rows = per_condition[per_condition["method"] == MODEL_NAME][headline]
    if rival != MODEL_NAME:
        rival_rows = per_condition[per_condition["method"] == rival][headline]
        wins = {"conditions": int((model_rows > rival_rows).sum()), "of": int(len(model_rows))}
    record = {
        "dataset": config.dataset,
        "split": s.model_dump(mode="json"),
        "test_conditions": list(truth.conditions),
        "steps": int(model.state.step),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "best_baseline": rival,
        "model_beats_best_baseline_on": wins,
        "summary": json.loads(summary.to_json(orient="index")),
    }
    _write_text(out / "summary.json", json.dumps(record, indent=2))
    lines = [
        f"# condmonge experiment: {config.dataset}, {s.kind} split",
        "",
        f"Held-out (test) conditions: {len(truth.conditions)}. "
        f"Training stopped at step {record['steps']}; "
        f"training took {timings['train_' + MODEL_NAME]:.0f} s, evaluation "
        f"{timings['evaluate']:.1f} s.",
        "",
        "## Split",
        "",
        _frame_markdown(sides),
        "",
        "## Metrics (mean ± sd over held-out conditions; best in bold)",
        "",
        to_markdown(summary),
    ]
    if wins:
        lines += [
            f"On `{headline}`, {MODEL_NAME} beats the best baseline (`{rival}`) on "
            f"{wins['conditions']} of {wins['of']} conditions.",
            "",
        ]
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
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
    _write_text(out / "report.md", "\n".join(lines) + "\n")
    return record


def _write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def _frame_markdown(frame: pd.DataFrame) -> str:
    header = ["", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)
