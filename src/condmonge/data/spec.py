"""What the data mean: the columns of an AnnData (:class:`ConditionSpec`) and a condition.

A :class:`Condition` is one treatment: a set of perturbations with doses, in a cell type, with
covariates, as parsed from one cell's annotations.

A :class:`ConditionSpec` names the ``obs`` columns of conditions, doses, cell types and
covariates, the control label, the separator of combinations and the representation
(``X`` or an ``obsm`` key). It is frozen, checked once against the data
(:meth:`ConditionSpec.validate`) and then passed whole: to the splits, the baselines, the
encoders, the trainer, the CLI and the model, and saved in every checkpoint. It plays the part
of scvi-tools' ``setup_anndata`` registry, without writing anything into the AnnData.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.errors import ConfigError, DataError, UnknownConditionError, suggest

__all__ = ["Condition", "ConditionSpec", "parse_doses", "parse_perturbations"]


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
                raise DataError(
                    f"adata.obs['{key}'] is a covariate and must be numeric (e.g. 24, not "
                    f"'24h'); convert it with pd.to_numeric or drop '{key}' from covariate_keys"
                )
        if self.cell_type_key is not None and obs[self.cell_type_key].isna().any():
            missing = obs[self.cell_type_key].isna().to_numpy()
            raise DataError(  # else they would become a cell type called 'nan'
                f"adata.obs['{self.cell_type_key}'] has {int(missing.sum())} missing values "
                f"(first at row {int(np.flatnonzero(missing)[0])}); give every cell its cell "
                "type (controls too) or drop those cells"
            )

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


@dataclass(frozen=True, order=True)
class Condition:
    """One treatment condition.

    Attributes:
      perturbations: perturbation names, sorted so that ``A+B`` and ``B+A`` are one condition.
        Empty for the control.
      doses: one dose per perturbation (same order); ``1.0`` when the data carry no dose.
      cell_type: the cell type (or line) whose control cells are the source, or ``None``.
      covariates: optional numeric covariates, in the order of ``ConditionSpec.covariate_keys``.
    """

    perturbations: tuple[str, ...]
    doses: tuple[float, ...]
    cell_type: str | None = None
    covariates: tuple[float, ...] = ()

    def label(self, sep: str = "+") -> str:
        """The perturbation part as written in ``obs``, e.g. ``"A+B"``."""
        return sep.join(self.perturbations)

    def dose_label(self, sep: str = "+") -> str:
        """The doses as written in ``obs``, e.g. ``"1+1"`` (integers without decimals)."""
        return sep.join(_format_number(d) for d in self.doses)

    def key(self, sep: str = "+") -> str:
        """A readable unique name, e.g. ``"A+B|dose=1+1|cell_type=k562"``."""
        parts = [self.label(sep), f"dose={self.dose_label(sep)}"]
        if self.cell_type is not None:
            parts.append(f"cell_type={self.cell_type}")
        if self.covariates:
            parts.append("covariates=" + ",".join(_format_number(c) for c in self.covariates))
        return "|".join(parts)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_perturbations(label: str, sep: str = "+") -> tuple[str, ...]:
    """Split ``"A+B"`` into ``("A", "B")``; names are stripped, empty names are errors."""
    names = tuple(part.strip() for part in str(label).split(sep))
    if any(not name for name in names):
        raise UnknownConditionError(
            f"condition label '{label}' has an empty perturbation name; write combinations as "
            f"'A{sep}B'"
        )
    return names


def parse_doses(value: object, n_perturbations: int, sep: str = "+") -> tuple[float, ...]:
    """Parse a dose cell (``10``, ``"10"``, ``"1+1"``) into one non-negative dose per perturbation.

    A single dose applies to every perturbation of a combination.
    """
    parts = str(value).split(sep) if isinstance(value, str) else [value]
    doses = []
    for part in parts:
        try:
            dose = float(part)
        except (TypeError, ValueError):
            raise UnknownConditionError(
                f"dose '{value}' is not a number; doses must be numeric (combinations as '1{sep}1')"
            ) from None
        if not math.isfinite(dose) or dose < 0:
            raise UnknownConditionError(f"dose '{value}' must be a finite number >= 0")
        doses.append(dose)
    if len(doses) == 1:
        return tuple(doses) * n_perturbations
    if len(doses) != n_perturbations:
        raise UnknownConditionError(
            f"dose '{value}' gives {len(doses)} doses for {n_perturbations} perturbations; "
            f"give one dose, or one per perturbation joined by '{sep}'"
        )
    return tuple(doses)
