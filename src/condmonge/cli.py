"""Command line: ``condmonge train | predict | split | evaluate | experiment | demo | config``.

Every error caused by input exits with code 2 and one line on stderr, ``error: <message>``; an
unexpected exception (a bug) exits with code 1 and one line naming the log file that holds its
traceback; Ctrl-C exits with code 130 and says what was kept.

Start-up is fast: this module imports only typer and the standard library, so ``--help``,
``--version`` and usage errors answer in well under a second. The model and its dependencies
(JAX, anndata, ...) are imported in one place, :func:`start`, when a command actually runs;
``import condmonge`` itself is lazy too (PEP 562 ``__getattr__`` in ``condmonge/__init__.py``).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from condmonge._version import __version__
from condmonge.cli_checks import (
    check_output_file,
    check_run_dir,
    install_interrupt_handler,
    interrupted,
    parse_items,
    write_crash_log,
)
from condmonge.errors import CondMongeError, DataError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Predict single-cell perturbation responses with conditional Monge-gap OT maps.",
)

HOLDOUT_HELP = (
    "Conditions kept out of training (repeatable, or comma-separated): a label ('A', 'A+B', "
    "any order; every dose and cell type), a label in one cell type ('stimulated@NK'), or a "
    "full key ('stimulated|dose=1|cell_type=NK')."
)
SPLIT_KEY_HELP = (
    "obs column of a train/test split (as `condmonge split` writes it): {side}. "
    "Default: 'split' when the data have that column, else every cell."
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _one_line_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn the input errors of ``command`` into ``error: <message>`` and exit code 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except CondMongeError as exc:
            _fail(str(exc))

    return run


def start() -> ModuleType:
    """Import the model and its dependencies: the one place the command line does so.

    Called by each command once its arguments are parsed and checked, so that ``--help``,
    ``--version`` and usage errors never pay for importing JAX.

    Returns:
      :mod:`condmonge.cli_work`, which does the commands' work.
    """
    from condmonge.train.sharding import use_cpu_cores

    use_cpu_cores()  # before any array exists: one JAX CPU device per core, see its docstring
    from condmonge import cli_work

    cli_work.show_warnings_plainly()
    return cli_work


def _split_key(value: str | None) -> tuple[str, bool]:
    """``(column, given explicitly)``: the default 'split' is optional, a given one required."""
    return (value, True) if value is not None else ("split", False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"condmonge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Predict single-cell perturbation responses with conditional Monge-gap OT maps."""


@app.command()
@_one_line_errors
def train(
    data: Annotated[Path, typer.Argument(help="Training data (.h5ad).")],
    out: Annotated[
        Path, typer.Option("--out", help="Run directory (checkpoint, config, history.csv).")
    ],
    condition_key: Annotated[
        str | None,
        typer.Option(help="obs column of conditions. (required without --config)"),
    ] = None,
    control: Annotated[
        str | None, typer.Option(help="Label of control cells. (required without --config)")
    ] = None,
    dose_key: Annotated[str | None, typer.Option(help="obs column of doses.")] = None,
    cell_type_key: Annotated[str | None, typer.Option(help="obs column of cell types.")] = None,
    embedding: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=TABLE.csv: feature table for an obs column, or KEY=smiles:SMILES.csv "
            "(also smiles,kind=both,pca=32:PATH): RDKit features of the drugs, fitted on the "
            "training drugs (repeatable)."
        ),
    ] = None,
    holdout: Annotated[list[str] | None, typer.Option(help=HOLDOUT_HELP)] = None,
    split_key: Annotated[
        str | None, typer.Option(help=SPLIT_KEY_HELP.format(side="train on its 'train' cells"))
    ] = None,
    n_pca: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train in this many principal components of the training cells (predictions "
            "stay in gene space).",
        ),
    ] = None,
    use_rep: Annotated[
        str | None,
        typer.Option(
            "--use-rep",
            "--latent",
            help="Latent space: an obsm key to train on instead of X (e.g. X_pca); "
            "predictions are then in that space.",
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, max=2**32 - 1, help="Random seed (0 to 2^32-1).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML with every hyperparameter (`condmonge config` prints one)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start over even if --out already holds a run.")
    ] = False,
) -> None:
    """Train a conditional Monge-gap map; write checkpoint, history.csv and loss.png to --out.

    Without --config, --condition-key and --control are required. Flags override the config.
    """
    check_run_dir(out, resume=resume, overwrite=overwrite)
    if config is None and condition_key is None:
        raise DataError("give --condition-key (the obs column naming each cell's condition)")
    if config is None and control is None:
        raise DataError("give --control (the label of control cells)")
    if config is not None and not config.is_file():
        raise DataError(f"--config '{config}' does not exist")
    fit_args = {
        "condition_key": condition_key,
        "control": control,
        "dose_key": dose_key,
        "cell_type_key": cell_type_key,
        "holdout": parse_items(holdout, "--holdout") or [],
        "steps": steps,
        "seed": seed,
        "resume": resume,
    }
    had_checkpoint = (out / "model.safetensors").exists()
    try:
        model = start().train(
            data,
            out,
            fit_args,
            config=config,
            embedding=embedding or [],
            split_key=_split_key(split_key),
            overrides={"data.n_pca": n_pca, "data.use_rep": use_rep},
        )
    except KeyboardInterrupt as exc:
        _train_interrupted(exc, out, had_checkpoint)
    typer.echo(
        f"trained {len(model.conditions)} conditions for {int(model.state.step)} steps "
        f"(best validation loss {model.loop.best_val_loss:.4g} at step "
        f"{model.loop.best_step}); checkpoint, history.csv and loss.png in {out}"
    )


def _train_interrupted(exc: KeyboardInterrupt, out: Path, had_checkpoint: bool) -> None:
    message = str(exc)  # TrainingInterrupted: "interrupted at step N; checkpoint saved, ..."
    if not message:
        saved = (out / "model.safetensors").exists()
        message = "interrupted before training started; " + (
            f"the checkpoint in {out} is unchanged, continue with --resume"
            if saved and had_checkpoint
            else "nothing was saved"
        )
    typer.echo(message, err=True)
    raise typer.Exit(code=130)


@app.command()
@_one_line_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `train`.")],
    data: Annotated[Path, typer.Argument(help="Data holding control cells (.h5ad).")],
    out: Annotated[Path, typer.Option("--out", help="Predictions (.h5ad).")],
    conditions: Annotated[
        str | None,
        typer.Option(help="Conditions: C1,C2+C3 (each once). Default: every training condition."),
    ] = None,
    query: Annotated[
        Path | None,
        typer.Option(
            help="CSV with condition/dose/cell-type columns, one predicted block per row."
        ),
    ] = None,
    dose: Annotated[
        str | None, typer.Option(help="Dose of the --conditions (models trained with doses).")
    ] = None,
    cell_type: Annotated[
        str | None,
        typer.Option(help="Cell type of the --conditions (models trained with cell types)."),
    ] = None,
    split_key: Annotated[
        str | None,
        typer.Option(
            help=SPLIT_KEY_HELP.format(
                side="predict from its 'test' controls, by default its 'test' conditions"
            )
        ),
    ] = None,
) -> None:
    """Push the control cells of DATA through the trained map; write predictions as AnnData."""
    check_output_file(out, "--out", (".h5ad",))
    pred = start().predict(
        run_dir,
        data,
        out,
        {
            "conditions": parse_items(conditions, "--conditions"),
            "query": query,
            "dose": dose,
            "cell_type": cell_type,
        },
        _split_key(split_key),
    )
    n_blocks = pred.obs["condition_id"].nunique()
    typer.echo(f"wrote {pred.n_obs} predicted cells in {n_blocks} conditions to {out}")


@app.command()
@_one_line_errors
def split(
    data: Annotated[Path, typer.Argument(help="Data to split (.h5ad).")],
    out: Annotated[Path, typer.Option("--out", help="The data with the split column (.h5ad).")],
    kind: Annotated[
        str,
        typer.Option(
            help="random | condition | perturbation | dose | combination | cell_type | kfold."
        ),
    ] = "random",
    condition_key: Annotated[str, typer.Option(help="obs column of conditions.")] = "condition",
    control: Annotated[str, typer.Option(help="Label of control cells.")] = "control",
    dose_key: Annotated[str | None, typer.Option(help="obs column of doses.")] = None,
    cell_type_key: Annotated[str | None, typer.Option(help="obs column of cell types.")] = None,
    holdout: Annotated[
        list[str] | None,
        typer.Option(
            help="What to hold out (repeatable, or comma-separated): conditions (A+B, as in "
            "`train`), perturbations, cell types, doses (10, or A=10 for one drug). Default: a "
            "random --fraction."
        ),
    ] = None,
    fraction: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Random fraction held out (cells for random).",
        ),
    ] = None,  # fmt: skip
    fold: Annotated[int, typer.Option(min=0, help="Fold held out (kfold).")] = 0,
    n_folds: Annotated[int, typer.Option(min=2, help="Folds over perturbations (kfold).")] = 5,
    control_test_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Control cells of each cell type put in test."),
    ] = 0.25,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
    key_added: Annotated[str, typer.Option(help="obs column to write.")] = "split",
) -> None:
    """Add a train/test split column to DATA's obs and write it to --out."""
    check_output_file(out, "--out", (".h5ad",), example="split")
    spec = {
        "condition_key": condition_key,
        "control": control,
        "dose_key": dose_key,
        "cell_type_key": cell_type_key,
    }
    plan = {
        "kind": kind,
        "holdout": parse_items(holdout, "--holdout"),
        "fraction": fraction,
        "n_folds": n_folds,
        "fold": fold,
        "control_test_fraction": control_test_fraction,
        "seed": seed,
    }
    summary = start().split(data, out, spec, plan, key_added)
    for side, row in summary.iterrows():
        typer.echo(
            f"{side}: {row.cells} cells ({row.control_cells} control), {row.conditions} "
            f"conditions" + (f", {row.unseen} unseen in train" if side == "test" else "")
        )
    typer.echo(f"wrote obs['{key_added}'] ({kind}) to {out}")


def _write_text_atomic(path: Path, text: str) -> None:
    from condmonge.files import replace_atomically

    replace_atomically(path, lambda tmp: tmp.write_text(text))


def _evaluation_spec(pred: Any, observed: Any, *keys: str | None) -> Any:
    """The spec of an evaluation: the options given, else the model's (stored in ``pred``).

    Args:
      pred, observed: the predictions and the truth (AnnData).
      *keys: ``condition_key``, ``control``, ``dose_key``, ``cell_type_key`` as given.
    """
    import json

    from condmonge.data.spec import ConditionSpec

    names = ("condition_key", "control", "dose_key", "cell_type_key")
    meta = pred.uns.get("condmonge", {})
    has_config = isinstance(meta, dict) and "config" in meta
    stored = json.loads(meta["config"]).get("data", {}) if has_config else {}
    spec = ConditionSpec.from_dict({k: stored[k] for k in names if stored.get(k)})
    spec = spec.updated(**dict(zip(names, keys, strict=True)))
    for key in (spec.condition_key, spec.dose_key, spec.cell_type_key):
        if key and key not in observed.obs:
            raise DataError(
                f"the truth has no obs column '{key}'; pass the matching --*-key options"
            )
    return spec


@app.command()
def evaluate(
    prediction: Annotated[Path, typer.Argument(help="Predicted cells (.h5ad from `predict`).")],
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
    max_cells: Annotated[
        int, typer.Option(min=1, help="Subsample populations to this size.")
    ] = 500,
    csv: Annotated[Path | None, typer.Option(help="Also write the per-condition table.")] = None,
) -> None:
    """Score predictions against observed cells: per-condition and aggregate metrics."""
    import json

    from condmonge.data.anndata_io import read_h5ad
    from condmonge.evaluate.evaluation import evaluate_prediction
    from condmonge.evaluate.report import HEADLINE_METRICS, metric_columns, to_markdown

    try:
        pred = read_h5ad(prediction)
        observed = read_h5ad(truth)
        cfg = _evaluation_spec(pred, observed, condition_key, control, dose_key, cell_type_key)
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
@_one_line_errors
def experiment(
    config: Annotated[
        Path,
        typer.Argument(
            help="Experiment YAML: dataset or data file, split, baselines, model config."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Run directory for the report.")],
) -> None:
    """Split → train → predict → evaluate the model and every baseline → DIR/report.md.

    The YAML schema is condmonge.evaluate.experiment.ExperimentConfig (keys: dataset or data,
    split, baselines, model, ...); runnable examples are in the repository's examples/*.yaml,
    e.g. `condmonge experiment examples/synthetic.yaml --out runs/synthetic`.
    """
    check_run_dir(out, resume=True, overwrite=True)
    if not config.is_file():
        raise DataError(f"experiment config '{config}' does not exist; see examples/*.yaml")
    summary = start().experiment(config, out)
    typer.echo(summary)
    typer.echo(f"report: {out / 'report.md'}")


@app.command()
@_one_line_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 1500,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
) -> None:
    """Train on the shipped Norman/McFaline data with combinations held out, and report."""
    check_run_dir(out, resume=True, overwrite=True)
    typer.echo(start().demo(out, steps=steps, seed=seed))
    typer.echo(f"report: {out / 'report.md'}")


@app.command("config")
def print_config() -> None:
    """Print the full default configuration: YAML with a one-line comment per key.

    Save it, edit it and pass it to `condmonge train --config FILE`.
    """
    from condmonge.config_text import default_config_text  # pydantic only: no JAX

    typer.echo(default_config_text(), nl=False)


def _bug(command: str) -> None:
    """Last line of defence: one line naming the failure and the log with its traceback."""
    exc = sys.exc_info()[1]
    try:
        where = f"the full traceback is in {write_crash_log(command)}"
    except OSError:
        where = "no traceback log could be written"
    what = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    name = f"condmonge {command}".strip()
    typer.echo(
        f"error: `{name}` failed unexpectedly ({what}); this is a bug in condmonge, please "
        f"report it; {where}",
        err=True,
    )
    sys.exit(1)


def _usage_error(exc: Exception) -> None:
    """Usage errors (missing option, bad value, unknown command): one line, exit code 2."""
    ctx = getattr(exc, "ctx", None)
    command = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
    typer.echo(f"error: {exc.format_message()} (see `condmonge{command} --help`)", err=True)
    sys.exit(2)


def main() -> None:
    """Console entry point: every failure is one line on stderr with a meaningful exit code."""
    install_interrupt_handler()
    if os.environ.get("CONDMONGE_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG, format="debug: %(message)s")
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except CondMongeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        # typer vendors click, so its usage errors are recognised by shape rather than class.
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            _usage_error(exc)
        _bug(command)
    if code == 130 and interrupted():
        typer.echo("interrupted (Ctrl-C)", err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
