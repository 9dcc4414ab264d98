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
from condmonge.models.transport import BatchedTransport, combine_members, member_spread
from condmonge.train.ensemble import (
    ensemble_transport,
    fit_ensemble,
    load_ensemble,
    ood_scores,
    save_ensemble,
)
from condmonge.train.persistence import FromTrained, TrainedMap

__all__ = ["ConditionalMonge"]

#: ``fit`` keywords that override the matching config entries.
_SPEC_OPTIONS = ("dose_key", "cell_type_key", "covariate_keys", "use_rep")
_TRAIN_OPTIONS = ("steps", "seed", "n_members")
#: How an ensemble's members make one prediction (see ``predict``).
ENSEMBLE_MODES = ("mean", "mixture")
#: Measured with ``benchmarks/uncertainty.py`` (sciplex_like drug-out, 40 held-out conditions,
#: 5 members x 400 steps, task seeds 0 and 1): the mixture is better on r2_delta_top20
#: (0.8327 / 0.7792 vs 0.8319 / 0.7785), energy distance (2.095 / 2.105 vs 2.132 / 2.137) and
#: r2_var (0.509 / 0.566 vs 0.488 / 0.552); the mean is better on per-cell L2-UVP (17.2 / 23.6 %
#: vs 18.9 / 25.2 %), since averaging cancels the members' independent errors per cell.
DEFAULT_ENSEMBLE = "mixture"
#: Member outputs held at once while predicting (floats): bounds the ensemble's memory.
_MEMBER_VALUES = 1 << 26
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
        self._members: list[TrainedMap] = []
        self._transport: BatchedTransport | None = None
        self._member_transport: BatchedTransport | None = None

    @property
    def spec(self) -> ConditionSpec:
        """The meaning of the data (obs keys, control label, representation)."""
        return self.config.data.spec

    @property
    def is_fitted(self) -> bool:
        """Whether the model has parameters (after ``fit`` or ``load``)."""
        return self.trained is not None

    @property
    def members(self) -> list[TrainedMap]:
        """The ensemble's trained maps, member 0 (``self.trained``) first; one for one model."""
        if self.trained is None:
            return []
        if self._members and self._members[0] is self.trained:
            return self._members
        return [self.trained]  # ``trained`` was set directly: a single model

    @property
    def history(self) -> pd.DataFrame:
        """Training log: step, loss, fitting term, Monge gap, steps/s, validation loss."""
        return pd.DataFrame(self.loop.history if self.loop else [])

    @property
    def predict_traces(self) -> int:
        """How many times the prediction apply (single or ensemble) has been traced (compiled)."""
        return sum(t.n_traces for t in (self._transport, self._member_transport) if t is not None)

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
            fields), ``steps``, ``seed``, ``n_members`` (config.train; an ensemble trains
            ``n_members`` maps with seeds ``seed, seed + 1, ...``), ``checkpoint_dir`` (write
            checkpoints there; member ``m >= 1`` in ``members/m``), ``resume`` (continue from
            its checkpoint) and ``test_conditions`` (test conditions absent from ``adata``,
            which decide the kind of validation).

        Returns:
          ``self``, trained; ``self.params`` are member 0's parameters with the best
          validation loss, ``self.members`` every member.
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
        self._members = fit_ensemble(
            adata, self.config, embeddings=embeddings, holdout=holdout, **run
        )
        self.trained = self._members[0]
        self.config = self.trained.config  # as trained: the detected modality is resolved
        self._transport = self._member_transport = None
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
            encodable_cell_types=self.encodable_cell_types,
        )

    @property
    def encodable_cell_types(self) -> list[str] | None:
        """Cell types the model has features for (``None``: a model without cell types).

        The training vocabulary of a one-hot code, or every row of a cell-type embedding
        table, types whose treated cells it never saw included.
        """
        encoder = self._check_fitted().encoder.cell_type
        return None if encoder is None else encoder.names

    def transport(self, x: np.ndarray, condition: Condition) -> np.ndarray:
        """Push cells ``x [n, d]`` (model feature order) through ``T(., condition)``; ``[n, d]``.

        An ensemble returns its members' mean displacement.
        """
        trained = self._check_fitted()
        encoded = trained.encoder.encode([condition])
        if len(self.members) == 1:
            return self._batched()(x, encoded)[0]
        mapped = self._ensemble_batched()(np.asarray(x, np.float32), encoded)
        return combine_members(mapped, "mean")[0]

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

    def _ensemble_batched(self) -> BatchedTransport:
        if self._member_transport is None:
            self._member_transport = ensemble_transport(self.members)
        return self._member_transport

    def _member_transport_fn(self, encoded: Any, how: str, seed: int, spread: np.ndarray) -> Any:
        """``(cells [n, d], which [j]) -> [j, n, d]`` of the ensemble; fills ``spread [2, k]``.

        ``spread`` rows: relative and absolute
        :func:`~condmonge.models.transport.member_spread` of each queried condition.
        Conditions go through the stacked members in chunks that keep ``M x chunk x n x d``
        member outputs under ``_MEMBER_VALUES`` floats. Mixture draws are seeded by
        ``(seed, query index)``, so they do not depend on the chunking.
        """
        batched, n_members = self._ensemble_batched(), len(self.members)

        def transport(cells: np.ndarray, which: np.ndarray) -> np.ndarray:
            cells = np.asarray(cells, np.float32)
            out = np.empty((len(which), *cells.shape), np.float32)
            step = max(1, _MEMBER_VALUES // max(n_members * cells.size, 1))
            for s in range(0, len(which), step):
                part = which[s : s + step]
                mapped = batched(cells, encoded.take(part))
                spread[0, part] = member_spread(mapped, cells)
                spread[1, part] = member_spread(mapped, cells, relative=False)
                draws = (
                    _mixture_draws(seed, part, n_members, len(cells)) if how == "mixture" else None
                )
                out[s : s + len(part)] = combine_members(mapped, how, draws)
            return out

        return transport

    def predict(
        self,
        adata: ad.AnnData,
        conditions: Query = None,
        *,
        dose: float | str | None = None,
        cell_type: str | None = None,
        ensemble: str | None = None,
        seed: int = 0,
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
          ensemble: how an ensemble's members make one prediction: ``"mean"`` (each cell moves
            by the members' mean displacement) or ``"mixture"`` (each cell is moved by one
            member drawn at random); ``None``: :data:`DEFAULT_ENSEMBLE`. One member: ignored.
          seed: seed of the mixture's draws.

        Returns:
          AnnData with one block of rows per condition; ``obs`` holds the condition columns,
          ``condition_id``, ``source_index`` (the row of ``adata`` each cell came from),
          ``uncertainty`` (the members' spread,
          :func:`~condmonge.models.transport.member_spread`; NaN for one member: no spread is
          measured), ``member_spread`` (its numerator, in feature units) and ``ood_score``
          (distance to the training conditions,
          :func:`~condmonge.train.ensemble.ood_scores`). ``uns['condmonge']['per_condition']``
          holds both per condition, with the nearest training condition.
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
        how = self._ensemble_mode(ensemble)
        spread = np.full((2, len(query)), np.nan)  # relative, absolute
        if len(self.members) == 1:
            batched = self._batched()

            def transport(cells: np.ndarray, which: np.ndarray) -> np.ndarray:
                return batched(cells, encoded.take(which))
        else:
            transport = self._member_transport_fn(encoded, how, seed, spread)
        ood = ood_scores(self.members, encoded)
        uns = {
            "version": __version__,
            "use_rep": spec.use_rep or "X",
            "config": json.dumps(self.config.model_dump(mode="json")),
            "ensemble": {"n_members": len(self.members), "combine": how, "ood_space": ood.space},
        }
        sep = spec.combination_sep
        return assemble_prediction(
            adata,
            x,
            query,
            transport,
            spec,
            trained.feature_names,
            uns=uns,
            extra=conditions if isinstance(conditions, pd.DataFrame) else None,
            scores=lambda: pd.DataFrame(
                {
                    "condition_id": [c.key(sep) for c in query],
                    "uncertainty": spread[0],
                    "member_spread": spread[1],
                    "ood_score": ood.score,
                    "nearest_training": [trained.conditions[j].key(sep) for j in ood.nearest],
                }
            ),
        )

    @staticmethod
    def _ensemble_mode(ensemble: str | None) -> str:
        how = DEFAULT_ENSEMBLE if ensemble is None else ensemble
        if how not in ENSEMBLE_MODES:
            raise ConfigError(
                f"ensemble {ensemble!r} (predict's ensemble=, the CLI's --members) is "
                f"unknown; use one of {', '.join(ENSEMBLE_MODES)}"
            )
        return how

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
        training stopped. Ensemble member ``m >= 1`` is written the same way to
        ``path/members/m/``.
        """
        self._check_fitted()
        return save_ensemble(path, self.members)

    @classmethod
    def load(cls, path: str | Path, adata: ad.AnnData | None = None) -> ConditionalMonge:
        """Load a model written by :meth:`save` or by ``condmonge train`` (a run directory).

        Args:
          path: the run directory or its ``model.safetensors``.
          adata: optional data to predict from; its genes are checked against the model's now.
        """
        members = load_ensemble(path, adata)
        model = cls(members[0].config)
        model.trained, model._members = members[0], members
        return model


def _mixture_draws(seed: int, which: np.ndarray, n_members: int, n: int) -> np.ndarray:
    """``[j, n]`` member of each cell of the queried conditions ``which``, seeded per condition."""
    return np.stack(
        [np.random.default_rng([seed, int(i)]).integers(n_members, size=n) for i in which]
    )
