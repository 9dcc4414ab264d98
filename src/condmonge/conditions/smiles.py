"""Structure-based perturbation embeddings computed from SMILES with RDKit.

A drug is described by its chemical structure, so the model can predict drugs it never saw in
training (those with a SMILES string). Two feature sets are available:

- ``"morgan_counts"``: Morgan (ECFP-like) **count** fingerprints, ``n_bits`` columns
  ``morgan_0 ...``, non-negative integer counts;
- ``"descriptors"``: the standard RDKit 2D descriptor set (``rdkit.Chem.Descriptors.descList``),
  with ``Ipc`` replaced by ``log1p(Ipc)`` (it reaches 1e15 and would overflow float32);
- ``"both"``: the two side by side.

Features are computed per molecule and cached on disk (one ``.npy`` array plus one ``.json``
sidecar per molecule and feature block, no pickle) under a key that hashes the canonical SMILES,
the feature block, its parameters and the RDKit version. The cache lives in ``cache_dir``,
by default ``$CONDMONGE_CACHE/smiles`` or ``~/.cache/condmonge/smiles``.

Controls (vehicle, e.g. DMSO) carry no perturbation, so the model never looks them up: the
control label needs no row in the SMILES table (a row there is harmless and ignored).

Everything fitted on the table (the medians that fill missing descriptors, which columns are
constant, z-scoring and PCA in :func:`reduce_embedding`) uses the rows of the *training* drugs
only (``fit_names``), so an unseen drug's structure never changes the seen drugs' features.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import rdkit
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator
from rdkit.rdBase import BlockLogs

from condmonge.data.pca import principal_axes
from condmonge.errors import ConfigError, DataError, suggest
from condmonge.files import replace_atomically

__all__ = [
    "SmilesSpec",
    "default_cache_dir",
    "parse_smiles_spec",
    "read_smiles_table",
    "reduce_embedding",
    "smiles_embedding",
    "smiles_features",
]

Kind = Literal["morgan_counts", "descriptors", "both"]
_KINDS = ("morgan_counts", "descriptors", "both")
_CACHE_FORMAT = 1
_SMILES_COLUMNS = ("smiles", "smile", "canonical_smiles", "isomeric_smiles")
_NAME_COLUMNS = ("drug", "name", "drug_name", "compound", "perturbation", "condition")


def default_cache_dir() -> Path:
    """``$CONDMONGE_CACHE/smiles`` when the variable is set, else ``~/.cache/condmonge/smiles``."""
    root = os.environ.get("CONDMONGE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "condmonge"
    return base / "smiles"


def _as_series(smiles: Mapping[str, str] | pd.Series) -> pd.Series:
    if isinstance(smiles, pd.Series):
        series = smiles.copy()
    elif isinstance(smiles, Mapping):
        series = pd.Series(dict(smiles), dtype=object)
    else:
        raise DataError(
            "SMILES must be a pandas Series or a mapping {drug name: SMILES}, got "
            f"{type(smiles).__name__}"
        )
    series.index = series.index.astype(str)
    if series.index.has_duplicates:
        dup = series.index[series.index.duplicated()][0]
        raise DataError(f"drug '{dup}' is listed twice in the SMILES table; keep one row per drug")
    return series


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip()


def _missing_error(missing: Sequence[str], total: int, where: str) -> DataError:
    shown = ", ".join(f"'{m}'" for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return DataError(
        f"{len(missing)} of {total} drugs have no SMILES {where}: {shown}{more}; add a SMILES for "
        "each (controls need none: leave the control label out of the drugs to embed)"
    )


def _canonical(series: pd.Series) -> dict[str, str]:
    """Parse every SMILES; return ``{drug: canonical SMILES}`` or raise naming the bad ones."""
    missing = [name for name, s in series.items() if _is_missing(s)]
    if missing:
        raise _missing_error(missing, len(series), "in the table")
    out = {}
    with BlockLogs():
        for name, smi in series.items():
            mol = Chem.MolFromSmiles(str(smi).strip())
            if mol is None or mol.GetNumAtoms() == 0:
                raise DataError(
                    f"drug '{name}' has an invalid SMILES '{smi}' (RDKit cannot parse it); fix or "
                    "remove that row"
                )
            out[name] = Chem.MolToSmiles(mol)
    return out


def _compute_block(
    smiles: str, block: str, radius: int, n_bits: int
) -> tuple[np.ndarray, list[str]]:
    """Features of one canonical SMILES: values (float64) and column names."""
    with BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        if block == "morgan_counts":
            generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
            values = generator.GetCountFingerprintAsNumPy(mol).astype(np.float64)
            return values, [f"morgan_{i}" for i in range(n_bits)]
        found = Descriptors.CalcMolDescriptors(mol, missingVal=np.nan)
    names, values = [], []
    for name, value in found.items():
        value = float(value) if value is not None else np.nan
        if name == "Ipc":  # up to ~1e15: log-scale so it survives float32 and z-scoring
            name, value = "log1p_Ipc", float(np.log1p(value)) if value >= 0 else np.nan
        names.append(name)
        values.append(value)
    return np.asarray(values, np.float64), names


def _cache_key(smiles: str, block: str, radius: int, n_bits: int, version: str) -> str:
    params = {"radius": radius, "n_bits": n_bits} if block == "morgan_counts" else {}
    payload = {
        "format": _CACHE_FORMAT,
        "smiles": smiles,
        "block": block,
        "params": params,
        "rdkit": version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cached_block(
    smiles: str, block: str, radius: int, n_bits: int, cache: Path | None
) -> tuple[np.ndarray, list[str]]:
    if cache is None:
        return _compute_block(smiles, block, radius, n_bits)
    key = _cache_key(smiles, block, radius, n_bits, rdkit.__version__)
    array_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text())
        values = np.load(array_path, allow_pickle=False)
        if meta.get("smiles") == smiles and len(meta["columns"]) == values.shape[0]:
            return values, list(meta["columns"])
    except (OSError, ValueError, KeyError):
        pass  # absent or damaged: recompute and overwrite
    values, columns = _compute_block(smiles, block, radius, n_bits)
    meta = {"smiles": smiles, "block": block, "rdkit": rdkit.__version__, "columns": columns}
    try:
        replace_atomically(
            array_path, lambda tmp: np.save(tmp, values, allow_pickle=False), suffix=".npy"
        )
        # Written last: a hit needs both files.
        replace_atomically(meta_path, lambda tmp: tmp.write_text(json.dumps(meta)))
    except OSError as exc:
        warnings.warn(f"cannot write the SMILES feature cache in {cache}: {exc}", stacklevel=3)
    return values, columns


def _check_fit_names(fit_names: Iterable[str] | None, index: pd.Index) -> list[str]:
    if fit_names is None:
        return list(index)
    names = sorted({str(n) for n in fit_names})
    if not names:
        raise DataError("fit_names is empty; give the training drugs")
    known = set(index)
    missing = [n for n in names if n not in known]
    if missing:
        err = _missing_error(missing, len(names), "among the training drugs")
        raise DataError(f"{err}{suggest(missing[0], index)}")
    return names


def _clean_descriptors(table: pd.DataFrame, fit_names: list[str], rows: str) -> pd.DataFrame:
    values = table.to_numpy(np.float64)
    fit = table.index.get_indexer(fit_names)
    bad = ~np.isfinite(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN medians
        medians = np.nanmedian(np.where(bad, np.nan, values)[fit], axis=0)
    if bad.any():
        n_drugs = int(bad.any(axis=1).sum())
        columns = [str(c) for c in table.columns[bad.any(axis=0)]]
        warnings.warn(
            f"{int(bad.sum())} RDKit descriptor values of {n_drugs} drugs are NaN or infinite "
            f"(columns {', '.join(columns[:5])}{' ...' if len(columns) > 5 else ''}); replaced by "
            f"the column medians over {rows}",
            stacklevel=3,
        )
        values = np.where(bad, medians, values)
    fit_values = values[fit]
    keep = np.isfinite(medians) & (np.ptp(fit_values, axis=0) > 0)
    if not keep.any():  # e.g. one training drug: every descriptor is constant over it
        raise DataError(
            f"every RDKit descriptor is constant over {rows} ({len(fit)} drug(s): "
            f"{', '.join(map(str, fit_names[:3]))}), so descriptors cannot tell drugs apart; "
            "train on at least 2 drugs with different structures, or use kind=morgan_counts"
        )
    return pd.DataFrame(values[:, keep], index=table.index, columns=table.columns[keep])


def smiles_features(
    smiles: Mapping[str, str] | pd.Series,
    kind: Kind = "descriptors",
    radius: int = 2,
    n_bits: int = 1024,
    cache_dir: str | os.PathLike | Literal[False] | None = None,
    fit_names: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Structure features of each drug, computed with RDKit and cached on disk.

    Args:
      smiles: ``{drug: SMILES}`` or a Series indexed by drug name (see :func:`read_smiles_table`).
      kind: ``"morgan_counts"`` (``n_bits`` non-negative integer counts of Morgan substructures of
        radius ``radius``), ``"descriptors"`` (RDKit 2D descriptors) or ``"both"``.
      radius, n_bits: Morgan fingerprint parameters.
      cache_dir: where per-molecule features are cached; ``None`` gives
        :func:`default_cache_dir`, ``False`` disables the cache.
      fit_names: the training drugs. Descriptor values that are NaN or infinite (RDKit cannot
        compute a few charges / BCUT descriptors for some molecules) are replaced by the column
        median over these rows (with a warning), and descriptor columns constant over these rows
        are dropped. ``None`` uses every row.

    Returns:
      A float32 table, index = drug names (in input order), one column per feature.

    Raises:
      DataError: a drug without SMILES (all such drugs are counted and named) or with an invalid
        one (naming the drug and the SMILES), or a training drug missing from ``smiles``.
    """
    if kind not in _KINDS:
        raise ConfigError(f"kind must be one of {', '.join(_KINDS)}, got '{kind}'")
    if radius < 0 or n_bits < 1:
        raise ConfigError(f"radius must be >= 0 and n_bits >= 1, got {radius} and {n_bits}")
    series = _as_series(smiles)
    if series.empty:
        raise DataError("the SMILES table is empty")
    fit = _check_fit_names(fit_names, series.index)
    canonical = _canonical(series)
    cache = None if cache_dir is False else Path(cache_dir or default_cache_dir()).expanduser()
    blocks = ["morgan_counts", "descriptors"] if kind == "both" else [kind]
    parts = []
    for block in blocks:
        rows, columns = [], None
        for name in series.index:
            values, cols = _cached_block(canonical[name], block, radius, n_bits, cache)
            if columns is None:
                columns = cols
            elif cols != columns:  # pragma: no cover - one RDKit version per cache key
                raise DataError(f"RDKit returned different {block} columns for '{name}'")
            rows.append(values)
        table = pd.DataFrame(np.stack(rows), index=series.index, columns=columns)
        if block == "descriptors":
            rows = "all drugs" if fit_names is None else "the training drugs (fit_names)"
            table = _clean_descriptors(table, fit, rows)
        parts.append(table)
    out = pd.concat(parts, axis=1).astype(np.float32)
    out.index.name = series.index.name or "drug"
    return out


def _smiles_columns(
    frame: pd.DataFrame, path: object, name_column: str | None, smiles_column: str | None
) -> tuple[str, str]:
    """The ``(name, SMILES)`` columns of a SMILES table: given, or found by name."""
    lower = {str(c).lower(): c for c in frame.columns}

    def pick(given: str | None, candidates: Sequence[str], what: str) -> str | None:
        if given is not None:
            if given not in frame.columns:
                raise DataError(
                    f"SMILES table '{path}' has no {what} column '{given}'"
                    f"{suggest(given, map(str, frame.columns))}; columns: {list(frame.columns)}"
                )
            return given
        return next((lower[c] for c in candidates if c in lower), None)

    smiles_col = pick(smiles_column, _SMILES_COLUMNS, "SMILES")
    if smiles_col is None:
        raise DataError(
            f"SMILES table '{path}' has no column named like 'smiles' (columns: "
            f"{list(frame.columns)}); pass smiles_column="
        )
    name_col = pick(name_column, _NAME_COLUMNS, "name")
    if name_col is None:
        text = [
            c
            for c in frame.columns
            if c != smiles_col and not pd.api.types.is_numeric_dtype(frame[c])
        ]
        if not text:
            raise DataError(
                f"SMILES table '{path}' has no column of drug names (columns: "
                f"{list(frame.columns)}); pass name_column="
            )
        name_col = text[0]
    return name_col, smiles_col


def read_smiles_table(
    path: str | os.PathLike, name_column: str | None = None, smiles_column: str | None = None
) -> pd.Series:
    """Read a CSV of drug names and SMILES into a Series (index = drug name, values = SMILES).

    Columns are found by name when not given: the SMILES column is named like ``smiles`` /
    ``smile`` / ``SMILES`` (case-insensitive), the names come from a column ``drug``, ``name``,
    ``compound``, ``perturbation`` or ``condition``, else from the first other text column.
    Rows repeating a drug with the same SMILES are merged; conflicting repeats raise.

    Args:
      path: the CSV file.
      name_column: the column of drug names (``None``: found by name).
      smiles_column: the column of SMILES (``None``: found by name).
    """
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"SMILES table '{path}' does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"SMILES table '{path}' is not a readable CSV: {exc}") from None
    name_col, smiles_col = _smiles_columns(frame, path, name_column, smiles_column)
    names = frame[name_col]
    if names.isna().any():
        raise DataError(f"SMILES table '{path}' has rows without a drug name in '{name_col}'")
    series = pd.Series(
        [None if _is_missing(s) else str(s).strip() for s in frame[smiles_col]],
        index=pd.Index(names.astype(str).str.strip(), name="drug"),
        name="smiles",
        dtype=object,
    )
    for name, group in series.groupby(level=0, sort=False):
        if group.nunique(dropna=True) > 1:
            raise DataError(
                f"SMILES table '{path}' gives drug '{name}' {group.nunique()} different SMILES; "
                "keep one row per drug"
            )
    # Identical repeats (e.g. the vehicle listed twice) are merged, keeping a non-missing SMILES.
    return series.groupby(level=0, sort=False).first().rename("smiles").astype(object)


def reduce_embedding(
    table: pd.DataFrame, n_components: int, fit_names: Iterable[str] | None = None
) -> pd.DataFrame:
    """Project a feature table onto its first principal components, fitted on training rows only.

    The columns are z-scored with the mean and standard deviation of the ``fit_names`` rows
    (columns constant there are only centred), the principal axes are those of these rows, and
    every row (unseen drugs included) is projected. Signs are fixed so that the largest loading
    of each axis is positive, which makes the result deterministic.

    Returns:
      float32 table, same index, columns ``pc_1 ... pc_k``.

    Args:
      table: ``[drugs, features]`` numeric table (index = names).
      n_components: number of axes ``k``.
      fit_names: the training rows (``None``: all rows).
    """
    if not isinstance(table, pd.DataFrame) or table.shape[1] == 0:
        raise DataError("reduce_embedding needs a non-empty DataFrame (index = names)")
    fit = _check_fit_names(fit_names, table.index)
    values = table.to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise DataError("the table to reduce contains NaN or inf; fill or drop those rows first")
    train = values[table.index.get_indexer(fit)]
    limit = min(train.shape)
    if not 1 <= n_components <= limit:
        raise ConfigError(
            f"n_components must be in [1, {limit}] ({len(fit)} training rows, {table.shape[1]} "
            f"columns), got {n_components}"
        )
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)
    solver = "svd" if len(train) < train.shape[1] else "auto"  # axes beyond the rank: the SVD's
    axes = principal_axes((train - mean) / scale, n_components, solver=solver).components
    projected = ((values - mean) / scale) @ axes
    return pd.DataFrame(
        projected.astype(np.float32),
        index=table.index,
        columns=[f"pc_{i + 1}" for i in range(n_components)],
    )


def smiles_embedding(  # noqa: PLR0913  keyword options of a public, documented entry point
    source: str | os.PathLike | Mapping[str, str] | pd.Series,
    kind: Kind = "descriptors",
    n_components: int | None = None,
    fit_names: Iterable[str] | None = None,
    *,
    radius: int = 2,
    n_bits: int = 1024,
    cache_dir: str | os.PathLike | Literal[False] | None = None,
    name_column: str | None = None,
    smiles_column: str | None = None,
    control: str | None = None,
) -> pd.DataFrame:
    """One call from a SMILES table to an embedding table for ``ConditionalMonge.fit``.

    Reads ``source`` (a CSV path, see :func:`read_smiles_table`, or a Series / mapping), computes
    :func:`smiles_features` and, when ``n_components`` is given, reduces them with
    :func:`reduce_embedding`. Everything fitted uses the ``fit_names`` rows (the training drugs;
    ``None``: every row). A row of the ``control`` label (e.g. the vehicle, DMSO) is dropped:
    controls are no perturbation and need no row. Pass the result as
    ``embeddings={condition_key: table}``; the model z-scores it again with the training drugs'
    statistics.

    Args:
      source: a CSV path, a Series or a mapping ``{drug: SMILES}``.
      kind, radius, n_bits, cache_dir: as :func:`smiles_features`.
      n_components: reduce to this many principal components (``None``: the features).
      fit_names: the training drugs.
      name_column, smiles_column: as :func:`read_smiles_table`.
      control: the control label, whose row is dropped.

    Returns:
      float32 ``[drugs, features or n_components]`` table.
    """
    if isinstance(source, str | os.PathLike):
        series = read_smiles_table(source, name_column, smiles_column)
    else:
        series = _as_series(source)
    if control is not None:  # the control is no perturbation: its row (if any) is not needed
        series = series.drop(index=str(control), errors="ignore")
    fit = None if fit_names is None else sorted({str(n) for n in fit_names} - {str(control)})
    features = smiles_features(
        series, kind, radius=radius, n_bits=n_bits, cache_dir=cache_dir, fit_names=fit
    )
    if n_components is None:
        return features
    return reduce_embedding(features, n_components, fit)


_SPEC = re.compile(r"^smiles((?:,[a-z_]+=[^,:=]+)*):(.+)$")
_SPEC_OPTIONS = {"kind": str, "pca": int, "radius": int, "bits": int}


@dataclass(frozen=True)
class SmilesSpec:
    """A parsed ``smiles[,OPTION=VALUE...]:PATH`` embedding (see :func:`parse_smiles_spec`)."""

    path: str
    kind: Kind = "descriptors"
    n_components: int | None = None
    radius: int = 2
    n_bits: int = 1024

    def load(
        self, fit_names: Iterable[str] | None = None, control: str | None = None
    ) -> pd.DataFrame:
        """:func:`smiles_embedding` of the file with these options."""
        return smiles_embedding(
            self.path,
            self.kind,
            self.n_components,
            fit_names,
            radius=self.radius,
            n_bits=self.n_bits,
            control=control,
        )


def parse_smiles_spec(value: str) -> SmilesSpec | None:
    """Parse a CLI embedding value ``smiles:PATH`` or ``smiles,kind=both,pca=32:PATH``.

    Options: ``kind`` (``descriptors``, ``morgan_counts``, ``both``), ``pca`` (number of
    principal components, fitted on the training drugs), ``radius`` and ``bits`` (Morgan).
    Returns ``None`` when ``value`` does not start with ``smiles`` followed by ``:`` or ``,``
    (an ordinary embedding table path).

    Args:
      value: the value after ``KEY=`` on the command line.
    """
    if not re.match(r"^smiles[,:]", value):
        return None
    match = _SPEC.match(value)
    if match is None:
        raise ConfigError(
            f"embedding '{value}' must be smiles:PATH or smiles,OPTION=VALUE,...:PATH with "
            f"options {', '.join(_SPEC_OPTIONS)} (e.g. smiles,kind=both,pca=32:drugs.csv)"
        )
    options: dict[str, object] = {}
    for item in filter(None, match.group(1).split(",")):
        key, _, raw = item.partition("=")
        if key not in _SPEC_OPTIONS:
            raise ConfigError(
                f"unknown SMILES embedding option '{key}'{suggest(key, _SPEC_OPTIONS)}; options: "
                f"{', '.join(_SPEC_OPTIONS)}"
            )
        try:
            options[key] = _SPEC_OPTIONS[key](raw)
        except ValueError:
            raise ConfigError(f"SMILES embedding option {key}={raw} must be a number") from None
    kind = options.get("kind", "descriptors")
    if kind not in _KINDS:
        raise ConfigError(f"kind must be one of {', '.join(_KINDS)}, got '{kind}'")
    return SmilesSpec(
        match.group(2),
        kind,  # type: ignore[arg-type]
        options.get("pca"),  # type: ignore[arg-type]
        options.get("radius", 2),  # type: ignore[arg-type]
        options.get("bits", 1024),  # type: ignore[arg-type]
    )
