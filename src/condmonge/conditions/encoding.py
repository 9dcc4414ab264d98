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
from condmonge.conditions.spec import Condition, log_dose
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
      context: ``[k, q]`` cell-type features and covariates (``q`` may be 0).
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
    """

    def __init__(
        self,
        perturbation: FeatureEncoder,
        cell_type: FeatureEncoder | None = None,
        n_covariates: int = 0,
        max_perturbations: int = 2,
    ):
        self.perturbation = perturbation
        self.cell_type = cell_type
        self.n_covariates = n_covariates
        self.max_perturbations = max_perturbations

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
            context.append(cov)
        return EncodedConditions(pert, dose, mask, np.concatenate(context, axis=1))

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON metadata and arrays (prefixed by modality) that rebuild the encoder."""
        meta: dict[str, Any] = {
            "n_covariates": self.n_covariates,
            "max_perturbations": self.max_perturbations,
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

        return cls(
            build("perturbation"),
            build("cell_type"),
            meta["n_covariates"],
            meta["max_perturbations"],
        )


def build_encoder(
    conditions: Sequence[Condition],
    cell_types: Sequence[str],
    spec: ConditionSpec,
    embeddings: Embeddings | None = None,
) -> ConditionEncoder:
    """The encoder of a run, fitted on its training ``conditions`` only.

    Args:
      conditions: the ``K`` training conditions (their perturbations are the vocabulary).
      cell_types: the cell types to encode (every one with cells in the training data).
      spec: the data's meaning (which modalities exist; the keys of ``embeddings``).
      embeddings: tables or table factories keyed by ``spec.condition_key`` (or
        ``"perturbation"``) and ``spec.cell_type_key`` (or ``"cell_type"``); a modality without
        one is one-hot encoded, so only seen names can be predicted.

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
    return ConditionEncoder(pert_encoder, cell_encoder, len(spec.covariate_keys), max_set)


def _modality_encoder(
    embeddings: Embeddings, keys: Sequence[str | None], names: list[str], what: str
) -> FeatureEncoder:
    """A table encoder from the first of ``keys`` in ``embeddings``, else one-hot."""
    table = next((embeddings[k] for k in keys if k is not None and k in embeddings), None)
    table = table(names) if callable(table) else table  # fitted on training names only
    return TableEncoder(table, what).fit(names) if table is not None else OneHotEncoder(names, what)
