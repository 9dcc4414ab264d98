"""Command-line interface: ``condmonge train | predict | split | evaluate | experiment | demo``.

Every error caused by input exits with code 2 and one line on stderr; no traceback.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from condmonge.errors import CondMongeError, DataError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Predict single-cell perturbation responses with conditional Monge-gap OT maps.",
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _embeddings(items: list[str], control: str | None = None) -> dict[str, Any]:
    """``KEY=TABLE.csv`` or ``KEY=smiles[,OPTION=VALUE...]:SMILES.csv`` -> embeddings of fit.

    A SMILES spec becomes a callable that the model calls with the training perturbations,
    so the feature cleaning (and the PCA, ``pca=K``) is fitted on training drugs only.
    """
    from condmonge.conditions.encoders import read_table
    from condmonge.conditions.smiles import parse_smiles_spec

    tables: dict[str, Any] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise DataError(
                f"--embedding '{item}' must be KEY=TABLE.csv or KEY=smiles:SMILES.csv "
                "(e.g. drug=drugs.csv)"
            )
        spec = parse_smiles_spec(path)
        if spec is None:
            tables[key] = read_table(path, key)
            continue
        if not Path(spec.path).is_file():
            raise DataError(f"--embedding '{item}': SMILES table '{spec.path}' does not exist")
        tables[key] = partial(_smiles_table, spec, control)
    return tables


def _covariates(items: list[str]) -> dict[str, Any]:
    """``--covariate-key KEY[:TRANSFORM[:NEUTRAL]]`` (repeatable) -> data config overrides."""
    from condmonge.conditions.spec import parse_covariate

    parsed = [parse_covariate(item) for item in items]
    if not parsed:
        return {}
    return {
        "data.covariate_keys": tuple(k for k, _, _ in parsed),
        "data.covariate_transforms": {k: t for k, t, _ in parsed if t is not None},
        "data.covariate_neutral": {k: n for k, _, n in parsed if n is not None},
    }


_COVARIATE_HELP = (
    "Numeric obs column (e.g. time) as a condition, KEY[:TRANSFORM[:NEUTRAL]]: TRANSFORM linear "
    "(default) or log1p, NEUTRAL the value where the map is the identity (time:log1p:0). "
    "Repeatable."
)
_DATA_HELP = "Cells: .h5ad, .zarr, or a .csv/.tsv/.parquet table (one row per cell)."


def _smiles_table(spec: Any, control: str | None, fit_names: list[str]) -> Any:
    return spec.load(fit_names=fit_names, control=control)


def _train_config(config: Path | None, condition_key: str | None, *keys: str | None) -> Any:
    """The run's config (the YAML's, or the defaults) and its spec with the options applied.

    Args:
      config: the ``--config`` YAML, or ``None``.
      condition_key: ``--condition-key``.
      *keys: ``--control``, ``--dose-key``, ``--cell-type-key``, ``--use-rep`` as given.
    """
    from condmonge.config import Config, load_config

    control = keys[0]
    if config is None and condition_key is None:
        raise DataError("give --condition-key (the obs column naming each cell's condition)")
    if config is None and control is None:
        raise DataError("give --control (the label of control cells)")
    cfg = load_config(config) if config is not None else Config()
    names = ("control", "dose_key", "cell_type_key", "use_rep")
    spec = cfg.data.spec.updated(condition_key=condition_key, **dict(zip(names, keys, strict=True)))
    return cfg, spec


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help=_DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoint, config).")],
    condition_key: Annotated[str | None, typer.Option(help="obs column of conditions.")] = None,
    control: Annotated[str | None, typer.Option(help="Label of control cells.")] = None,
    dose_key: Annotated[str | None, typer.Option(help="obs column of doses.")] = None,
    cell_type_key: Annotated[str | None, typer.Option(help="obs column of cell types.")] = None,
    covariate_key: Annotated[list[str] | None, typer.Option(help=_COVARIATE_HELP)] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Table feature columns: names or globs, comma-separated (pERK_*,area)."),
    ] = None,
    modality: Annotated[
        str | None,
        typer.Option(help="rna | protein | generic (default: detected; protein is z-scored)."),
    ] = None,
    embedding: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=TABLE.csv: feature table for an obs column, or KEY=smiles:SMILES.csv "
            "(also smiles,kind=both,pca=32:PATH): RDKit features of the drugs, fitted on the "
            "training drugs (repeatable)."
        ),
    ] = None,
    holdout: Annotated[str | None, typer.Option(help="Conditions to hold out: C1,C2+C3.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with every hyperparameter.")] = None,
    use_rep: Annotated[str | None, typer.Option(help="obsm key to train on instead of X.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start over even if --out already holds a run.")
    ] = False,
) -> None:
    """Train a conditional Monge-gap map and write a checkpoint to --out."""
    from condmonge.data.tables import read_cells
    from condmonge.errors import TrainingInterrupted
    from condmonge.model import ConditionalMonge

    try:
        if (out / "model.safetensors").exists() and not (resume or overwrite):
            raise DataError(
                f"'{out}' already holds a run (model.safetensors); pass --resume to continue it, "
                "--overwrite to start over, or choose another --out"
            )
        cfg, spec = _train_config(config, condition_key, control, dose_key, cell_type_key, use_rep)
        overrides = _covariates(covariate_key or [])
        if features is not None:
            overrides["data.features"] = tuple(_split(features))
        if modality is not None:
            overrides["data.modality"] = modality
        spec = spec.updated(covariate_keys=overrides.get("data.covariate_keys"))
        cfg = cfg.updated(overrides)
        tables = _embeddings(embedding or [], spec.control)
        adata = read_cells(
            data, spec.obs_keys, required=spec.obs_keys, features=cfg.data.features or None
        )
        model = ConditionalMonge(cfg).fit(
            adata,
            spec=spec,
            embeddings=tables,
            holdout=_split(holdout),
            steps=steps,
            seed=seed,
            checkpoint_dir=out,
            resume=resume,
        )
        model.save(out)
        typer.echo(
            f"trained {len(model.conditions)} conditions for {int(model.state.step)} steps "
            f"(best validation loss {model.loop.best_val_loss:.4g} at step "
            f"{model.loop.best_step}); checkpoint in {out}"
        )
    except TrainingInterrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=130) from None
    except CondMongeError as exc:
        _fail(str(exc))


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `train`.")],
    data: Annotated[Path, typer.Argument(help="Control cells: " + _DATA_HELP)],
    out: Annotated[
        Path,
        typer.Option("--out", help="Predictions, in the format of the suffix (.h5ad, .csv, ...)."),
    ],
    conditions: Annotated[str | None, typer.Option(help="Conditions: C1,C2+C3.")] = None,
    query: Annotated[
        Path | None,
        typer.Option(
            help="Table (.csv/.tsv/.parquet) with condition/dose/cell-type/covariate columns, one "
            "predicted block per row."
        ),
    ] = None,
    dose: Annotated[str | None, typer.Option(help="Dose of the --conditions.")] = None,
    cell_type: Annotated[str | None, typer.Option(help="Cell type of the --conditions.")] = None,
) -> None:
    """Push the control cells of DATA through the trained map; write predictions as AnnData."""
    from condmonge.data.tables import read_cells, read_query, write_cells
    from condmonge.model import ConditionalMonge

    try:
        if conditions and query:
            raise DataError("give either --conditions or --query, not both")
        model = ConditionalMonge.load(run_dir)
        d = model.config.data
        keys = [d.condition_key, d.dose_key, d.cell_type_key, *d.covariate_keys]
        adata = read_cells(data, keys, features=None if d.use_rep else model.feature_names)
        wanted: Any = read_query(query) if query is not None else (_split(conditions) or None)
        pred = model.predict(adata, wanted, dose=dose, cell_type=cell_type)
        write_cells(pred, out)
        n_blocks = pred.obs["condition_id"].nunique()
        typer.echo(f"wrote {pred.n_obs} predicted cells in {n_blocks} conditions to {out}")
    except CondMongeError as exc:
        _fail(str(exc))


@app.command()
def split(
    data: Annotated[Path, typer.Argument(help=_DATA_HELP)],
    out: Annotated[
        Path, typer.Option("--out", help="The data with the split column (format of the suffix).")
    ],
    kind: Annotated[
        str,
        typer.Option(
            help="random | condition | perturbation | dose | combination | cell_type | kfold | "
            "covariate (held-out values of --covariate-key, e.g. a time point)."
        ),
    ] = "random",
    condition_key: Annotated[str, typer.Option(help="obs column of conditions.")] = "condition",
    control: Annotated[str, typer.Option(help="Label of control cells.")] = "control",
    dose_key: Annotated[str | None, typer.Option(help="obs column of doses.")] = None,
    cell_type_key: Annotated[str | None, typer.Option(help="obs column of cell types.")] = None,
    covariate_key: Annotated[
        str | None, typer.Option(help="Numeric obs column held out by --kind covariate.")
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="Table feature columns: names or globs, comma-separated.")
    ] = None,
    holdout: Annotated[
        list[str] | None,
        typer.Option(
            help="What to hold out (repeatable): conditions (A+B), perturbations, cell types, "
            "doses (10, or A=10 for one drug). Default: a random --fraction."
        ),
    ] = None,
    fraction: Annotated[
        float | None, typer.Option(help="Random fraction held out (cells for random).")
    ] = None,
    fold: Annotated[int, typer.Option(help="Fold held out (kfold).")] = 0,
    n_folds: Annotated[int, typer.Option(help="Folds over perturbations (kfold).")] = 5,
    control_test_fraction: Annotated[
        float, typer.Option(help="Control cells of each cell type put in test.")
    ] = 0.25,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    key_added: Annotated[str, typer.Option(help="obs column to write.")] = "split",
) -> None:
    """Add a train/test split column to DATA's obs and write it to --out."""
    from condmonge.data.spec import ConditionSpec
    from condmonge.data.splits import SplitPlan, make_split, split_summary
    from condmonge.data.tables import read_cells, write_cells

    try:
        covariates = (covariate_key,) if covariate_key else ()
        spec = ConditionSpec(condition_key, control, dose_key, cell_type_key, covariates)
        plan = SplitPlan(
            kind, holdout or None, fraction, n_folds, fold, control_test_fraction, seed
        )
        adata = read_cells(data, spec.obs_keys, required=spec.obs_keys, features=features)
        make_split(adata, plan, spec, key_added=key_added)
        summary = split_summary(adata, key_added)
        write_cells(adata, out)
    except CondMongeError as exc:
        _fail(str(exc))
    for side, row in summary.iterrows():
        typer.echo(
            f"{side}: {row.cells} cells ({row.control_cells} control), {row.conditions} "
            f"conditions" + (f", {row.unseen} unseen in train" if side == "test" else "")
        )
    typer.echo(f"wrote obs['{key_added}'] ({kind}) to {out}")


def _write_text_atomic(path: Path, text: str) -> None:
    from condmonge.files import replace_atomically

    replace_atomically(path, lambda tmp: tmp.write_text(text))


def _read_for_evaluate(path: Path, backed: bool, keys=(), features=None):
    """Read cells for ``evaluate`` (backed ``.h5ad``: cells stay on disk), one-line errors.

    Tables (``.csv``/``.tsv``/``.parquet``) and ``.zarr`` are read by
    :func:`~condmonge.data.tables.read_cells` with the obs ``keys`` and ``features`` given.
    """
    import anndata as ad

    from condmonge.data.tables import RESERVED_OBS, read_cells

    if not backed or path.suffix.lower() != ".h5ad":
        return read_cells(path, [*keys, *RESERVED_OBS], features=features)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    try:
        return ad.read_h5ad(path, backed="r")
    except Exception as exc:  # h5py/anndata raise many types for a damaged or foreign file
        raise DataError(f"'{path}' is not a readable .h5ad file ({type(exc).__name__})") from None


def _evaluate_inputs(files: list[Path], named: list[str]) -> tuple[dict[str, Path], Path]:
    """``{name: prediction path}`` and the truth path from the positionals and ``--pred``."""
    if not files or len(files) > 2:
        raise DataError(
            f"evaluate takes [PRED] TRUTH (got {len(files)} files); give more predictions "
            "with --pred NAME=FILE"
        )
    preds = {"prediction": files[0]} if len(files) == 2 else {}
    for item in named:
        name, sep, file = item.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise DataError(f"--pred '{item}' is not NAME=FILE, e.g. --pred cpa=cpa_pred.h5ad")
        if name.strip() in preds:
            raise DataError(f"--pred name '{name.strip()}' is given twice; names must differ")
        preds[name.strip()] = Path(file.strip())
    return preds, files[-1]


def _stored_data_config(predictions: dict) -> dict[str, Any]:
    """Column names stored by `condmonge predict` in the first prediction that has them."""
    import json

    for pred in predictions.values():
        meta = pred.uns.get("condmonge", {})
        if isinstance(meta, dict) and "config" in meta:
            return json.loads(meta["config"]).get("data", {})
    return {}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: undefined values (e.g. a correlation with no change) become null."""
    value = float(value)
    return value if value == value else None


def _evaluate_record(table, predictions: dict[str, str], truth: Path) -> dict[str, Any]:
    """The JSON record: per method aggregate, per-condition values and coverage."""
    from condmonge.evaluate.scoring import metric_names

    metrics = metric_names(table)
    methods = {}
    for name in predictions:
        rows = table[table["method"] == name].set_index("condition")
        methods[name] = {
            "n_conditions": len(rows),
            "coverage": table.attrs["coverage"][name],
            "aggregate": {
                m: {
                    "mean": _finite_or_none(rows[m].mean()),
                    "sd": _finite_or_none(rows[m].std(ddof=0)),
                }
                for m in metrics
            },  # fmt: skip
            "per_condition": {
                key: {m: _finite_or_none(row[m]) for m in metrics} for key, row in rows.iterrows()
            },
        }
    first = methods[next(iter(predictions))]
    return {"truth": str(truth), "predictions": predictions, "n_genes": table.attrs["n_genes"],
            "methods": methods, **first}  # fmt: skip


def _echo_coverage(table) -> None:
    for name, cov in table.attrs["coverage"].items():
        for side, what in (("only_in_truth", "not predicted"), ("only_in_prediction", "no truth")):
            if cov[side]:
                shown = ", ".join(cov[side][:5]) + (", ..." if len(cov[side]) > 5 else "")
                typer.echo(f"{name}: {len(cov[side])} condition(s) {what}, not scored: {shown}")
        if cov["n_genes_missing"]:
            typer.echo(f"{name}: {cov['n_genes_missing']} truth gene(s) missing, scored without")


def _score_files(paths, truth_path, given, train, backed, **options):
    """Read predictions and truth, add baselines fitted on ``train``, score them all."""
    from condmonge.config import DataConfig
    from condmonge.evaluate.scoring import baseline_predictions, score_predictions

    pred_keys = [v for k, v in given.items() if k != "control" and isinstance(v, str)]
    pred_keys += list(given.get("covariate_keys") or ())
    predictions = {name: _read_for_evaluate(p, backed, pred_keys) for name, p in paths.items()}
    stored = _stored_data_config(predictions)
    keys = {k: v if v is not None else stored.get(k) for k, v in given.items()}
    cfg = DataConfig(**{k: v for k, v in keys.items() if v is not None})
    obs_keys = [k for k in cfg.spec.obs_keys if k]
    # A table prediction read before the keys were known: its key columns are not features.
    predictions = {
        name: pred[:, [v for v in pred.var_names if v not in obs_keys]]
        if "condmonge_table" in pred.uns
        else pred
        for name, pred in predictions.items()
    }
    first = next(iter(predictions.values()), None)
    names = None if first is None else [str(v) for v in first.var_names]
    observed = _read_for_evaluate(truth_path, backed, obs_keys, names)
    if train is not None:
        query = observed.to_memory() if backed else observed
        fitted = baseline_predictions(_read_for_evaluate(train, False), query, cfg)
        predictions |= fitted
        paths = paths | {name: f"baseline fitted on {train}" for name in fitted}
    table = score_predictions(predictions, observed, cfg, progress=sys.stderr.isatty(), **options)
    return table, paths, cfg


@app.command()
def evaluate(
    files: Annotated[
        list[Path],
        typer.Argument(help="[PRED] TRUTH: a prediction (.h5ad, any model), the observed cells."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Metrics (.json).")],
    pred: Annotated[
        list[str] | None, typer.Option("--pred", help="More predictions, NAME=FILE (repeat).")
    ] = None,
    condition_key: Annotated[
        str | None, typer.Option(help="obs column of conditions (default: the model's).")
    ] = None,
    control: Annotated[str | None, typer.Option(help="Label of control cells.")] = None,
    dose_key: Annotated[str | None, typer.Option(help="obs column of doses.")] = None,
    cell_type_key: Annotated[str | None, typer.Option(help="obs column of cell types.")] = None,
    covariate_key: Annotated[
        list[str] | None,
        typer.Option(help="Numeric covariate columns (default: the model's). Repeatable."),
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="Also score identity, mean-shift and additive (needs --train).")
    ] = False,
    train: Annotated[Path | None, typer.Option(help="Training cells for --baselines.")] = None,
    max_cells: Annotated[
        int, typer.Option(help="Cells per condition for DE and distribution metrics.")
    ] = 500,
    de_method: Annotated[str, typer.Option(help="scanpy rank_genes_groups method.")] = "wilcoxon",
    de_cache: Annotated[Path | None, typer.Option(help="Directory caching DE results.")] = None,
    distributions: Annotated[
        bool, typer.Option(help="Distribution metrics (MMD, energy, Sinkhorn, moments).")
    ] = True,
    backed: Annotated[bool, typer.Option(help="Stream cells from disk (large files).")] = False,
    csv: Annotated[Path | None, typer.Option(help="Also write the per-condition table.")] = None,
    figure: Annotated[Path | None, typer.Option(help="Leaderboard figure (.png).")] = None,
    scatter: Annotated[
        Path | None, typer.Option(help="Per-condition scatter of top-DE mean deltas (.png).")
    ] = None,
) -> None:
    """Score any model's predictions against observed cells, side by side (docs/METRICS.md)."""
    import json

    from condmonge.evaluate.de import DECache
    from condmonge.evaluate.figures import leaderboard_markdown, plot_leaderboard, plot_scatter

    try:
        if max_cells < 2:
            raise DataError(f"--max-cells must be at least 2 (got {max_cells})")
        if baselines and train is None:
            raise DataError("--baselines needs --train FILE (the training cells to fit them on)")
        paths, truth_path = _evaluate_inputs(files, pred or [])
        if not paths and not baselines:
            raise DataError("nothing to score: give PRED, --pred NAME=FILE or --baselines")
        given = {"condition_key": condition_key, "control": control, "dose_key": dose_key,
                 "cell_type_key": cell_type_key,
                 "covariate_keys": tuple(covariate_key) if covariate_key else None}  # fmt: skip
        table, paths, _ = _score_files(
            paths, truth_path, given, train if baselines else None, backed,
            max_cells=max_cells, distributions=distributions,
            de_cache=DECache(de_method, de_cache),
        )  # fmt: skip
    except CondMongeError as exc:
        _fail(str(exc))
    record = _evaluate_record(table, {k: str(v) for k, v in paths.items()}, truth_path)
    _write_text_atomic(out, json.dumps(record, indent=2))
    if csv is not None:
        _write_text_atomic(csv, table.to_csv(index=False))
    if figure is not None:
        plot_leaderboard(table, figure)
    if scatter is not None:
        plot_scatter(table, scatter)
    _echo_coverage(table)
    typer.echo(leaderboard_markdown(table))
    typer.echo(f"wrote metrics of {table['condition'].nunique()} conditions to {out}")


@app.command()
def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (split, baselines, model).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory for the report.")],
) -> None:
    """Split → train → predict → evaluate the model and every baseline → DIR/report.md."""
    from condmonge.evaluate.experiment import load_experiment_config, run_experiment
    from condmonge.evaluate.report import to_markdown

    try:
        cfg = load_experiment_config(config)
        result = run_experiment(cfg, out, config_dir=config.parent)
    except CondMongeError as exc:
        _fail(str(exc))
    typer.echo(to_markdown(result.summary))
    typer.echo(f"report: {out / 'report.md'}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
    steps: Annotated[int, typer.Option(help="Training steps.")] = 1500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train on the shipped Norman/McFaline data with combinations held out, and report."""
    from condmonge.demo import run_demo
    from condmonge.evaluate.report import to_markdown

    try:
        summary = run_demo(out, steps=steps, seed=seed)
    except CondMongeError as exc:
        _fail(str(exc))
    typer.echo(to_markdown(summary))
    typer.echo(f"report: {out / 'report.md'}")


def main() -> None:
    """Console entry point: usage errors, like input errors, are one line and exit code 2."""
    from condmonge.train.sharding import use_cpu_cores

    use_cpu_cores()  # before any array exists: one JAX CPU device per core, see its docstring
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Usage errors (missing option, bad value, unknown command) carry exit code 2; typer
        # vendors click, so they are recognised by shape rather than by class.
        if getattr(exc, "exit_code", None) != 2 or not hasattr(exc, "format_message"):
            raise
        ctx = getattr(exc, "ctx", None)
        command = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
        typer.echo(f"error: {exc.format_message()} (see `condmonge{command} --help`)", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
