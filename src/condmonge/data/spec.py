"""What the columns of an AnnData mean: the one description every layer reads.

A :class:`ConditionSpec` names the ``obs`` columns of conditions, doses, cell types and
covariates, the control label, the separator of combinations and the representation
(``X`` or an ``obsm`` key). It is frozen, checked once against the data
(:meth:`ConditionSpec.validate`) and then passed whole: to the splits, the baselines, the
encoders, the trainer, the CLI and the model, and saved in every checkpoint. It plays the part
of scvi-tools' ``setup_anndata`` registry, without writing anything into the AnnData.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.errors import ConfigError, DataError, suggest

__all__ = ["ConditionSpec"]


@dataclass(frozen=True)
class ConditionSpec:
    """The meaning of an AnnData's annotations (all obs column names, no data).

    Attributes:
      condition_key: obs column of condition labels (``"A"``, combinations ``"A+B"``).
      control: the label of control (untreated) cells in that column.
      dose_key: obs column of doses (``10`` or ``"1+1"`` for combinations), or ``None``.
      cell_type_key: obs column of cell types (or lines), or ``None``.
      covariate_keys: numeric obs columns appended to each condition.
      combination_sep: the separator of combination labels and doses.
      use_rep: an ``obsm`` key to read features from instead of ``X``, or ``None``.
    """

    condition_key: str = "condition"
    control: str = "control"
    dose_key: str | None = None
    cell_type_key: str | None = None
    covariate_keys: tuple[str, ...] = ()
    combination_sep: str = "+"
    use_rep: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "covariate_keys", tuple(self.covariate_keys))
        for name in ("condition_key", "control", "combination_sep"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        for name in ("dose_key", "cell_type_key", "use_rep"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty string or None, got {value!r}")
        keys = [k for k in self.obs_keys if k is not None]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"the obs keys {keys} name one column twice; give each its own")

    # ------------------------------------------------------------------ views
    @property
    def obs_keys(self) -> tuple[str | None, ...]:
        """Every obs column the spec reads: condition, dose, cell type, then covariates."""
        return (self.condition_key, self.dose_key, self.cell_type_key, *self.covariate_keys)

    def updated(self, **changes: Any) -> ConditionSpec:
        """A copy with some fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for checkpoints and ``uns`` records)."""
        out = asdict(self)
        out["covariate_keys"] = list(self.covariate_keys)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ConditionSpec:
        """Build from :meth:`to_dict` (or any mapping with a subset of the fields)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown condition spec key '{unknown[0]}'; valid keys: {', '.join(sorted(names))}"
            )
        return cls(**dict(values))

    # ------------------------------------------------------------------ validation
    def validate(self, adata: ad.AnnData, *, require_treated: bool = False) -> ConditionSpec:
        """Check that ``adata`` has what the spec names; return the spec.

        Raises :class:`~condmonge.errors.DataError` on: no cells, a missing obs column (with a
        "did you mean"), a non-numeric covariate, missing or empty condition labels, an absent
        control label, only control cells (with ``require_treated``), a missing ``obsm`` key.

        Args:
          adata: cells x features; only ``obs`` and ``obsm`` keys are read.
          require_treated: also require at least one treated (non-control) cell.
        """
        if not isinstance(adata, ad.AnnData):
            raise DataError(f"expected an AnnData, got {type(adata).__name__}")
        if adata.n_obs == 0:
            raise DataError("the AnnData has no cells")
        self._check_columns(adata.obs)
        labels = self._check_labels(adata.obs[self.condition_key])
        if require_treated and (labels == self.control).all():
            raise DataError(
                f"adata.obs['{self.condition_key}'] holds only control cells; nothing to learn"
            )
        if self.use_rep is not None and self.use_rep not in adata.obsm:
            raise DataError(
                f"adata.obsm has no '{self.use_rep}'{suggest(self.use_rep, adata.obsm.keys())}; "
                "compute it (e.g. scanpy.pp.pca) or set use_rep to None to use X"
            )
        return self

    def _check_columns(self, obs: pd.DataFrame) -> None:
        flags = {
            self.condition_key: "condition_key (--condition-key)",
            self.dose_key: "dose_key (--dose-key)",
            self.cell_type_key: "cell_type_key (--cell-type-key)",
        }
        flags.update({key: "covariate_keys" for key in self.covariate_keys})
        for key, flag in flags.items():
            if key is not None and key not in obs.columns:
                raise DataError(
                    f"adata.obs has no column '{key}'{suggest(key, obs.columns)}; set {flag} to "
                    f"one of: {', '.join(map(str, obs.columns[:12]))}"
                )
        for key in self.covariate_keys:
            if not pd.api.types.is_numeric_dtype(obs[key]):
                raise DataError(f"adata.obs['{key}'] is a covariate and must be numeric")

    def _check_labels(self, labels: pd.Series) -> pd.Series:
        where = f"adata.obs['{self.condition_key}']"
        if labels.isna().any():
            raise DataError(
                f"{where} has {int(labels.isna().sum())} missing values; label every cell "
                "(controls with the control label)"
            )
        labels = labels.astype(str)
        empty = np.flatnonzero(labels.str.strip().to_numpy() == "")
        if empty.size:
            raise DataError(
                f"{where} has {empty.size} empty labels (first at row {empty[0]}); label every "
                "cell (controls with the control label)"
            )
        if not (labels == self.control).any():
            raise DataError(
                f"control label '{self.control}' not found in {where}"
                f"{suggest(self.control, labels.unique())}; set control (--control) to the "
                "label of untreated cells"
            )
        return labels
