"""``ConditionalMonge``: the user-facing model (AnnData in, AnnData out).

A thin facade: training is wired in :mod:`condmonge.train.fit`, queries are read by
:mod:`condmonge.conditions.query`, all conditions of a prediction go through one vectorised
apply (:mod:`condmonge.models.transport`) and are assembled by
:mod:`condmonge.data.predictions`, and a model is saved and loaded by
:mod:`condmonge.train.persistence`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from condmonge._version import __version__
from condmonge.conditions.encoding import Embeddings
from condmonge.conditions.query import Query, resolve_query
from condmonge.config import Config, config_from_dict
from condmonge.data.predictions import assemble_prediction, control_rows, query_features
from condmonge.data.spec import Condition, ConditionSpec
from condmonge.data.tables import as_anndata
from condmonge.errors import ConfigError, NotFittedError, UnknownConditionError
from condmonge.evaluate.evaluation import evaluate_prediction, truth_sets
from condmonge.models.transport import BatchedTransport
from condmonge.train.fit import fit_map
from condmonge.train.persistence import FromTrained, TrainedMap, load_trained, save_trained

__all__ = ["ConditionalMonge"]

#: ``fit`` keywords that override the matching config entries.
_SPEC_OPTIONS = ("dose_key", "cell_type_key", "covariate_keys", "use_rep")
_TRAIN_OPTIONS = ("steps", "seed")
_RUN_OPTIONS = ("checkpoint_dir", "resume", "test_conditions")


class ConditionalMonge:
    """One neural OT map ``T(x, c)`` for many conditions, trained with the Conditional Monge Gap.

    Example:
      >>> model = ConditionalMonge(Config())                      # doctest: +SKIP
      >>> model.fit(adata, "drug", "control", dose_key="dose", cell_type_key="cell_type",
      ...           embeddings={"drug": table})
      >>> pred = model.predict(adata_ctrl, ["A+B"], dose=10.0)    # AnnData, one block per condition
      >>> model.save("runs/a"); model = ConditionalMonge.load("runs/a", adata_ctrl)

    Args:
      config: a :class:`~condmonge.config.Config`, a nested dict, or ``None`` for defaults.
    """

    feature_names = FromTrained([])
    conditions = FromTrained([])
    holdout = FromTrained([])
    validation = FromTrained()  # how the parameters were chosen (held-back conditions or cells)
    encoder = FromTrained()
    projection = FromTrained()
    params = FromTrained()
    constants = FromTrained()
    state = FromTrained()
    loop = FromTrained()
    n_traces = FromTrained(0)

    def __init__(self, config: Config | Mapping[str, Any] | None = None):
        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            config = config_from_dict(dict(config))
        self.config: Config = config
        self.trained: TrainedMap | None = None
        self._transport: BatchedTransport | None = None

    @property
    def spec(self) -> ConditionSpec:
        """The meaning of the data (obs keys, control label, representation)."""
        return self.config.data.spec

    @property
    def is_fitted(self) -> bool:
        """Whether the model has parameters (after ``fit`` or ``load``)."""
        return self.trained is not None

    @property
    def history(self) -> pd.DataFrame:
        """Training log: step, loss, fitting term, Monge gap, steps/s, validation loss."""
        return pd.DataFrame(self.loop.history if self.loop else [])

    @property
    def predict_traces(self) -> int:
        """How many times the prediction apply has been traced (compiled)."""
        return 0 if self._transport is None else self._transport.n_traces

    def fit(
        self,
        adata: ad.AnnData,
        condition_key: str | None = None,
        control: str | None = None,
        *,
        spec: ConditionSpec | None = None,
        embeddings: Embeddings | None = None,
        holdout: Sequence[str] = (),
        **options: Any,
    ) -> ConditionalMonge:
        """Train on ``adata``; the spec and keyword options override the config's entries.

        Args:
          adata: cells x genes (dense, sparse or backed X, or ``obsm[use_rep]``) with the
            condition column in ``obs``; combinations are written ``A+B``.
          condition_key, control: obs column of conditions and the label of control cells
            (shorthands for the matching ``spec`` fields).
          spec: the data's meaning; ``None`` keeps ``config.data``'s.
          embeddings: tables (index = name, numeric columns) keyed by the obs column they
            describe, or callables ``table(fit_names) -> DataFrame`` called with the training
            names; perturbations without one are one-hot encoded (only seen ones predictable).
          holdout: condition labels (``"A+B"``) or keys kept out of training.
          **options: ``dose_key``, ``cell_type_key``, ``covariate_keys``, ``use_rep`` (spec
            fields), ``steps``, ``seed`` (config.train), ``checkpoint_dir`` (write checkpoints
            there), ``resume`` (continue from its checkpoint) and ``test_conditions`` (test
            conditions absent from ``adata``, which decide the kind of validation).

        Returns:
          ``self``, trained; ``self.params`` are the parameters with the best validation loss.
        """
        unknown = sorted(set(options) - {*_SPEC_OPTIONS, *_TRAIN_OPTIONS, *_RUN_OPTIONS})
        if unknown:
            raise ConfigError(f"fit() got an unknown option '{unknown[0]}'")
        spec = (spec or self.spec).updated(
            condition_key=condition_key,
            control=control,
            **{k: options[k] for k in _SPEC_OPTIONS if k in options},
        )
        train = {f"train.{k}": options[k] for k in _TRAIN_OPTIONS if options.get(k) is not None}
        self.config = self.config.updated(train).updated(
            {f"data.{k}": v for k, v in spec.to_dict().items()}
        )
        run = {k: options[k] for k in _RUN_OPTIONS if k in options}
        d = self.config.data  # a one-row-per-cell DataFrame is read as a table
        adata = as_anndata(
            adata, d.spec.obs_keys, required=[d.condition_key], features=d.features or None
        )
        self.trained = fit_map(adata, self.config, embeddings=embeddings, holdout=holdout, **run)
        self.config = self.trained.config  # as trained: the detected modality is resolved
        self._transport = None
        return self

    def _check_fitted(self) -> TrainedMap:
        if self.trained is None:
            raise NotFittedError(
                "the model is not trained; call `fit` or `ConditionalMonge.load` before "
                "predicting, evaluating or saving"
            )
        return self.trained

    def query_conditions(
        self,
        conditions: Query = None,
        *,
        dose: float | str | None = None,
        cell_type: str | None = None,
        cell_types_available: Sequence[str] = (),
    ) -> list[Condition]:
        """Resolve labels, a query table or ``None`` (every training condition) to conditions.

        See :func:`~condmonge.conditions.query.resolve_query`.
        """
        trained = self._check_fitted()
        return resolve_query(
            conditions,
            self.spec,
            trained.conditions,
            dose=dose,
            cell_type=cell_type,
            cell_types_available=cell_types_available,
        )

    def transport(self, x: np.ndarray, condition: Condition) -> np.ndarray:
        """Push cells ``x [n, d]`` (model feature order) through ``T(., condition)``; ``[n, d]``."""
        trained = self._check_fitted()
        return self._batched()(x, trained.encoder.encode([condition]))[0]

    def _batched(self) -> BatchedTransport:
        trained = self._check_fitted()
        if self._transport is None:
            self._transport = BatchedTransport(
                trained.module(),
                trained.params,
                trained.constants,
                trained.projection,
                trained.standardizer,
            )
        return self._transport

    def predict(
        self,
        adata: ad.AnnData,
        conditions: Query = None,
        *,
        dose: float | str | None = None,
        cell_type: str | None = None,
    ) -> ad.AnnData:
        """Predict treated cells by pushing the control cells of ``adata`` through the map.

        Args:
          adata: cells with the model's genes (any order; matched by name). If ``obs`` has the
            condition column, only its control cells are used; otherwise every cell is a control.
          conditions: labels such as ``["A", "A+B"]``, :class:`Condition` objects, or a table with
            the condition (and dose, cell type, covariate) columns, one predicted block per row.
            ``None`` predicts every training condition.
          dose: dose of labelled conditions (required when the model was trained with doses and
            the label has no unique training dose).
          cell_type: cell type of labelled conditions; by default every cell type whose
            controls are in ``adata``.

        Returns:
          AnnData with one block of rows per condition; ``obs`` holds the condition columns,
          ``condition_id`` and ``source_index`` (the row of ``adata`` each cell came from).
        """
        trained = self._check_fitted()
        spec = self.spec
        names = None if spec.use_rep else trained.feature_names
        adata = as_anndata(adata, spec.obs_keys, features=names)
        rna = trained.config.data.modality != "protein"  # no count / log checks on intensities
        x = query_features(adata, trained.feature_names, spec, check_expression_values=rna)
        is_control, types = control_rows(adata, spec)
        available = sorted({str(t) for t in types[is_control]}) if spec.cell_type_key else []
        query = self.query_conditions(
            conditions, dose=dose, cell_type=cell_type, cell_types_available=available
        )
        if not query:
            raise UnknownConditionError("no conditions to predict")
        encoded = trained.encoder.encode(query)  # once, and before any work: unknown names fail
        batched = self._batched()
        uns = {
            "version": __version__,
            "use_rep": spec.use_rep or "X",
            "config": json.dumps(self.config.model_dump(mode="json")),
        }
        return assemble_prediction(
            adata,
            x,
            query,
            lambda cells, which: batched(cells, encoded.take(which)),
            spec,
            trained.feature_names,
            uns=uns,
            extra=conditions if isinstance(conditions, pd.DataFrame) else None,
        )

    def evaluate(
        self, adata: ad.AnnData, conditions: Query = None, *, max_cells: int = 500
    ) -> pd.DataFrame:
        """Predict the treated conditions of ``adata`` from its controls and score them.

        Args:
          adata: held-out cells: controls and the observed treated cells of each condition.
          conditions: what to predict (as in :meth:`predict`); ``None``: every condition
            observed in ``adata``.
          max_cells: populations are subsampled to this size for the distribution metrics.

        Returns:
          One row per condition with every metric of
          :func:`~condmonge.evaluate.evaluation.evaluate_prediction`.
        """
        truth = truth_sets(adata, self.spec)
        query = list(truth.conditions.values()) if conditions is None else conditions
        prediction = self.predict(adata, query)
        return evaluate_prediction(
            prediction, truth, self.spec, method="condmonge", max_cells=max_cells
        )

    def save(self, path: str | Path) -> Path:
        """Write ``path/model.safetensors`` and ``path/config.yaml``; return the checkpoint.

        The safetensors file holds parameters, encoders, genes, the condition spec and config
        (no pickle) and the training state, so that ``fit(..., resume=True)`` continues where
        training stopped.
        """
        return save_trained(path, self._check_fitted())

    @classmethod
    def load(cls, path: str | Path, adata: ad.AnnData | None = None) -> ConditionalMonge:
        """Load a model written by :meth:`save` or by ``condmonge train`` (a run directory).

        Args:
          path: the run directory or its ``model.safetensors``.
          adata: optional data to predict from; its genes are checked against the model's now.
        """
        trained = load_trained(path, adata)
        model = cls(trained.config)
        model.trained = trained
        return model
