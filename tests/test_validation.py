"""Catalogue of bad input: each case raises (or warns) one line naming the field and the fix.

``docs/ERRORS.md`` is generated from the messages these cases actually produce; after changing a
message, regenerate it with ``CONDMONGE_WRITE_ERRORS_DOC=1 pytest tests/test_validation.py``.
"""

import os
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from safetensors.numpy import save_file

import condmonge as cm
from condmonge import cli, cli_work
from condmonge.conditions.encoders import TableEncoder, read_table
from condmonge.conditions.smiles import smiles_embedding, smiles_features
from condmonge.config import DataConfig
from condmonge.data.anndata_io import align_features, read_h5ad, validate_adata
from condmonge.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataWarning,
    NotFittedError,
    TrainingError,
    UnknownConditionError,
)
from conftest import make_adata, tiny_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "ERRORS.md"


@dataclass
class Ctx:
    model: cm.ConditionalMonge  # trained: one-hot perturbations, cell types k1/k2, doses 1/10
    fit_warnings: list  # warnings raised while fitting ``model``
    data: object  # a fresh copy of the training AnnData for each case
    tmp: Path


@dataclass(frozen=True)
class Case:
    id: str
    section: str
    input: str
    expected: type
    match: str
    run: Callable[[Ctx], object]


def _fit(data, *args, config=None, **kwargs):
    model = cm.ConditionalMonge(config or tiny_config())
    return model.fit(data, *args, **kwargs)


def _fit_std(ctx, data=None, **kwargs):
    kwargs.setdefault("dose_key", "dose")
    kwargs.setdefault("cell_type_key", "cell_type")
    return _fit(ctx.data if data is None else data, "condition", "control", **kwargs)


def _with(data, column, row, value):
    data.obs[column] = data.obs[column].astype(object)
    data.obs.iloc[row, data.obs.columns.get_loc(column)] = value
    return data


def _table(names=("A", "B"), **columns):
    frame = pd.DataFrame(np.eye(len(names), 3), index=list(names), columns=list("xyz"))
    for key, value in columns.items():
        frame[key] = value
    return frame


def _x(data, x):
    data.X = x
    return data


def _counts(data, low=0):
    rng = np.random.default_rng(0)
    return _x(data, rng.integers(low, 300, size=data.shape).astype(np.float32))


def _yaml(ctx, text):
    path = ctx.tmp / "config.yaml"
    path.write_text(text)
    return cm.load_config(path)


def _ckpt(ctx, content: bytes | None = None, header=None):
    run = ctx.tmp / "run"
    run.mkdir(exist_ok=True)
    path = run / "model.safetensors"
    if header is not None:
        save_file({"x": np.zeros(1, np.float32)}, str(path), metadata=header)
    elif content is not None:
        path.write_bytes(content)
    return cm.ConditionalMonge.load(run)


def _truncated(ctx):
    run = ctx.tmp / "run"
    ctx.model.save(run)
    path = ctx.model.save(run)
    path.write_bytes(path.read_bytes()[:2000])
    return cm.ConditionalMonge.load(run)


def _other_data_resume(ctx):
    ctx.model.save(ctx.tmp / "run")  # the fixture model carries its training state
    other = make_adata(n_per_condition=20, cell_types=["k1", "k2"], doses=[1.0, 10.0], d=5)
    return _fit_std(ctx, other, checkpoint_dir=ctx.tmp / "run", resume=True)


def _other_config_resume(ctx):
    ctx.model.save(ctx.tmp / "run")
    wider = tiny_config(**{"model.hidden_dim": 24})
    return _fit_std(ctx, checkpoint_dir=ctx.tmp / "run", resume=True, config=wider)


def _non_finite(ctx):
    config = tiny_config(
        **{
            "train.steps": 30,
            "train.learning_rate": 1e30,
            "train.warmup_steps": 0,
            "train.grad_clip": None,
            "train.checkpoint_every": 1,
            "train.validate_every": 100,
        }
    )
    data = make_adata(n_per_condition=20, d=4)
    try:
        _fit(data, "condition", "control", config=config, checkpoint_dir=ctx.tmp / "nan")
    finally:
        # The checkpoint left behind is the last finite one.
        kept = cm.ConditionalMonge.load(ctx.tmp / "nan")
        for leaf in __import__("jax").tree_util.tree_leaves(kept.params):
            assert np.isfinite(leaf).all()


def _query_raw_counts(ctx):
    query = _counts(ctx.data[ctx.data.obs.condition == "control"].copy())
    return ctx.model.predict(query, ["A"], dose=1)


def _small_condition_warning(ctx):
    for w in ctx.fit_warnings:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


C = Case
CASES = [
    # ------------------------------------------------------------------ training data
    C("obs-column", "data", "condition column missing or misspelled (`--condition-key conditon`)",
      DataError, "adata.obs has no column 'conditon' (did you mean 'condition'?)",
      lambda c: _fit(c.data, "conditon", "control")),
    C("dose-column", "data", "dose column missing (`--dose-key dosage`)",
      DataError, "adata.obs has no column 'dosage' (did you mean 'dose'?); set dose_key",
      lambda c: _fit_std(c, dose_key="dosage")),
    C("cell-type-column", "data", "cell-type column missing", DataError,
      "adata.obs has no column 'celltype' (did you mean 'cell_type'?); set cell_type_key",
      lambda c: _fit_std(c, cell_type_key="celltype")),
    C("covariate-type", "data", "covariate column not numeric", DataError,
      "adata.obs['batch'] is a covariate and must be numeric",
      lambda c: (c.data.obs.__setitem__("batch", "b1"),
                 _fit_std(c, covariate_keys=["batch"]))),
    C("control-absent", "data", "control label absent (`--control ctrl`)", DataError,
      "control label 'ctrl' not found in adata.obs['condition']",
      lambda c: _fit(c.data, "condition", "ctrl")),
    C("label-missing", "data", "a cell without a condition label (NaN)", DataError,
      "adata.obs['condition'] has 1 missing values",
      lambda c: _fit_std(c, _with(c.data, "condition", 0, None))),
    C("label-empty", "data", "an empty condition label (`''`)", DataError,
      "adata.obs['condition'] has 1 empty labels (first at row 3)",
      lambda c: _fit_std(c, _with(c.data, "condition", 3, " "))),
    C("label-empty-name", "data", "a combination with an empty name (`'A+'`)",
      UnknownConditionError, "condition label 'A+' has an empty perturbation name",
      lambda c: _fit_std(c, _with(c.data, "condition", 30, "A+"))),
    C("only-controls", "data", "only control cells", DataError, "holds only control cells",
      lambda c: _fit_std(c, c.data[c.data.obs.condition == "control"].copy())),
    C("dup-genes", "data", "duplicate gene names", DataError,
      "adata.var_names has 1 duplicates (e.g. 'g0'); run `adata.var_names_make_unique()`",
      lambda c: (setattr(c.data, "var_names", ["g0", "g0", "g2", "g3", "g4", "g5"]),
                 _fit_std(c))),
    C("dup-cells", "data", "duplicate cell names", DataError,
      "adata.obs_names has 1 duplicates (e.g. 'c0'); run `adata.obs_names_make_unique()`",
      lambda c: (setattr(c.data, "obs_names", ["c0", "c0", *c.data.obs_names[2:]]),
                 _fit_std(c))),
    C("dose-negative", "data", "negative dose", DataError,
      "adata.obs['dose'] has 1 treated cells with a negative, missing or non-numeric dose "
      "(e.g. '-1' at row 30)", lambda c: _fit_std(c, _with(c.data, "dose", 30, -1))),
    C("dose-text", "data", "non-numeric dose", DataError,
      "non-numeric dose (e.g. 'high' at row 30); doses must be numbers >= 0",
      lambda c: _fit_std(c, _with(c.data, "dose", 30, "high"))),
    C("dose-count", "data", "three doses for a two-drug combination (`'1+2+3'`)",
      UnknownConditionError, "dose '1+2+3' gives 3 doses for 2 perturbations",
      lambda c: _fit_std(c, _with(c.data, "dose", 100, "1+2+3"))),
    C("x-nan", "data", "NaN or inf in X", DataError,
      "adata.X contains NaN or inf in 1 cells (first at row 3)",
      lambda c: (c.data.X.__setitem__((3, 2), np.inf), _fit_std(c))),
    C("x-nan-sparse", "data", "NaN in a sparse X", DataError, "adata.X contains NaN or inf",
      lambda c: _fit_std(c, _x(c.data, sp.csr_matrix(np.where(
          np.arange(c.data.X.size).reshape(c.data.shape) == 7, np.nan, c.data.X))))),
    C("rep-nan", "data", "NaN in `obsm[use_rep]`", DataError,
      "adata.obsm['X_pca'] contains NaN or inf in 1 cells",
      lambda c: (c.data.obsm.__setitem__("X_pca", np.where(
          np.arange(c.data.n_obs)[:, None] == 5, np.nan, np.ones((c.data.n_obs, 2)))),
                 _fit_std(c, use_rep="X_pca"))),
    C("rep-missing", "data", "`use_rep` not in obsm", DataError,
      "adata.obsm has no 'X_pac' (did you mean 'X_pca'?)",
      lambda c: (c.data.obsm.__setitem__("X_pca", np.ones((c.data.n_obs, 2))),
                 _fit_std(c, use_rep="X_pac"))),
    C("rep-and-pca", "data", "both `use_rep` and `n_pca`", DataError,
      "set either use_rep ('X_pca') or n_pca (2), not both",
      lambda c: (c.data.obsm.__setitem__("X_pca", np.ones((c.data.n_obs, 2))),
                 _fit_std(c, use_rep="X_pca", config=tiny_config(**{"data.n_pca": 2})))),
    C("x-negative-counts", "data", "negative values in integer (count-like) X", DataError,
      "adata.X holds integer (count-like) values with negatives",
      lambda c: _fit_std(c, _counts(c.data, low=-3))),
    C("x-raw-counts", "data", "raw counts where log-normalised data are expected", DataWarning,
      "adata.X looks like raw counts (integers up to 299); condmonge expects log-normalised "
      "expression: run `sc.pp.normalize_total(adata)` and `sc.pp.log1p(adata)`",
      lambda c: validate_adata(_counts(c.data), DataConfig())),
    C("x-not-logged", "data", "normalised but not log-transformed X", DataWarning,
      "adata.X looks normalised but not log-transformed (values up to",
      lambda c: validate_adata(_x(c.data, np.abs(c.data.X) * 100 + 0.5), DataConfig())),
    C("small-condition", "data",
      "a condition with fewer cells than `cells_per_condition` (sampled with replacement)",
      DataWarning, "1 condition(s) have fewer cells than cells_per_condition=16",
      _small_condition_warning),
    C("holdout-absent", "data", "held-out condition absent from the data", UnknownConditionError,
      "held-out condition(s) 'ZZZ' do not occur in the data",
      lambda c: _fit_std(c, holdout=["ZZZ"])),
    C("holdout-all", "data", "every condition held out", DataError,
      "every treated condition is held out",
      lambda c: _fit_std(c, holdout=["A", "B", "A+B"])),
    C("no-controls-of-type", "data", "a cell type with treated cells but no controls", DataError,
      "cell type 'k2' has treated cells", lambda c: _fit_std(
          c, c.data[~((c.data.obs.cell_type == "k2") & (c.data.obs.condition == "control"))]
          .copy())),
    C("data-missing", "data", "data file does not exist", DataError,
      "data file 'nope.h5ad' does not exist", lambda c: read_h5ad("nope.h5ad")),
    C("data-foreign", "data", "data file is not .h5ad", DataError,
      "is not a readable .h5ad file",
      lambda c: (Path(c.tmp / "x.h5ad").write_text("a,b\n"), read_h5ad(c.tmp / "x.h5ad"))),
    # ------------------------------------------------------------------ embeddings
    C("table-missing-drug", "embeddings", "a training drug missing from the embedding table",
      UnknownConditionError, "perturbation 'B' missing from the embedding table; add a row",
      lambda c: _fit_std(c, embeddings={"condition": _table(["A", "C"])})),
    C("table-dup", "embeddings", "embedding table lists a name twice", DataError,
      "the perturbation embedding table lists 'A' twice",
      lambda c: _fit_std(c, embeddings={"condition": _table(["A", "A", "B"])})),
    C("table-text", "embeddings", "embedding table with a text column", DataError,
      "has non-numeric columns ['moa']",
      lambda c: _fit_std(c, embeddings={"condition": _table(moa="kinase")})),
    C("table-nan", "embeddings", "embedding table with NaN", DataError,
      "the perturbation embedding table contains NaN or inf",
      lambda c: _fit_std(c, embeddings={"condition": _table(w=np.nan)})),
    C("table-key", "embeddings", "embedding keyed by an unknown column", DataError,
      "embeddings given for ['drug']; key them by the condition column 'condition'",
      lambda c: _fit_std(c, embeddings={"drug": _table()})),
    C("table-file", "embeddings", "embedding CSV does not exist", DataError,
      "embedding table 'nope.csv' does not exist", lambda c: read_table("nope.csv")),
    C("embedding-flag", "embeddings", "`--embedding` without `KEY=`", DataError,
      "--embedding 'drugs.csv' must be KEY=TABLE.csv",
      lambda c: cli_work.embeddings(["drugs.csv"], None)),
    C("smiles-missing", "embeddings", "drug missing from the SMILES table", DataError,
      "1 of 2 drugs have no SMILES",
      lambda c: smiles_embedding({"aspirin": "CC(=O)Oc1ccccc1C(=O)O"}, cache_dir=False,
                                 fit_names=["aspirin", "ghost"])),
    C("smiles-invalid", "embeddings", "invalid SMILES", DataError, "'bad_drug'",
      lambda c: smiles_features({"bad_drug": "C1CC((N"}, cache_dir=False)),
    # ------------------------------------------------------------------ prediction queries
    C("unknown-drug", "predict", "unknown drug, model without an embedding table",
      UnknownConditionError, "perturbation 'C' was not seen in training and the model encodes "
      "perturbations one-hot; to predict unseen perturbations, fit with an embedding table",
      lambda c: c.model.predict(c.data, ["A+C"], dose=1)),
    C("unknown-drug-table", "predict", "queried drug missing from the embedding table",
      UnknownConditionError, "perturbation 'Z' missing from the embedding table",
      lambda c: TableEncoder(_table(["A", "B"])).fit(["A", "B"]).encode(["A", "Z"])),
    C("unknown-cell-type", "predict", "unknown cell type", UnknownConditionError,
      "cell type 'k9' was not seen in training",
      lambda c: c.model.predict(c.data, ["A"], dose=1, cell_type="k9")),
    C("dose-needed", "predict", "no dose for a model trained with doses",
      UnknownConditionError, "condition 'A' needs a dose (--dose",
      lambda c: c.model.predict(c.data, ["A"])),
    C("query-dose-negative", "predict", "negative dose in a query", UnknownConditionError,
      "dose '-1' must be a finite number >= 0",
      lambda c: c.model.predict(c.data, ["A"], dose=-1)),
    C("query-dose-text", "predict", "non-numeric dose in a query", UnknownConditionError,
      "dose 'lots' is not a number", lambda c: c.model.predict(c.data, ["A"], dose="lots")),
    C("query-control", "predict", "the control label queried", UnknownConditionError,
      "'control' is the control label", lambda c: c.model.predict(c.data, ["control"], dose=1)),
    C("query-genes-missing", "predict", "query lacks some of the model's genes", DataError,
      "2 of the model's 6 genes are missing from adata.var_names (g4, g5); subset or reindex",
      lambda c: c.model.predict(c.data[:, :4].copy(), ["A"], dose=1)),
    C("query-dup-genes", "predict", "query has duplicate gene names (in another order)",
      DataError, "adata.var_names has 1 duplicates",
      lambda c: c.model.predict(c.data[:, [1, 0, 2, 3, 4, 4]].copy(), ["A"], dose=1)),
    C("query-nan", "predict", "NaN in the query", DataError,
      "the query's features contain NaN or inf",
      lambda c: (c.data.X.__setitem__((0, 0), np.nan),
                 c.model.predict(c.data, ["A"], dose=1))),
    C("query-raw-counts", "predict", "query holds raw counts", DataWarning,
      "the query's adata.X looks like raw counts", _query_raw_counts),
    C("query-dup-cells", "predict", "query has duplicate cell names", DataError,
      "the query's adata.obs_names has",
      lambda c: (setattr(c.data, "obs_names", ["c0"] * c.data.n_obs),
                 c.model.predict(c.data, ["A"], dose=1))),
    C("query-no-controls", "predict", "query without control cells", DataError,
      "adata.obs['condition'] has no 'control' cells to predict from",
      lambda c: c.model.predict(c.data[c.data.obs.condition == "A"].copy(), ["A"], dose=1)),
    C("query-no-cell-type", "predict", "query without the cell-type column", DataError,
      "adata.obs has no column 'cell_type'; the model maps controls per cell type",
      lambda c: (c.data.obs.pop("cell_type"), c.model.predict(c.data, ["A"], dose=1))),
    C("query-cell-type-controls", "predict", "no controls of the queried cell type", DataError,
      "no control cells of cell type 'k2' in the query data",
      lambda c: c.model.predict(c.data[c.data.obs.cell_type == "k1"].copy(), ["A"], dose=1,
                                cell_type="k2")),
    C("query-table-column", "predict", "query table without the condition column", DataError,
      "the query table has no column 'condition'",
      lambda c: c.model.predict(c.data, pd.DataFrame({"drug": ["A"]}))),
    C("not-fitted", "predict", "predict before fit", NotFittedError,
      "the model is not trained; call `fit` or `ConditionalMonge.load`",
      lambda c: cm.ConditionalMonge().predict(c.data, ["A"])),
    # ------------------------------------------------------------------ configuration
    C("config-unknown", "config", "unknown config key", ConfigError,
      "unknown key 'train.stepz'; valid sections are data, model, loss, train",
      lambda c: _yaml(c, "train:\n  stepz: 10\n")),
    C("config-type", "config", "ill-typed config value", ConfigError,
      "'train.steps': Input should be a valid integer",
      lambda c: _yaml(c, "train:\n  steps: many\n")),
    C("config-range", "config", "out-of-range config value", ConfigError,
      "'train.learning_rate': Input should be greater than 0",
      lambda c: _yaml(c, "train:\n  learning_rate: -1\n")),
    C("config-yaml", "config", "config is not YAML", ConfigError, "is not valid YAML",
      lambda c: _yaml(c, "train: [\n")),
    C("config-python-tag", "config", "config with a `!!python/...` tag (never executed)",
      ConfigError, "is not valid YAML",
      lambda c: _yaml(c, "train: !!python/object/apply:os.system ['true']\n")),
    C("config-shape", "config", "config is not a mapping", ConfigError,
      "must hold a mapping of sections", lambda c: _yaml(c, "- steps\n")),
    C("config-file", "config", "config file does not exist", ConfigError,
      "config file 'nope.yaml' does not exist", lambda c: cm.load_config("nope.yaml")),
    C("config-override", "config", "unknown override key (Python API)", ConfigError,
      "unknown config key 'model.widht'", lambda c: cm.Config().updated({"model.widht": 3})),
    # ------------------------------------------------------------------ checkpoints
    C("ckpt-missing", "checkpoint", "no checkpoint in the directory", CheckpointError,
      "no checkpoint at '<tmp>/run/model.safetensors'", lambda c: _ckpt(c)),
    C("ckpt-truncated", "checkpoint", "truncated checkpoint", CheckpointError,
      "is not a readable condmonge checkpoint (truncated or foreign file: ", _truncated),
    C("ckpt-foreign", "checkpoint", "foreign file named model.safetensors", CheckpointError,
      "truncated or foreign file", lambda c: _ckpt(c, b"GIF89a" + bytes(100))),
    C("ckpt-pickle", "checkpoint", "a pickle named model.safetensors (never unpickled)",
      CheckpointError, "truncated or foreign file",
      lambda c: _ckpt(c, pickle.dumps({"params": [1, 2]}))),
    C("ckpt-no-header", "checkpoint", "safetensors file of another program", CheckpointError,
      "is not a condmonge checkpoint (format header missing)", lambda c: _ckpt(c, header={})),
    C("ckpt-version", "checkpoint", "checkpoint from an incompatible format version",
      CheckpointError, "has checkpoint format version 999 (condmonge 9.9.9); this condmonge "
      f"{cm.__version__} reads version {cm._version.CHECKPOINT_VERSION}",
      lambda c: _ckpt(c, header={"format": "condmonge-checkpoint", "format_version": "999",
                                 "condmonge_version": "9.9.9", "meta": "{}"})),
    C("ckpt-other-data", "checkpoint", "`--resume` with other genes or conditions",
      CheckpointError, "was trained on other genes or conditions", _other_data_resume),
    C("ckpt-other-config", "checkpoint", "`--resume` with another network configuration",
      CheckpointError, "it was written with another model configuration", _other_config_resume),
    # ------------------------------------------------------------------ training
    C("non-finite-loss", "training", "non-finite loss (e.g. a far too large learning rate)",
      TrainingError, "non-finite loss at step", _non_finite),
]  # fmt: skip

RESULTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def fitted():
    data = make_adata(n_per_condition=20, cell_types=["k1", "k2"], doses=[1.0, 10.0])
    small = (data.obs.cell_type == "k2") & (data.obs.condition == "B") & (data.obs.dose == 10.0)
    data = data[~small | (np.cumsum(small) <= 8)].copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _fit(data, "condition", "control", dose_key="dose", cell_type_key="cell_type")
    return model, [w for w in caught if issubclass(w.category, DataWarning)], data


SLOW_CASES = {"non-finite-loss"}  # trains until the loss blows up


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c.id in SLOW_CASES else c for c in CASES],
    ids=[c.id for c in CASES],
)
def test_bad_input(case, fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, fit_warnings, data = fitted
    ctx = Ctx(model, fit_warnings, data.copy(), tmp_path)
    if issubclass(case.expected, Warning):
        with pytest.warns(case.expected) as record:
            case.run(ctx)
        messages = [str(w.message) for w in record if issubclass(w.category, case.expected)]
        message = messages[0]
    else:
        with pytest.raises(case.expected) as exc:
            case.run(ctx)
        message = str(exc.value)
        assert isinstance(exc.value, cm.errors.CondMongeError)
    message = message.replace(str(tmp_path), "<tmp>")
    assert "\n" not in message
    assert case.match in message, message
    RESULTS[case.id] = message


def test_query_genes_in_another_order_are_aligned(fitted):
    model, _, data = fitted
    names = list(data.var_names)
    reordered = data[:, names[::-1]].copy()
    np.testing.assert_array_equal(align_features(reordered, names, None), data.X)
    np.testing.assert_array_equal(
        model.predict(reordered, ["A"], dose=1).X, model.predict(data, ["A"], dose=1).X
    )


def test_cli_turns_catalogued_errors_into_exit_2_and_one_line(fitted, tmp_path, capsys):
    model, _, data = fitted
    model.save(tmp_path / "run")
    data.write_h5ad(tmp_path / "data.h5ad")
    cases = [
        (
            ["predict", tmp_path / "run", tmp_path / "data.h5ad", "--out", tmp_path / "p.h5ad",
             "--conditions", "A"],
            "needs a dose",
        ),
        (
            ["predict", tmp_path / "run", tmp_path / "data.h5ad", "--out", tmp_path / "p.h5ad",
             "--conditions", "A", "--dose", "-3"],
            "dose '-3' must be a finite number >= 0",
        ),
        (
            ["train", tmp_path / "data.h5ad", "--out", tmp_path / "r", "--condition-key",
             "condition", "--control", "control", "--dose-key", "cell_type"],
            "adata.obs['cell_type'] has 228 treated cells with a negative, missing or non-numeric",
        ),
    ]  # fmt: skip
    for args, message in cases:
        old, sys.argv = sys.argv, ["condmonge", *map(str, args)]
        try:
            with pytest.raises(SystemExit) as exit_info:
                cli.main()
        finally:
            sys.argv = old
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "p.h5ad").exists() and not (tmp_path / "r").exists()


PENDING: list[tuple[str, str, str]] = []
BEHAVIOUR = [
    ("predict", "query genes in another order", "aligned by name (no error)"),
    ("data", "a condition with one cell", "trained on (validated on its training cell); warns as"
     " a condition with fewer cells than `cells_per_condition`"),
    ("data", "unused categories of a categorical condition column", "ignored"),
    ("data", "negative values in non-integer X (scaled, PCA)", "accepted: only count-like"
     " (integer-valued) X is checked for negatives"),
]  # fmt: skip


def render_doc(results: dict[str, str]) -> str:
    lines = [
        "# Errors and warnings",
        "",
        "Every error a user can cause derives from `condmonge.errors.CondMongeError` (a"
        " `ValueError`); the CLI prints it as one line, `error: <message>`, on stderr and exits"
        " with code 2. Warnings are `condmonge.errors.DataWarning` (a `UserWarning`).",
        "",
        "Generated from the messages the cases of `tests/test_validation.py` actually produce"
        " (`CONDMONGE_WRITE_ERRORS_DOC=1 pytest tests/test_validation.py`); `<tmp>` stands for"
        " the directory of the run.",
        "",
    ]
    titles = {
        "data": "Training data",
        "embeddings": "Embedding tables",
        "predict": "Prediction queries",
        "config": "Configuration",
        "checkpoint": "Checkpoints",
        "training": "Training",
    }
    for section, title in titles.items():
        lines += [f"## {title}", "", "| input | raised | message |", "|---|---|---|"]
        for case in CASES:
            if case.section == section:
                message = results[case.id].replace("|", "\\|")
                name = case.expected.__name__
                lines.append(f"| {case.input} | `{name}` | {message} |")
        for where, what, outcome in PENDING + BEHAVIOUR:
            if where == section:
                lines.append(f"| {what} | — | {outcome} |")
        lines.append("")
    lines += [
        "## Interrupted and repeated runs",
        "",
        "- Checkpoints (`model.safetensors`: arrays plus a JSON header, never pickle) are written"
        " to a temporary file, read back, and renamed over the old one; the one replaced is kept"
        " as `model.prev.safetensors`. A damaged checkpoint names that file.",
        "- A checkpoint holds parameters, optimizer state, step, RNG key (the data sampler draws"
        " from it; the train/validation split is a function of the seed) and the early-stopping"
        " state. A run killed at any moment (even SIGKILL) and continued with `condmonge train"
        " ... --resume` ends with the same parameters, bit for bit on CPU, as an uninterrupted"
        " run (`tests/test_reliability.py`).",
        "- Ctrl-C (SIGINT) saves the last completed step and exits with code 130.",
        "- A non-finite loss stops training with `TrainingError` naming the conditions; a"
        " diverged (NaN/inf) state is never written, so the last good checkpoint stays.",
        "- The same seed gives identical predictions in another process.",
        "- Configs are read with `yaml.safe_load`; checkpoints and configs hold no code and no"
        " paths. Predictions (`condmonge predict --out`) are written to a temporary file and"
        " renamed.",
        "",
    ]
    return "\n".join(lines)


def test_errors_doc_is_current():
    if len(RESULTS) != len(CASES):
        pytest.skip("run the whole catalogue to check docs/ERRORS.md")
    text = render_doc(RESULTS)
    # The command-line part below the marker is generated by tests/test_cli_catalogue.py.
    head, marker, tail = DOC.read_text().partition("<!-- generated by tests/test_cli_catalogue")
    if os.environ.get("CONDMONGE_WRITE_ERRORS_DOC"):
        DOC.write_text(text + marker + tail)
    hint = "CONDMONGE_WRITE_ERRORS_DOC=1 pytest tests/test_validation.py"
    assert head == text, f"docs/ERRORS.md is out of date: {hint}"
