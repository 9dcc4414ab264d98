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


def _evaluation_spec(
    pred: Any, observed: Any, *keys: str | None, covariate_keys: tuple[str, ...] = ()
) -> Any:
    """The spec of an evaluation: the options given, else the model's (stored in ``pred``).

    Args:
      pred, observed: the predictions and the truth (AnnData; ``observed`` ``None``: not
        checked yet).
      *keys: ``condition_key``, ``control``, ``dose_key``, ``cell_type_key`` as given.
      covariate_keys: ``--covariate-key`` as given (empty: the model's).
    """
    import json

    from condmonge.data.spec import ConditionSpec

    names = ("condition_key", "control", "dose_key", "cell_type_key")
    meta = pred.uns.get("condmonge", {})
    has_config = isinstance(meta, dict) and "config" in meta
    stored = json.loads(meta["config"]).get("data", {}) if has_config else {}
    spec = ConditionSpec.from_dict({k: stored[k] for k in names if stored.get(k)})
    spec = spec.updated(**dict(zip(names, keys, strict=True)))
    spec = spec.updated(covariate_keys=covariate_keys or tuple(stored.get("covariate_keys") or ()))
    if observed is None:
        return spec
    for key in spec.obs_keys:
        if key and key not in observed.obs:
            raise DataError(
                f"the truth has no obs column '{key}'; pass the matching --*-key options"
            )
    return spec


@app.command()
def evaluate(
    prediction: Annotated[
        Path, typer.Argument(help="Predicted cells (from `predict`: .h5ad, .zarr or a table).")
    ],
    truth: Annotated[
        Path, typer.Argument(help="Observed treated cells of the same conditions + controls.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Metrics (.json).")],
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
    max_cells: Annotated[int, typer.Option(help="Subsample populations to this size.")] = 500,
    csv: Annotated[Path | None, typer.Option(help="Also write the per-condition table.")] = None,
) -> None:
    """Score predictions against observed cells: per-condition and aggregate metrics."""
    import json

    from condmonge.data.tables import RESERVED_OBS, read_cells
    from condmonge.evaluate.evaluation import evaluate_prediction
    from condmonge.evaluate.report import HEADLINE_METRICS, metric_columns, to_markdown

    try:
        given = (condition_key, control, dose_key, cell_type_key)
        covariates = tuple(covariate_key or ())
        pred = read_cells(
            prediction, [condition_key, dose_key, cell_type_key, *covariates, *RESERVED_OBS]
        )
        cfg = _evaluation_spec(pred, None, *given, covariate_keys=covariates)
        # A table prediction read before the keys were known: its key columns are not features.
        names = [str(v) for v in pred.var_names if v not in cfg.obs_keys]
        pred = pred[:, names]
        observed = read_cells(truth, cfg.obs_keys, features=names)
        cfg = _evaluation_spec(pred, observed, *given, covariate_keys=covariates)
        table = evaluate_prediction(pred, observed, cfg, method="prediction", max_cells=max_cells)
    except CondMongeError as exc:
        _fail(str(exc))
    metrics = metric_columns(table)
    aggregate = {
        m: {"mean": float(table[m].mean()), "sd": float(table[m].std(ddof=0))} for m in metrics
    }
    per_condition = {
        key: {m: (None if row[m] != row[m] else float(row[m])) for m in metrics}
        for key, row in table.iterrows()
    }
    record = {
        "prediction": str(prediction),
        "truth": str(truth),
        "n_conditions": len(table),
        "aggregate": aggregate,
        "per_condition": per_condition,
    }
    _write_text_atomic(out, json.dumps(record, indent=2))
    if csv is not None:
        _write_text_atomic(csv, table.to_csv(index_label="condition"))
    from condmonge.evaluate.report import summarize

    typer.echo(to_markdown(summarize(table), HEADLINE_METRICS))
    typer.echo(f"wrote metrics of {len(table)} conditions to {out}")


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
