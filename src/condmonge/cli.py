"""Command line: ``condmonge train | tune | predict | split | evaluate | experiment | ...``.

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
    CELL_SUFFIXES,
    check_output_file,
    check_run_dir,
    install_interrupt_handler,
    interrupted,
    parse_items,
    raise_if_interrupted,
    show_warnings_plainly,
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

    show_warnings_plainly()
    raise_if_interrupted()  # a Ctrl-C swallowed by an import
    return cli_work


def start_split() -> ModuleType:
    """:func:`start` for ``condmonge split``, which needs the data layer only (no JAX).

    Returns:
      :mod:`condmonge.cli_split`.
    """
    from condmonge import cli_split

    show_warnings_plainly()
    raise_if_interrupted()
    return cli_split


_COVARIATE_HELP = (
    "Numeric obs column (e.g. time) as a condition, KEY[:TRANSFORM[:NEUTRAL]]: TRANSFORM linear "
    "(default) or log1p, NEUTRAL the value where the map is the identity (time:log1p:0). "
    "Repeatable."
)
_DATA_HELP = "Cells: .h5ad, .zarr, or a .csv/.tsv/.parquet table (one row per cell)."


def _split_key(value: str | None) -> tuple[str, bool]:
    """``(column, given explicitly)``: the default 'split' is optional, a given one required."""
    return (value, True) if value is not None else ("split", False)


def _n_pca(value: str | None) -> str | None:
    """``--n-pca``: a number >= 1, ``auto`` or ``none`` (a usage error otherwise)."""
    if value is None or value.lower() in ("auto", "none") or (value.isdigit() and int(value)):
        return value
    raise typer.BadParameter(f"{value!r}: give a number >= 1, auto or none")


def _one_of(*choices: str):
    """An option callback accepting only ``choices`` (a usage error otherwise)."""

    def check(value: str | None) -> str | None:
        if value is None or value in choices:
            return value
        raise typer.BadParameter(f"{value!r}: give one of {', '.join(choices)}")

    return check


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


# The data options of `train`, shared by `tune` (one declaration each).
DataArg = Annotated[Path, typer.Argument(help=_DATA_HELP)]
ConditionKeyOpt = Annotated[
    str | None, typer.Option(help="obs column of conditions. (required without --config)")
]
ControlOpt = Annotated[
    str | None, typer.Option(help="Label of control cells. (required without --config)")
]
DoseKeyOpt = Annotated[str | None, typer.Option(help="obs column of doses.")]
CellTypeKeyOpt = Annotated[str | None, typer.Option(help="obs column of cell types.")]
CovariateKeyOpt = Annotated[list[str] | None, typer.Option(help=_COVARIATE_HELP)]
FeaturesOpt = Annotated[
    str | None,
    typer.Option(help="Table feature columns: names or globs, comma-separated (pERK_*,area)."),
]
ModalityOpt = Annotated[
    str | None,
    typer.Option(help="rna | protein | generic (default: detected; protein is z-scored)."),
]
EmbeddingOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="KEY=TABLE.csv: feature table for an obs column, or KEY=smiles:SMILES.csv "
        "(also smiles,kind=both,pca=32:PATH): RDKit features of the drugs, fitted on the "
        "training drugs (repeatable)."
    ),
]
HoldoutOpt = Annotated[list[str] | None, typer.Option(help=HOLDOUT_HELP)]
TrainSplitKeyOpt = Annotated[
    str | None, typer.Option(help=SPLIT_KEY_HELP.format(side="train on its 'train' cells"))
]
NPcaOpt = Annotated[
    str | None,
    typer.Option(
        callback=_n_pca,
        help="Train in principal components of the training cells: a number, auto "
        "(by explained variance, for more than 200 features) or none (predictions stay in "
        "gene space).",
    ),
]
ValidationOpt = Annotated[
    str | None,
    typer.Option(
        callback=_one_of("auto", "conditions", "cells"),
        help="Model selection on held-back: auto (conditions of the kind the holdout "
        "asks, when there are enough) | conditions | cells.",
    ),
]
ValidationKindOpt = Annotated[
    str | None,
    typer.Option(
        callback=_one_of(
            "auto", "combination", "perturbation", "cell_type", "dose", "covariate", "random"
        ),
        help="Held-back conditions: auto | combination | perturbation | cell_type | dose "
        "| covariate | random.",
    ),
]
UseRepOpt = Annotated[
    str | None,
    typer.Option(
        "--use-rep",
        "--latent",
        help="Latent space: an obsm key to train on instead of X (e.g. X_pca); "
        "predictions are then in that space.",
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option(min=0, max=2**32 - 1, help="Random seed (0 to 2^32-1).")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(help="YAML with every hyperparameter (`condmonge config` prints one)."),
]


def _check_data_options(config: Path | None, condition_key: str | None, control: str | None):
    """The checks of the shared data options that need no data (train and tune)."""
    if config is None and condition_key is None:
        raise DataError("give --condition-key (the obs column naming each cell's condition)")
    if config is None and control is None:
        raise DataError("give --control (the label of control cells)")
    if config is not None and not config.is_file():
        raise DataError(f"--config '{config}' does not exist")


def _spec_flags(
    condition_key: str | None,
    control: str | None,
    dose_key: str | None,
    cell_type_key: str | None,
    holdout: list[str] | None,
) -> dict[str, Any]:
    """The spec flags (``None``: keep the config's) and the parsed ``--holdout`` labels."""
    return {
        "condition_key": condition_key,
        "control": control,
        "dose_key": dose_key,
        "cell_type_key": cell_type_key,
        "holdout": parse_items(holdout, "--holdout") or [],
    }


def _data_overrides(
    n_pca: str | None,
    use_rep: str | None,
    modality: str | None,
    features: str | None,
    validation: str | None,
    validation_kind: str | None,
) -> dict[str, Any]:
    """The config keys set by the shared data flags (``None``: keep the config's)."""
    return {
        "data.n_pca": n_pca,
        "data.validation": validation,
        "data.validation_kind": validation_kind,
        "data.use_rep": use_rep,
        "data.modality": modality,
        "data.features": tuple(parse_items(features, "--features") or []) or None,
    }


@app.command()
@_one_line_errors
def train(
    data: DataArg,
    out: Annotated[
        Path, typer.Option("--out", help="Run directory (checkpoint, config, history.csv).")
    ],
    condition_key: ConditionKeyOpt = None,
    control: ControlOpt = None,
    dose_key: DoseKeyOpt = None,
    cell_type_key: CellTypeKeyOpt = None,
    covariate_key: CovariateKeyOpt = None,
    features: FeaturesOpt = None,
    modality: ModalityOpt = None,
    embedding: EmbeddingOpt = None,
    holdout: HoldoutOpt = None,
    split_key: TrainSplitKeyOpt = None,
    n_pca: NPcaOpt = None,
    validation: ValidationOpt = None,
    validation_kind: ValidationKindOpt = None,
    use_rep: UseRepOpt = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    seed: SeedOpt = None,
    members: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Ensemble size: train this many maps (seeds SEED, SEED+1, ...); predictions "
            "then carry a per-condition uncertainty.",
        ),
    ] = None,
    config: ConfigOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start over even if --out already holds a run.")
    ] = False,
) -> None:
    """Train a conditional Monge-gap map; write checkpoint, history.csv and loss.png to --out.

    Without --config, --condition-key and --control are required. Flags override the config.
    """
    check_run_dir(out, resume=resume, overwrite=overwrite)
    _check_data_options(config, condition_key, control)
    fit_args = _spec_flags(condition_key, control, dose_key, cell_type_key, holdout)
    fit_args |= {"steps": steps, "seed": seed, "resume": resume}
    had_checkpoint = (out / "model.safetensors").exists()
    try:
        model = start().train(
            data,
            out,
            fit_args,
            config=config,
            embedding=embedding or [],
            split_key=_split_key(split_key),
            covariates=covariate_key or [],
            overrides=_data_overrides(
                n_pca, use_rep, modality, features, validation, validation_kind
            )
            | {"train.n_members": members},
        )
    except KeyboardInterrupt as exc:
        _train_interrupted(exc, out, had_checkpoint)
    typer.echo(
        f"trained {len(model.conditions)} conditions for {int(model.state.step)} steps "
        f"(best validation fit {model.loop.best_val_loss:.4g} at step "
        f"{model.loop.best_step}); checkpoint, history.csv and loss.png in {out}"
    )
    typer.echo(start().validation_line(model.validation))


_TuneOutOpt = Annotated[
    Path,
    typer.Option(
        "--out", help="Run directory: study.db (resumable), best.yaml, trials.csv, tune.png."
    ),
]
_TrialsOpt = Annotated[
    int, typer.Option(min=1, help="Finished trials wanted in the study (earlier runs' count too).")
]
_SpaceOpt = Annotated[
    Path | None,
    typer.Option(
        help="YAML of the search space: section.key: {low, high, log, step} or {choices}; "
        "replaces those keys' defaults (null drops one)."
    ),
]
_TimeoutOpt = Annotated[
    float | None, typer.Option(min=0, help="Start no trial after this many seconds.")
]


@app.command()
@_one_line_errors
def tune(
    data: DataArg,
    out: _TuneOutOpt,
    trials: _TrialsOpt = 20,
    space: _SpaceOpt = None,
    condition_key: ConditionKeyOpt = None,
    control: ControlOpt = None,
    dose_key: DoseKeyOpt = None,
    cell_type_key: CellTypeKeyOpt = None,
    covariate_key: CovariateKeyOpt = None,
    features: FeaturesOpt = None,
    modality: ModalityOpt = None,
    embedding: EmbeddingOpt = None,
    holdout: HoldoutOpt = None,
    split_key: TrainSplitKeyOpt = None,
    n_pca: NPcaOpt = None,
    validation: ValidationOpt = None,
    validation_kind: ValidationKindOpt = None,
    use_rep: UseRepOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    study_name: Annotated[str, typer.Option(help="Study name inside study.db.")] = "condmonge",
    timeout: _TimeoutOpt = None,
) -> None:
    """Search hyperparameters (Optuna TPE, median pruning) on validation conditions.

    Each trial trains on --config changed by the space and is scored on validation
    conditions carved from the training data, never the --holdout or test conditions. Rerun
    the same command to continue a stopped search; several processes may share --out.
    `condmonge train --config OUT/best.yaml` (same data options) retrains the best trial.
    """
    check_run_dir(out, resume=True, overwrite=False)
    _check_data_options(config, condition_key, control)
    fit_args = _spec_flags(condition_key, control, dose_key, cell_type_key, holdout)
    fit_args["seed"] = seed
    search = {"space": space, "n_trials": trials, "study_name": study_name, "timeout": timeout}
    try:
        result = start().tune(
            data,
            out,
            fit_args,
            search,
            config=config,
            embedding=embedding or [],
            split_key=_split_key(split_key),
            covariates=covariate_key or [],
            overrides=_data_overrides(
                n_pca, use_rep, modality, features, validation, validation_kind
            ),
        )
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted; the finished trials are kept in {out / 'study.db'}: run the same "
            "command to continue",
            err=True,
        )
        raise typer.Exit(code=130) from None
    typer.echo(
        f"{result.n_finished} trials finished; best validation fit {result.best_value:.4g} "
        f"(trial {result.best_trial}); best.yaml, trials.csv, tune.png and study.db in {out}"
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
    data: Annotated[Path, typer.Argument(help="Control cells: " + _DATA_HELP)],
    out: Annotated[
        Path,
        typer.Option("--out", help="Predictions, in the format of the suffix (.h5ad, .csv, ...)."),
    ],
    conditions: Annotated[
        str | None,
        typer.Option(help="Conditions: C1,C2+C3 (each once). Default: every training condition."),
    ] = None,
    query: Annotated[
        Path | None,
        typer.Option(
            help="Table (.csv/.tsv/.parquet) with condition/dose/cell-type/covariate columns, one "
            "predicted block per row."
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
    members: Annotated[
        str | None,
        typer.Option(
            help="How an ensemble's members make one prediction: mean (their mean "
            "displacement) or mixture (each cell from one member, seeded; the default)."
        ),
    ] = None,
) -> None:
    """Push the control cells of DATA through the trained map; write predictions as AnnData."""
    check_output_file(out, "--out", CELL_SUFFIXES)
    pred = start().predict(
        run_dir,
        data,
        out,
        {
            "conditions": parse_items(conditions, "--conditions"),
            "query": query,
            "dose": dose,
            "cell_type": cell_type,
            "ensemble": members,
        },
        _split_key(split_key),
    )
    n_blocks = pred.obs["condition_id"].nunique()
    typer.echo(f"wrote {pred.n_obs} predicted cells in {n_blocks} conditions to {out}")


@app.command()
@_one_line_errors
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
    check_output_file(out, "--out", CELL_SUFFIXES, example="split")
    spec = {
        "condition_key": condition_key,
        "control": control,
        "dose_key": dose_key,
        "cell_type_key": cell_type_key,
        "covariate_keys": (covariate_key,) if covariate_key else (),
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
    summary = start_split().split(data, out, spec, plan, key_added, features)
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


def _score_files(paths, truth_path, given, train, backed, split_key, **options):  # noqa: PLR0913
    """Read predictions and truth, add baselines fitted on ``train``, score them all.

    With a split column (``split_key``: ``(column, given explicitly)``) the truth is its
    ``test`` side and the baselines are fitted on the ``train`` side of ``train``.
    """
    from condmonge.cli_work import select_side
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
    if split_key[0] in observed.obs or split_key[1]:
        observed = select_side(observed.to_memory() if backed else observed, *split_key, "test")
    if train is not None:
        query = observed.to_memory() if observed.isbacked else observed
        fit_on = select_side(_read_for_evaluate(train, False, obs_keys, names), *split_key, "train")
        fitted = baseline_predictions(fit_on, query, cfg)
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
    split_key: Annotated[
        str | None,
        typer.Option(
            help=SPLIT_KEY_HELP.format(
                side="score TRUTH's 'test' cells, fit --baselines on --train's 'train' cells"
            )
        ),
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
            paths, truth_path, given, train if baselines else None, backed, _split_key(split_key),
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
