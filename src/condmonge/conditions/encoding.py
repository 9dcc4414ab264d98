"""Turn :class:`Condition` objects into the fixed-shape arrays the network reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from condmonge.conditions.encoders import (
    FeatureEncoder,
    OneHotEncoder,
    TableEncoder,
    encoder_from_state,
)
from condmonge.conditions.spec import Condition, log_dose, transform_covariate
from condmonge.data.spec import ConditionSpec
from condmonge.errors import DataError, UnknownConditionError

__all__ = ["ConditionEncoder", "EncodedConditions", "Embeddings", "build_encoder"]

#: Tables (index = name, numeric columns) keyed by the obs column they describe, or callables
#: ``table(fit_names) -> DataFrame`` that see the training names only.
Embeddings = Mapping[str, pd.DataFrame | Callable[[Sequence[str]], pd.DataFrame]]


class EncodedConditions(NamedTuple):
    r"""A batch of ``k`` conditions, each a padded set of at most ``m`` perturbations.

    Attributes:
      perturbation: ``[k, m, p]`` perturbation features (zero rows where masked).
      log_dose: ``[k, m]`` :math:`\log_{10}(1 + \text{dose})` per perturbation.
      mask: ``[k, m]`` 1 for a real perturbation, 0 for padding (the control has none).
      context: ``[k, q]`` cell-type features, then the transformed, z-scored covariates
        (``q`` may be 0).
    """

    perturbation: np.ndarray
    log_dose: np.ndarray
    mask: np.ndarray
    context: np.ndarray

    def take(self, index: np.ndarray | Sequence[int]) -> EncodedConditions:
        """The conditions ``index [j]`` (with repeats, e.g. for padding), leading size ``j``."""
        index = np.asarray(index, np.int64)
        return EncodedConditions(*(np.asarray(a)[index] for a in self))


class ConditionEncoder:
    """Encodes conditions with one encoder per modality.

    Args:
      perturbation: encoder of perturbation names (one-hot or table).
      cell_type: encoder of cell types, or ``None`` when the data have one cell type.
      n_covariates: number of numeric covariates appended to the context.
      max_perturbations: set size ``m`` used for padding (larger sets are padded on demand).
      covariate_transforms: per covariate ``linear`` or ``log1p`` (default all linear).
      covariate_neutral: per covariate the value where the map is the identity, or ``None``.

    Covariates enter the context transformed and z-scored with the statistics of the training
    conditions (:meth:`fit_covariates`), so that unseen values (e.g. a new time point) land on
    the same axis and are interpolated.
    """

    def __init__(
        self,
        perturbation: FeatureEncoder,
        cell_type: FeatureEncoder | None = None,
        n_covariates: int = 0,
        max_perturbations: int = 2,
        covariate_transforms: Sequence[str] = (),
        covariate_neutral: Sequence[float | None] = (),
    ):
        self.perturbation = perturbation
        self.cell_type = cell_type
        self.n_covariates = n_covariates
        self.max_perturbations = max_perturbations
        self.covariate_transforms = tuple(covariate_transforms) or ("linear",) * n_covariates
        self.covariate_neutral = tuple(covariate_neutral) or (None,) * n_covariates
        self.covariate_mean = np.zeros(n_covariates, np.float64)
        self.covariate_scale = np.ones(n_covariates, np.float64)

    def _transformed(self, values: np.ndarray) -> np.ndarray:
        """``[k, q]`` raw covariates -> transformed ``[k, q]`` (float64)."""
        rows = np.asarray(values, np.float64).reshape(-1, self.n_covariates)
        pairs = zip(self.covariate_transforms, rows.T, strict=True)
        return np.stack([[transform_covariate(v, t) for v in col] for t, col in pairs], axis=1)

    def fit_covariates(self, conditions: Sequence[Condition]) -> ConditionEncoder:
        """Fit the covariate z-scoring on the training ``conditions``; returns ``self``."""
        if self.n_covariates and conditions:
            u = self._transformed(np.asarray([c.covariates for c in conditions]))
            sd = u.std(axis=0)
            self.covariate_mean = u.mean(axis=0)
            self.covariate_scale = np.where(sd > 1e-12, sd, 1.0)
        return self

    def covariate_features(self, values: np.ndarray) -> np.ndarray:
        """``[k, q]`` raw covariates -> the ``[k, q]`` context columns (float32)."""
        u = (self._transformed(values) - self.covariate_mean) / self.covariate_scale
        return u.astype(np.float32)

    def neutral_features(self) -> tuple[float | None, ...]:
        """Per covariate its neutral value as a context value (``None`` where it has none)."""
        out: list[float | None] = []
        for j, (value, transform) in enumerate(
            zip(self.covariate_neutral, self.covariate_transforms, strict=True)
        ):
            if value is None:
                out.append(None)
                continue
            u = transform_covariate(value, transform)
            out.append(float((u - self.covariate_mean[j]) / self.covariate_scale[j]))
        return tuple(out)

    def encode(self, conditions: Sequence[Condition]) -> EncodedConditions:
        """Encode ``k`` conditions into :class:`EncodedConditions` of leading size ``k``."""
        k = len(conditions)
        m = max([self.max_perturbations] + [len(c.perturbations) for c in conditions])
        pert = np.zeros((k, m, self.perturbation.dim), np.float32)
        dose = np.zeros((k, m), np.float32)
        mask = np.zeros((k, m), np.float32)
        names = sorted({p for c in conditions for p in c.perturbations})
        features = dict(zip(names, self.perturbation.encode(names), strict=True)) if names else {}
        for i, cond in enumerate(conditions):
            for j, (name, value) in enumerate(zip(cond.perturbations, cond.doses, strict=True)):
                pert[i, j] = features[name]
                dose[i, j] = log_dose(value)
                mask[i, j] = 1.0
        context = [np.zeros((k, 0), np.float32)]
        if self.cell_type is not None:
            if any(c.cell_type is None for c in conditions):
                raise UnknownConditionError(
                    "the model was trained with a cell type per condition; give one (--cell-type "
                    "or a cell-type column in the query)"
                )
            context.append(self.cell_type.encode([str(c.cell_type) for c in conditions]))
        if self.n_covariates:
            cov = np.asarray([c.covariates for c in conditions], np.float32).reshape(k, -1)
            if cov.shape[1] != self.n_covariates:
                raise UnknownConditionError(
                    f"conditions carry {cov.shape[1]} covariates, the model expects "
                    f"{self.n_covariates}"
                )
            context.append(self.covariate_features(cov))
        return EncodedConditions(pert, dose, mask, np.concatenate(context, axis=1))

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON metadata and arrays (prefixed by modality) that rebuild the encoder."""
        meta: dict[str, Any] = {
            "n_covariates": self.n_covariates,
            "max_perturbations": self.max_perturbations,
            "covariate_transforms": list(self.covariate_transforms),
            "covariate_neutral": list(self.covariate_neutral),
            "covariate_mean": self.covariate_mean.tolist(),
            "covariate_scale": self.covariate_scale.tolist(),
        }
        arrays: dict[str, np.ndarray] = {}
        for modality, encoder in (
            ("perturbation", self.perturbation),
            ("cell_type", self.cell_type),
        ):
            if encoder is None:
                meta[modality] = None
                continue
            meta[modality], enc_arrays = encoder.state()
            arrays.update({f"{modality}/{name}": value for name, value in enc_arrays.items()})
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ConditionEncoder:
        """Rebuild from :meth:`state`."""

        def build(modality: str) -> FeatureEncoder | None:
            if meta[modality] is None:
                return None
            prefix = f"{modality}/"
            own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            return encoder_from_state(meta[modality], own)

        encoder = cls(
            build("perturbation"),
            build("cell_type"),
            meta["n_covariates"],
            meta["max_perturbations"],
            meta.get("covariate_transforms", ()),
            meta.get("covariate_neutral", ()),
        )
        if "covariate_mean" in meta:  # checkpoints written before covariate scaling: raw values
            encoder.covariate_mean = np.asarray(meta["covariate_mean"], np.float64)
            encoder.covariate_scale = np.asarray(meta["covariate_scale"], np.float64)
        return encoder


def build_encoder(
    conditions: Sequence[Condition],
    cell_types: Sequence[str],
    spec: ConditionSpec,
    embeddings: Embeddings | None = None,
    covariate_transforms: Mapping[str, str] | None = None,
    covariate_neutral: Mapping[str, float] | None = None,
) -> ConditionEncoder:
    """The encoder of a run, fitted on its training ``conditions`` only.

    Args:
      conditions: the ``K`` training conditions (their perturbations are the vocabulary).
      cell_types: the cell types to encode (every one with cells in the training data).
      spec: the data's meaning (which modalities exist; the keys of ``embeddings``).
      embeddings: tables or table factories keyed by ``spec.condition_key`` (or
        ``"perturbation"``) and ``spec.cell_type_key`` (or ``"cell_type"``); a modality without
        one is one-hot encoded, so only seen names can be predicted.
      covariate_transforms, covariate_neutral: per covariate key its transform (default
        ``linear``) and neutral value (``data.covariate_transforms`` / ``covariate_neutral``).

    Returns:
      A :class:`ConditionEncoder` whose set size is the largest training combination.
    """
    embeddings = embeddings or {}
    valid = {spec.condition_key, spec.cell_type_key, "perturbation", "cell_type"}
    unknown = set(embeddings) - valid
    if unknown:
        raise DataError(
            f"embeddings given for {sorted(unknown)}; key them by the condition column "
            f"'{spec.condition_key}'"
            + (f" or the cell-type column '{spec.cell_type_key}'" if spec.cell_type_key else "")
        )
    perts = sorted({p for c in conditions for p in c.perturbations})
    pert_encoder = _modality_encoder(
        embeddings, (spec.condition_key, "perturbation"), perts, "perturbation"
    )
    cell_encoder = None
    if spec.cell_type_key is not None:
        types = sorted({str(t) for t in cell_types})
        cell_encoder = _modality_encoder(
            embeddings, (spec.cell_type_key, "cell_type"), types, "cell type"
        )
    max_set = max(len(c.perturbations) for c in conditions)
    transforms, neutral = covariate_transforms or {}, covariate_neutral or {}
    return ConditionEncoder(
        pert_encoder,
        cell_encoder,
        len(spec.covariate_keys),
        max_set,
        [transforms.get(k, "linear") for k in spec.covariate_keys],
        [neutral.get(k) for k in spec.covariate_keys],
    ).fit_covariates(conditions)


def _modality_encoder(
    embeddings: Embeddings, keys: Sequence[str | None], names: list[str], what: str
) -> FeatureEncoder:
    """A table encoder from the first of ``keys`` in ``embeddings``, else one-hot."""
    table = next((embeddings[k] for k in keys if k is not None and k in embeddings), None)
    table = table(names) if callable(table) else table  # fitted on training names only
    return TableEncoder(table, what).fit(names) if table is not None else OneHotEncoder(names, what)
