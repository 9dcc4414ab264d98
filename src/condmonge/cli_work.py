"""What the commands of :mod:`condmonge.cli` do once their arguments are parsed.

This module imports the model and its dependencies (JAX, anndata, pandas, matplotlib); the
command line imports it only in :func:`condmonge.cli.start`, when a command actually runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import optuna
import pandas as pd

from condmonge.cli_checks import raise_if_interrupted, show_warnings_plainly
from condmonge.cli_split import split
from condmonge.conditions.encoders import read_table
from condmonge.conditions.query import check_request
from condmonge.conditions.smiles import parse_smiles_spec
from condmonge.conditions.spec import parse_covariate
from condmonge.config import Config, DataConfig, load_config
from condmonge.data.prepare import label_cells
from condmonge.data.spec import Condition, ConditionSpec
from condmonge.data.tables import TABLE_SUFFIXES, read_cells, write_cells
from condmonge.data.tables import read_query as read_query_table
from condmonge.demo import run_demo
from condmonge.errors import DataError, suggest
from condmonge.evaluate.experiment import load_experiment_config, run_experiment
from condmonge.evaluate.report import plot_history, to_markdown, validation_line
from condmonge.files import replace_atomically
from condmonge.model import ConditionalMonge
from condmonge.tuning import TuneResult, load_space
from condmonge.tuning import tune as run_tuning

__all__ = [
    "demo",
    "embeddings",
    "experiment",
    "plot_history",
    "predict",
    "read_query",
    "select_side",
    "show_warnings_plainly",
    "split",
    "train",
    "tune",
    "validation_line",
]

def embeddings(items: Sequence[str], control: str | None) -> dict[str, Any]:
    """``KEY=TABLE.csv`` or ``KEY=smiles[,OPTION=VALUE...]:SMILES.csv`` -> embeddings of fit.

    A SMILES spec becomes a callable that the model calls with the training perturbations,
    so the feature cleaning (and the PCA, ``pca=K``) is fitted on training drugs only.
    """
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


def _smiles_table(spec: Any, control: str | None, fit_names: list[str]) -> Any:
    return spec.load(fit_names=fit_names, control=control)


def select_side(adata: ad.AnnData, split_key: str, explicit: bool, side: str) -> ad.AnnData:
    """The cells of ``adata`` with ``obs[split_key] == side`` (``"train"`` or ``"test"``).

    Without the column: every cell when the key is the default, an error when it was given.
    """
    if split_key is None or split_key not in adata.obs:
        if explicit:
            raise DataError(
                f"adata.obs has no split column '{split_key}'{suggest(split_key, adata.obs)}; "
                "write one with `condmonge split`, or leave out --split-key to use every cell"
            )
        return adata
    values = adata.obs[split_key].astype(str)
    unknown = sorted(set(values) - {"train", "test"})
    if unknown:
        raise DataError(
            f"adata.obs['{split_key}'] holds {unknown[0]!r}; a split column holds only 'train' "
            "and 'test' (as `condmonge split` writes it)"
        )
    chosen = (values == side).to_numpy()
    if not chosen.any():
        raise DataError(f"adata.obs['{split_key}'] has no '{side}' cells; nothing to {side} on")
    return adata[chosen].copy()


def train(  # noqa: PLR0913  the parsed flags of one command
    data: Path,
    out: Path,
    fit_args: dict[str, Any],
    *,
    config: Path | None,
    embedding: Sequence[str],
    split_key: tuple[str, bool],
    overrides: dict[str, Any],
    covariates: Sequence[str] = (),
) -> ConditionalMonge:
    """Read, select the train side, fit with checkpoints in ``out``, save, write the history.

    Args:
      data: the training ``.h5ad``.
      out: the run directory (checked by the CLI before this runs).
      fit_args: ``condition_key``, ``control``, ``dose_key``, ``cell_type_key`` (the flags;
        ``None`` keeps the config's), ``holdout``, ``steps``, ``seed``, ``resume``.
      config: the ``--config`` YAML or ``None``.
      embedding: the ``--embedding`` specs.
      split_key: ``(column, given explicitly)`` of the train/test split.
      overrides: dotted config keys set by flags (``{"data.n_pca": 20}``; ``None`` values are
        left out).
      covariates: the ``--covariate-key KEY[:TRANSFORM[:NEUTRAL]]`` specs.
    """
    cfg, spec, tables, adata, test_conditions = read_training(
        data, fit_args, config, embedding, split_key, overrides | covariate_overrides(covariates)
    )
    raise_if_interrupted()  # a Ctrl-C swallowed while reading
    model = ConditionalMonge(cfg).fit(
        adata,
        spec=spec,
        embeddings=tables,
        checkpoint_dir=out,
        test_conditions=test_conditions,
        **fit_args,
    )
    model.save(out)
    write_history(model.history, out)
    return model


def read_training(  # noqa: PLR0913  the parsed flags of one command
    data: Path,
    fit_args: dict[str, Any],
    config: Path | None,
    embedding: Sequence[str],
    split_key: tuple[str, bool],
    overrides: dict[str, Any],
) -> tuple[Config, ConditionSpec, dict[str, Any], ad.AnnData, list[Condition]]:
    """The config, spec, embeddings, training cells and test conditions of ``train``/``tune``.

    Pops the spec flags (``condition_key``, ``control``, ``dose_key``, ``cell_type_key``)
    from ``fit_args``; the other arguments are those of :func:`train`. The test conditions
    (:func:`split_test_conditions`) decide the kind of condition-level validation.
    """
    cfg = load_config(config) if config is not None else Config()
    cfg = cfg.updated({k: v for k, v in overrides.items() if v is not None})
    names = ("condition_key", "control", "dose_key", "cell_type_key")
    spec = cfg.data.spec.updated(**{k: fit_args.pop(k) for k in names})
    tables = embeddings(embedding, spec.control)
    cells = read_cells(
        data, spec.obs_keys, required=spec.obs_keys, features=cfg.data.features or None
    )
    adata = select_side(cells, *split_key, "train")
    if adata.n_vars == 0 and spec.use_rep is None:
        raise DataError(f"'{data}' has no genes (adata.n_vars == 0); train on a matrix with genes")
    return cfg, spec, tables, adata, split_test_conditions(cells, split_key[0], spec)


def tune(  # noqa: PLR0913  the parsed flags of one command
    data: Path,
    out: Path,
    fit_args: dict[str, Any],
    search: dict[str, Any],
    *,
    config: Path | None,
    embedding: Sequence[str],
    split_key: tuple[str, bool],
    overrides: dict[str, Any],
    covariates: Sequence[str] = (),
) -> TuneResult:
    """Read the training side as ``train`` does and run :func:`condmonge.tuning.tune` in ``out``.

    Args:
      data, out, config, embedding, split_key, overrides, covariates: as for :func:`train`.
      fit_args: the spec flags, ``holdout`` and ``seed`` (``None``: the config's).
      search: ``space`` (a YAML path or ``None``), ``n_trials``, ``study_name``, ``timeout``.
    """
    space = load_space(search["space"]) if search["space"] is not None else None  # before data
    cfg, spec, tables, adata, test_conditions = read_training(
        data, fit_args, config, embedding, split_key, overrides | covariate_overrides(covariates)
    )
    cfg = cfg.updated({f"data.{k}": v for k, v in spec.to_dict().items()})
    seed = fit_args["seed"] if fit_args["seed"] is not None else cfg.train.seed
    # The progress bar tells the trials; errors are one line (Optuna would log tracebacks).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return run_tuning(
        adata,
        cfg,
        space,
        search["n_trials"],
        storage_dir=out,
        study_name=search["study_name"],
        holdout=fit_args["holdout"],
        test_conditions=test_conditions,
        embeddings=tables,
        seed=seed,
        timeout=search["timeout"],
        progress=cfg.train.progress,
    )


def split_test_conditions(cells: ad.AnnData, column: str, spec: ConditionSpec) -> list[Condition]:
    """The treated conditions of the split column's 'test' side (none without the column).

    They decide the kind of condition-level validation (``data.validation_kind: auto``).
    """
    if column not in cells.obs:
        return []
    test = cells[cells.obs[column].astype(str).to_numpy() == "test"]
    return label_cells(test, spec).conditions if test.n_obs else []


def covariate_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--covariate-key KEY[:TRANSFORM[:NEUTRAL]]`` (repeatable) -> data config overrides."""
    parsed = [parse_covariate(item) for item in items]
    if not parsed:
        return {}
    return {
        "data.covariate_keys": tuple(k for k, _, _ in parsed),
        "data.covariate_transforms": {k: t for k, t, _ in parsed if t is not None},
        "data.covariate_neutral": {k: n for k, _, n in parsed if n is not None},
    }


def write_history(history: pd.DataFrame, out: Path) -> None:
    """``out/history.csv`` (one row per logged step) and ``out/loss.png`` (the curves)."""
    replace_atomically(out / "history.csv", lambda tmp: history.to_csv(tmp, index=False))
    replace_atomically(out / "loss.png", partial(plot_history, history), suffix=".png")


def _read_query_rows(path: Path, d: DataConfig) -> pd.DataFrame:
    """The rows of a query table (.csv, .tsv or .parquet), with one-line errors."""
    suffix = path.suffix.lower()
    if suffix == ".parquet" or suffix not in TABLE_SUFFIXES:
        return read_query_table(path)  # checks the suffix and the parquet format
    if not path.is_file():
        raise DataError(f"query file '{path}' does not exist")
    try:
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError:
        raise DataError(
            f"query file '{path}' is empty; give a header and one row per condition, e.g. "
            f"'{d.condition_key}' then 'A+B'"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"query file '{path}' is not a readable table: {first}") from None


def read_query(path: Path, d: DataConfig) -> pd.DataFrame:
    """A query table checked against the model's columns: one predicted block per row."""
    table = _read_query_rows(path, d)
    needed = [d.condition_key, d.dose_key, d.cell_type_key, *d.covariate_keys]
    for column in [c for c in needed if c is not None]:
        if column not in table.columns:
            raise DataError(
                f"query file '{path}' has no column '{column}'{suggest(column, table.columns)};"
                f" the model needs the columns {', '.join(c for c in needed if c)}"
            )
    if table.empty:
        raise DataError(f"query file '{path}' has a header but no rows; add one per condition")
    for column in d.covariate_keys:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table[column][values.isna() | ~np.isfinite(values.fillna(0))]
        if len(bad):
            raise DataError(
                f"query file '{path}': covariate column '{column}' must be numeric (row "
                f"{bad.index[0]} holds {str(table[column][bad.index[0]])!r})"
            )
        table[column] = values.astype(float)
    if d.cell_type_key is not None and table[d.cell_type_key].isna().any():
        row = int(np.flatnonzero(table[d.cell_type_key].isna())[0])
        raise DataError(f"query file '{path}': column '{d.cell_type_key}' is empty at row {row}")
    return table


def test_side_query(adata: ad.AnnData, d: DataConfig) -> pd.DataFrame:
    """One query row per treated condition (dose, cell type) present in ``adata``."""
    columns = [c for c in (d.condition_key, d.dose_key, d.cell_type_key) if c is not None]
    obs = adata.obs[columns].astype(str)
    obs = obs[obs[d.condition_key] != d.control]
    if obs.empty:
        raise DataError("the test side holds no treated cells; nothing to predict")
    return obs.drop_duplicates().reset_index(drop=True)


def predict(
    run_dir: Path,
    data: Path,
    out: Path,
    request: dict[str, Any],
    split_key: tuple[str, bool],
) -> ad.AnnData:
    """Load, check the request against the model, predict and write ``out``.

    Args:
      run_dir, data, out: the run directory, the query ``.h5ad`` and the output ``.h5ad``.
      request: ``conditions`` (labels or ``None``), ``query`` (a CSV path or ``None``),
        ``dose``, ``cell_type``, ``ensemble`` (flags or ``None``).
      split_key: ``(column, given explicitly)``: predict from the test side's controls.
    """
    conditions, query = request["conditions"], request["query"]
    dose, cell_type = request["dose"], request["cell_type"]
    if conditions and query:
        raise DataError("give either --conditions or --query, not both")
    model = ConditionalMonge.load(run_dir)
    d = model.config.data
    labels = conditions
    check_request(d.spec, model.conditions, labels, dose, cell_type, model.encodable_cell_types)
    features = None if d.use_rep else model.feature_names
    full = read_cells(data, model.config.data.spec.obs_keys, features=features)
    adata = select_side(full, *split_key, "test")
    wanted: Any = None
    if query is not None:
        wanted = read_query(query, d)
    elif conditions is not None:
        wanted = labels
    elif adata is not full and d.condition_key in adata.obs:
        wanted = test_side_query(adata, d)
    ensemble = request.get("ensemble")
    pred = model.predict(adata, wanted, dose=dose, cell_type=cell_type, ensemble=ensemble)
    write_cells(pred, out)
    return pred


def experiment(config: Path, out: Path) -> str:
    """Run the experiment of ``config`` into ``out``; return its summary as markdown."""
    result = run_experiment(load_experiment_config(config), out, config_dir=config.parent)
    return to_markdown(result.summary)


def demo(out: Path, steps: int, seed: int) -> str:
    """Run the demo into ``out``; return its summary as markdown."""
    return to_markdown(run_demo(out, steps=steps, seed=seed))
