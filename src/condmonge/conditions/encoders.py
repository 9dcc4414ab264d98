"""Host-side encoders that turn names (perturbations, cell types) into feature vectors.

An encoder is fitted once on the training vocabulary and is then a pure lookup
``encode(names) -> [len(names), dim]``. Its state is plain JSON plus numpy arrays, so that it
round-trips through a checkpoint without pickle. The network learns on top of these features,
so a one-hot encoder gives one learned embedding per seen name, and a table encoder lets the
model predict names it never saw (those present in the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from condmonge.errors import DataError, UnknownConditionError, suggest

__all__ = ["FeatureEncoder", "OneHotEncoder", "TableEncoder", "encoder_from_state", "read_table"]


class FeatureEncoder(Protocol):
    """Maps names to fixed-size feature vectors."""

    kind: ClassVar[str]

    @property
    def dim(self) -> int:
        """Feature dimension."""
        ...

    @property
    def names(self) -> list[str]:
        """The names this encoder can encode."""
        ...

    def encode(self, names: Sequence[str]) -> np.ndarray:
        """Return features of shape ``[len(names), dim]``; unknown names raise."""
        ...

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able metadata and named arrays that rebuild the encoder."""
        ...


class OneHotEncoder:
    """One-hot over the training vocabulary: only seen names can be encoded."""

    kind: ClassVar[str] = "onehot"

    def __init__(self, vocabulary: Sequence[str], what: str = "perturbation"):
        self.vocabulary = sorted({str(v) for v in vocabulary})
        self.what = what
        self._index = {name: i for i, name in enumerate(self.vocabulary)}

    @property
    def dim(self) -> int:  # noqa: D102
        return max(len(self.vocabulary), 1)

    @property
    def names(self) -> list[str]:  # noqa: D102
        return list(self.vocabulary)

    def encode(self, names: Sequence[str]) -> np.ndarray:  # noqa: D102
        out = np.zeros((len(names), self.dim), np.float32)
        for row, name in enumerate(names):
            if name not in self._index:
                raise UnknownConditionError(
                    f"{self.what} '{name}' was not seen in training and the model encodes "
                    f"{self.what}s one-hot{suggest(name, self.vocabulary)}; to predict unseen "
                    f"{self.what}s, fit with an embedding table (embeddings={{...: table}} or "
                    "--embedding KEY=TABLE.csv)"
                )
            out[row, self._index[name]] = 1.0
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # noqa: D102
        return {"kind": self.kind, "what": self.what, "vocabulary": self.vocabulary}, {}


class TableEncoder:
    """Rows of a user table (index = name, numeric columns), z-scored with training statistics.

    ``fit(names)`` computes column means and standard deviations over the rows of the training
    names only, so that held-out names never influence the features.
    """

    kind: ClassVar[str] = "table"

    def __init__(self, table: pd.DataFrame, what: str = "perturbation"):
        self.table = _validate_table(table, what)
        self.what = what
        self.mean = np.zeros(self.table.shape[1], np.float32)
        self.scale = np.ones(self.table.shape[1], np.float32)
        self._index = {name: i for i, name in enumerate(self.table.index)}

    @property
    def dim(self) -> int:  # noqa: D102
        return self.table.shape[1]

    @property
    def names(self) -> list[str]:  # noqa: D102
        return [str(i) for i in self.table.index]

    def fit(self, names: Sequence[str]) -> TableEncoder:
        """Set the z-scoring statistics from the rows of ``names`` (the training vocabulary)."""
        rows = self._rows(sorted(set(names)))
        # Statistics in float64 of the float32 values: the mean of a constant column is then
        # exactly its value, so it encodes as 0 (float32 sums leave a residue that the
        # division by a tiny std would blow up to +-1).
        values = self.table.to_numpy(np.float32)[rows].astype(np.float64)
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        # Constant columns carry no information; leave them at zero instead of dividing by 0.
        constant = std <= 1e-8 * np.maximum(np.abs(mean), 1.0)
        self.mean = mean.astype(np.float32)
        self.scale = np.where(constant, 1.0, std).astype(np.float32)
        return self

    def _rows(self, names: Sequence[str]) -> list[int]:
        missing = [n for n in names if n not in self._index]
        if missing:
            shown = ", ".join(f"'{m}'" for m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise UnknownConditionError(
                f"{self.what} {shown}{more} missing from the embedding table"
                f"{suggest(missing[0], self._index)}; add a row for each (index = {self.what} "
                "name)"
            )
        return [self._index[n] for n in names]

    def encode(self, names: Sequence[str]) -> np.ndarray:  # noqa: D102
        values = self.table.to_numpy(np.float32)[self._rows(list(names))]
        return ((values - self.mean) / self.scale).astype(np.float32)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # noqa: D102
        meta = {
            "kind": self.kind,
            "what": self.what,
            "names": [str(i) for i in self.table.index],
            "columns": [str(c) for c in self.table.columns],
        }
        arrays = {"values": self.table.to_numpy(np.float32), "mean": self.mean, "scale": self.scale}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> TableEncoder:
        """Rebuild from :meth:`state`."""
        table = pd.DataFrame(arrays["values"], index=meta["names"], columns=meta["columns"])
        encoder = cls(table, meta["what"])
        encoder.mean, encoder.scale = arrays["mean"], arrays["scale"]
        return encoder


def _validate_table(table: pd.DataFrame, what: str) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"the {what} embedding must be a pandas DataFrame (index = {what} names)")
    table = table.copy()
    table.index = table.index.astype(str)
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()][0]
        raise DataError(f"the {what} embedding table lists '{dup}' twice; keep one row per name")
    non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise DataError(
            f"the {what} embedding table has non-numeric columns {non_numeric[:3]}; keep only "
            "numeric feature columns (the index holds the names)"
        )
    if table.shape[1] == 0:
        raise DataError(f"the {what} embedding table has no numeric columns")
    if not np.isfinite(table.to_numpy(np.float64)).all():
        raise DataError(f"the {what} embedding table contains NaN or inf; fill or drop those rows")
    return table


def read_table(path: str, what: str = "perturbation") -> pd.DataFrame:
    """Read an embedding CSV whose first column is the name index."""
    try:
        return _validate_table(pd.read_csv(path, index_col=0), what)
    except FileNotFoundError:
        raise DataError(f"embedding table '{path}' does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"embedding table '{path}' is not a readable CSV: {exc}") from None


def encoder_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureEncoder:
    """Rebuild any encoder from its saved state."""
    if meta["kind"] == OneHotEncoder.kind:
        return OneHotEncoder(meta["vocabulary"], meta["what"])
    if meta["kind"] == TableEncoder.kind:
        return TableEncoder.from_state(meta, arrays)
    raise UnknownConditionError(f"unknown encoder kind '{meta['kind']}' in checkpoint")
