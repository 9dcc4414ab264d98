"""Per-cell tables in and out: ``.csv``, ``.tsv``, ``.parquet`` (pyarrow), ``.zarr`` and ``.h5ad``.

A table (one row per cell, e.g. a 4i / imaging export of protein intensities and morphology) is
turned into an AnnData: the columns the run names (condition, dose, cell type, covariates) and
every non-numeric column go to ``obs``; the features (``X``) are the remaining numeric columns,
or the columns chosen by ``features`` (names or glob patterns such as ``"intensity_*"``).

Parquet files are read one row group at a time into a preallocated ``float32`` feature matrix,
so nothing but that matrix and the ``obs`` columns is held in memory. Every problem is a
one-line :class:`~condmonge.errors.DataError` naming the column and the fix.
"""

from __future__ import annotations

import csv
import fnmatch
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from condmonge.data.anndata_io import read_h5ad, write_h5ad_atomic
from condmonge.errors import DataError, suggest
from condmonge.files import replace_atomically

__all__ = [
    "CELL_SUFFIXES",
    "RESERVED_OBS",
    "TABLE_SUFFIXES",
    "as_anndata",
    "parse_features",
    "parquet_metadata",
    "read_cells",
    "read_query",
    "table_to_anndata",
    "write_cells",
]

#: Suffixes read as one-row-per-cell tables.
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
#: Every suffix :func:`read_cells` accepts.
CELL_SUFFIXES = (".h5ad", ".zarr", *TABLE_SUFFIXES)
#: Columns that predictions carry in ``obs``; never features, even when numeric.
RESERVED_OBS = (
    "condition_id",
    "source_index",
    "source_obs_name",
    "split",
    "uncertainty",
    "member_spread",
    "ood_score",
)
# Pandas writes an unnamed index column; parquet stores the index under this name.
_INDEX_COLUMNS = ("Unnamed: 0", "__index_level_0__", "obs_names", "cell_id")
# A text column is a (broken) feature rather than metadata when most of its values are numbers.
_MIXED_MIN_NUMERIC = 0.5


def parse_features(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b,int_*"`` or a list of names/globs -> a tuple of patterns (empty: all numeric)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if str(s).strip())


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in CELL_SUFFIXES:
        raise DataError(
            f"'{path}' has an unknown suffix '{path.suffix}'; give a "
            f"{', '.join(CELL_SUFFIXES)} file"
        )
    return suffix


def read_cells(
    path: str | Path,
    obs_keys: Iterable[str | None] = (),
    *,
    required: Iterable[str | None] = (),
    features: str | Sequence[str] | None = None,
) -> ad.AnnData:
    """Read cells from any supported file into an AnnData.

    Args:
      path: an ``.h5ad``, ``.zarr`` (anndata), ``.csv``, ``.tsv`` or ``.parquet`` file.
      obs_keys: table columns that go to ``obs`` even when numeric (dose, time, ...), when present.
      required: table columns that must be present (e.g. the condition column when training).
      features: for tables, the feature columns (names or globs); ``None``: every numeric column
        that is not an obs key.

    Returns:
      The AnnData; a table's rows keep their order, ``var_names`` are its feature column names.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist")
    if suffix == ".h5ad":
        return read_h5ad(path)
    if suffix == ".zarr":
        try:
            return ad.read_zarr(path)
        except Exception as exc:  # zarr raises many types for a damaged or foreign store
            raise DataError(
                f"'{path}' is not a readable .zarr AnnData store ({type(exc).__name__}); write it "
                "with anndata's `adata.write_zarr(path)`"
            ) from None
    keys = [k for k in obs_keys if k]
    need = [k for k in required if k]
    if suffix == ".parquet":
        return _read_parquet(path, keys, need, parse_features(features))
    return table_to_anndata(_read_text(path, suffix), keys, required=need, features=features,
                            where=f"table '{path}'")  # fmt: skip


def _read_text(path: Path, suffix: str) -> pd.DataFrame:
    sep = "\t" if suffix == ".tsv" else ","
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle, delimiter=sep), [])
    _require_unique_columns(header, f"table '{path}'")
    try:
        # Strings stay strings so that a mixed column can be named rather than silently coerced.
        return pd.read_csv(path, sep=sep, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"table '{path}' is not a readable {suffix[1:].upper()} file ({first}); write one row "
            f"per cell with a header line, separated by {'tabs' if sep == chr(9) else 'commas'}"
        ) from None


def _require_unique_columns(names: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(
                f"{where} has the column name '{name}' more than once; rename the duplicates so "
                "that every column name is unique"
            )
        seen.add(name)


def _select(columns: Sequence[str], patterns: Sequence[str], where: str) -> list[str]:
    chosen: list[str] = []
    for pattern in patterns:
        hits = [c for c in columns if fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise DataError(
                f"{where} has no column matching feature '{pattern}'{suggest(pattern, columns)}; "
                "fix --features (names or globs such as 'intensity_*', comma-separated)"
            )
        chosen += [c for c in hits if c not in chosen]
    return chosen


def _numeric_share(values: pd.Series) -> float:
    present = values.dropna()
    if present.empty:
        return 0.0
    return float(pd.to_numeric(present, errors="coerce").notna().mean())


def _mixed_error(column: str, values: pd.Series, where: str) -> DataError:
    parsed = pd.to_numeric(values, errors="coerce")
    bad = values[parsed.isna() & values.notna()]
    row = bad.index[0] if len(bad) else "?"
    example = bad.iloc[0] if len(bad) else values.iloc[0]
    return DataError(
        f"{where}: feature column '{column}' mixes numbers and text (e.g. '{example}' at row "
        f"{row}); make every value a number (empty for missing) or leave the column out of "
        "--features"
    )


def _feature_columns(
    frame: pd.DataFrame, keys: Sequence[str], patterns: Sequence[str], where: str
) -> list[str]:
    """The feature columns of ``frame``: chosen by ``patterns``, else every numeric non-key."""
    candidates = [c for c in frame.columns if c not in keys and c not in RESERVED_OBS]
    if patterns:
        chosen = _select(candidates, patterns, where)
        for column in chosen:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                raise _mixed_error(column, frame[column].astype(object), where)
        return chosen
    chosen = []
    for column in candidates:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_numeric_dtype(values):
            chosen.append(column)
        elif values.dtype == object and _numeric_share(values) >= _MIXED_MIN_NUMERIC:
            raise _mixed_error(column, values, where)
    if not chosen:
        raise DataError(
            f"{where} has no numeric feature column besides the keys {list(keys)}; add the "
            "per-cell measurements as numeric columns, or name them with --features"
        )
    return chosen


def _check_nan(x: np.ndarray, names: Sequence[str], where: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        column = int(np.flatnonzero(bad.any(axis=0))[0])
        rows = np.flatnonzero(bad[:, column])
        raise DataError(
            f"{where}: feature column '{names[column]}' has {rows.size} NaN or inf values (first "
            f"at row {rows[0]}); drop or impute those cells before training"
        )


def _obs_frame(obs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The non-feature columns as ``obs``: an index column becomes ``obs_names``."""
    index = next((c for c in _INDEX_COLUMNS if c in obs.columns and c not in keys), None)
    if index is not None:
        obs = obs.set_index(index)
        obs.index = obs.index.astype(str)
    else:
        obs.index = pd.Index([f"cell{i}" for i in range(len(obs))])
    obs.index.name = None
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype(str).where(obs[column].notna(), None)
    return obs


def table_to_anndata(
    frame: pd.DataFrame,
    obs_keys: Iterable[str | None] = (),
    *,
    required: Iterable[str | None] = (),
    features: str | Sequence[str] | None = None,
    where: str = "the table",
) -> ad.AnnData:
    """Turn a one-row-per-cell DataFrame into an AnnData (see the module docstring).

    Args:
      frame: ``[n_cells, n_columns]`` keys, metadata and features.
      obs_keys: columns that go to ``obs`` even when numeric; required: columns that must exist.
      features: feature columns (names or globs); ``None``: every numeric non-key column.
      where: how errors name the table.

    Returns:
      AnnData with ``X [n_cells, n_features]`` (float32) and the other columns in ``obs``.
    """
    _require_unique_columns([str(c) for c in frame.columns], where)
    frame = frame.rename(columns=str)
    for key in [k for k in required if k]:
        if key not in frame.columns:
            raise DataError(
                f"{where} has no column '{key}'{suggest(key, frame.columns)}; name the right "
                f"column with the matching --*-key option (columns: "
                f"{', '.join(list(frame.columns)[:12])})"
            )
    keys = [k for k in obs_keys if k and k in frame.columns]
    names = _feature_columns(frame, keys, parse_features(features), where)
    x = frame[names].to_numpy(np.float32)
    _check_nan(x, names, where)
    obs = _obs_frame(frame.drop(columns=names), keys)
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(names, dtype=str)))
    adata.uns["condmonge_table"] = where  # tells modality detection that this came from a table
    return adata


def _read_parquet(
    path: Path, keys: Sequence[str], required: Sequence[str], patterns: Sequence[str]
) -> ad.AnnData:
    where = f"table '{path}'"
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"'{path}' is not a parquet file ({str(exc).splitlines()[0]}); write it with "
            "`DataFrame.to_parquet(path)`, or give the file the suffix of its real format"
        ) from None
    schema = handle.schema_arrow
    _require_unique_columns(schema.names, where)
    missing = [k for k in required if k not in schema.names]
    if missing:
        raise DataError(
            f"{where} has no column '{missing[0]}'{suggest(missing[0], schema.names)}; name the "
            f"right column with the matching --*-key option (columns: "
            f"{', '.join(schema.names[:12])})"
        )
    numeric = {
        f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
    }
    candidates = [n for n in schema.names if n not in keys and n not in RESERVED_OBS]
    if patterns:
        names = _select(candidates, patterns, where)
        text = [n for n in names if n not in numeric]
        if text:
            sample = handle.read_row_group(0, columns=[text[0]]).to_pandas()[text[0]]
            raise _mixed_error(text[0], sample.astype(object), where)
    else:
        names = [n for n in candidates if n in numeric]
        if not names:
            raise DataError(
                f"{where} has no numeric feature column besides the keys {list(keys)}; add the "
                "per-cell measurements as numeric columns, or name them with --features"
            )
    x = np.empty((handle.metadata.num_rows, len(names)), np.float32)
    start = 0
    for group in range(handle.num_row_groups):  # one row group in memory at a time
        block = handle.read_row_group(group, columns=names)
        stop = start + block.num_rows
        for j, column in enumerate(block.columns):
            x[start:stop, j] = column.to_numpy(zero_copy_only=False)
        start = stop
    _check_nan(x, names, where)
    others = [n for n in schema.names if n not in names]
    obs = handle.read(columns=others).to_pandas() if others else pd.DataFrame(index=range(len(x)))
    adata = ad.AnnData(
        X=x,
        obs=_obs_frame(obs.reset_index(drop=True), keys),
        var=pd.DataFrame(index=pd.Index(names, dtype=str)),
    )
    adata.uns["condmonge_table"] = where
    stored = parquet_metadata(path)
    if stored:
        adata.uns["condmonge"] = stored
    return adata


def as_anndata(
    data: ad.AnnData | pd.DataFrame,
    obs_keys: Iterable[str | None] = (),
    *,
    required: Iterable[str | None] = (),
    features: str | Sequence[str] | None = None,
) -> ad.AnnData:
    """An AnnData as it is, or a one-row-per-cell DataFrame via :func:`table_to_anndata`."""
    if isinstance(data, pd.DataFrame):
        return table_to_anndata(
            data, obs_keys, required=required, features=features, where="the DataFrame"
        )
    if not isinstance(data, ad.AnnData):
        raise DataError(
            f"expected an AnnData or a pandas DataFrame of cells, got {type(data).__name__}"
        )
    return data


def _as_frame(adata: ad.AnnData) -> pd.DataFrame:
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    names = [str(v) for v in adata.var_names]
    clash = [n for n in names if n in adata.obs.columns]
    if clash:
        raise DataError(
            f"feature '{clash[0]}' has the name of an obs column; rename one before writing a table"
        )
    obs = adata.obs.copy()
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].astype(str)
    obs.insert(0, "obs_names", adata.obs_names.astype(str))
    features = pd.DataFrame(x, columns=names, index=obs.index)
    return pd.concat([obs, features], axis=1).reset_index(drop=True)


def write_cells(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` in the format ``path``'s suffix names (atomically: never half-written).

    Tables hold the ``obs`` columns, an ``obs_names`` column and one column per feature;
    parquet files also keep ``uns['condmonge']`` (the model's settings) in their metadata.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".h5ad":
        return write_h5ad_atomic(adata, path)
    if suffix == ".zarr":
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_zarr(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path
    frame = _as_frame(adata)
    if suffix == ".parquet":
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = adata.uns.get("condmonge")
        if isinstance(meta, dict):
            extra = {f"condmonge.{k}".encode(): str(v).encode() for k, v in meta.items()}
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        return replace_atomically(path, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
    sep = "\t" if suffix == ".tsv" else ","
    return replace_atomically(
        path, lambda tmp: frame.to_csv(tmp, sep=sep, index=False), suffix=suffix
    )


def parquet_metadata(path: str | Path) -> dict[str, str]:
    """The ``uns['condmonge']`` entries that :func:`write_cells` stored in a parquet file."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return {}
    prefix = b"condmonge."
    return {k[len(prefix) :].decode(): v.decode() for k, v in meta.items() if k.startswith(prefix)}


def read_query(path: str | Path) -> pd.DataFrame:
    """A query table (one predicted block per row: condition, dose, cell type, covariates)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"query '{path}' has the suffix '{path.suffix}'; give a {', '.join(TABLE_SUFFIXES)} "
            "table with one row per condition"
        )
    if not path.is_file():
        raise DataError(f"query file '{path}' does not exist")
    if suffix == ".parquet":
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"'{path}' is not a parquet file ({str(exc).splitlines()[0]}); write it with "
                "`DataFrame.to_parquet(path)`"
            ) from None
    return _read_text(path, suffix)
