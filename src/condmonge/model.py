"""``ConditionalMonge``: the user-facing model (AnnData in, AnnData out)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from condmonge._version import __version__
from condmonge.conditions.encoders import FeatureEncoder, OneHotEncoder, TableEncoder
from condmonge.conditions.encoding import ConditionEncoder, EncodedConditions
from condmonge.conditions.spec import Condition
from condmonge.config import Config, config_from_dict
from condmonge.data.anndata_io import (
    Standardizer,
    align_features,
    check_expression,
    detect_modality,
    feature_matrix,
    feature_names,
    fit_standardizer,
    require_unique_names,
    validate_adata,
)
from condmonge.data.backed import fit_backed_projection, obs_only
from condmonge.data.pca import Projection, fit_pca
from condmonge.data.predictions import assemble_prediction, control_rows
from condmonge.data.prepare import build_pools, label_cells, make_condition, select_conditions
from condmonge.data.tables import as_anndata
from condmonge.errors import (
    CheckpointError,
    DataError,
    DataWarning,
    NotFittedError,
    UnknownConditionError,
)
from condmonge.files import replace_atomically
from condmonge.models.networks import ConditionalResidualMap
from condmonge.train import checkpoint as ckpt
from condmonge.train.sharding import condition_mesh, replicate
from condmonge.train.trainer import (
    TrainLoopState,
    TrainState,
    make_eval_fn,
    make_optimizer,
    make_train_step,
    train_loop,
)

__all__ = ["ConditionalMonge"]


def _embedding_for(
    embeddings: Mapping[str, pd.DataFrame], names: Sequence[str | None]
) -> pd.DataFrame | None:
    for name in names:
        if name is not None and name in embeddings:
            return embeddings[name]
    return None


class ConditionalMonge:
    """One neural OT map ``T(x, c)`` for many conditions, trained with the Conditional Monge Gap.

    Example:
      >>> model = ConditionalMonge(Config())                      # doctest: +SKIP
      >>> model.fit(adata, condition_key="drug", control="control", dose_key="dose",
      ...           cell_type_key="cell_type", embeddings={"drug": table})
      >>> pred = model.predict(adata_ctrl, ["A+B"], dose=10.0)    # AnnData, one block per condition
      >>> model.save("runs/a"); model = ConditionalMonge.load("runs/a")

    Args:
      config: a :class:`~condmonge.config.Config`, a nested dict, or ``None`` for defaults.
    """

    def __init__(self, config: Config | Mapping[str, Any] | None = None):
        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            config = config_from_dict(dict(config))
        self.config: Config = config
        self.encoder: ConditionEncoder | None = None
        self.feature_names: list[str] = []
        self.conditions: list[Condition] = []
        self.holdout: list[str] = []
        self.projection: Projection | None = None
        self.standardizer: Standardizer | None = None
        self.params: Any = None
        self.constants: Any = None
        self.state: TrainState | None = None
        self.loop: TrainLoopState | None = None
        self.n_traces = 0
        self._apply = None

    # ------------------------------------------------------------------ properties
    @property
    def is_fitted(self) -> bool:
        """Whether the model has parameters (after ``fit`` or ``load``)."""
        return self.params is not None

    @property
    def history(self) -> pd.DataFrame:
        """Training log: step, loss, fitting term, Monge gap, steps/s, validation loss."""
        return pd.DataFrame(self.loop.history if self.loop else [])

    def _module(self) -> ConditionalResidualMap:
        m = self.config.model
        n_features = (
            len(self.feature_names)
            if self.projection is None
            else self.projection.components.shape[1]
        )
        return ConditionalResidualMap(
            n_features=n_features,
            hidden_dim=m.hidden_dim,
            n_layers=m.n_layers,
            condition_dim=m.condition_dim,
            perturbation_hidden_dim=m.perturbation_hidden_dim,
            pooling=m.pooling,
            dose_gate=(
                m.dose_gate if m.dose_gate is not None else self.config.data.dose_key is not None
            ),
            covariate_neutral=self.encoder.neutral_features() if self.encoder else (),
            dtype=jnp.bfloat16 if self.config.train.precision == "bfloat16" else jnp.float32,
        )

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        adata: ad.AnnData,
        condition_key: str | None = None,
        control: str | None = None,
        *,
        dose_key: str | None = None,
        cell_type_key: str | None = None,
        covariate_keys: Sequence[str] | None = None,
        use_rep: str | None = None,
        embeddings: Mapping[str, pd.DataFrame] | None = None,
        holdout: Sequence[str] = (),
        steps: int | None = None,
        seed: int | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> ConditionalMonge:
        """Train on ``adata``; keyword arguments override the matching config entries.

        Args:
          adata: cells x genes (dense or sparse X, or ``obsm[use_rep]``), with the condition
            column in ``obs``; combinations are written ``A+B``.
          condition_key, control: obs column of conditions and the label of control cells.
          dose_key, cell_type_key, covariate_keys: optional obs columns.
          use_rep: an ``obsm`` key to train on instead of X (e.g. ``"X_pca"``).
          embeddings: tables (index = name, numeric columns) keyed by the obs column they
            describe (``condition_key`` or ``cell_type_key``), or callables
            ``table(fit_names) -> DataFrame`` called with the training perturbations (cell
            types) so that anything they fit sees training names only; perturbations without
            one are one-hot encoded and only seen ones can be predicted.
          holdout: condition labels (``"A+B"``) or keys kept out of training.
          steps, seed: override ``config.train.steps`` and ``config.train.seed``.
          checkpoint_dir: where to write checkpoints during training.
          resume: continue from the checkpoint in ``checkpoint_dir`` if it exists.

        Returns:
          ``self``, trained; ``self.params`` are the parameters with the best validation loss.
        """
        overrides: dict[str, Any] = {}
        for key, value in {
            "data.condition_key": condition_key,
            "data.control": control,
            "data.dose_key": dose_key,
            "data.cell_type_key": cell_type_key,
            "data.covariate_keys": tuple(covariate_keys) if covariate_keys is not None else None,
            "data.use_rep": use_rep,
            "train.steps": steps,
            "train.seed": seed,
        }.items():
            if value is not None:
                overrides[key] = value
        self.config = self.config.updated(overrides)
        d = self.config.data
        adata = as_anndata(
            adata,
            [d.condition_key, d.dose_key, d.cell_type_key, *d.covariate_keys],
            required=[d.condition_key],
            features=d.features or None,
        )
        self.config = self.config.updated({"data.modality": detect_modality(adata, d)})
        cfg = self.config
        backed = adata.isbacked
        if backed and (cfg.data.n_pca is None or cfg.data.use_rep is not None):
            raise DataError(
                "a backed AnnData (read_h5ad(..., backed='r')) is trained through a streaming "
                "PCA of X: set data.n_pca (e.g. 50) and leave use_rep unset"
            )
        validate_adata(obs_only(adata) if backed else adata, cfg.data)
        cells = label_cells(adata, cfg.data)
        held = select_conditions(cells.conditions, holdout, cfg.data.combination_sep)
        train_ids = [i for i in range(len(cells.conditions)) if i not in set(held)]
        if not train_ids:
            raise DataError("every treated condition is held out; nothing left to train on")
        self.conditions = [cells.conditions[i] for i in train_ids]
        self.holdout = list(holdout)
        self.feature_names = feature_names(adata, cfg.data.use_rep)
        self.encoder = self._make_encoder(cells, embeddings or {})
        counts = np.bincount(
            cells.condition_of_cell[~cells.is_control], minlength=len(cells.conditions)
        )[train_ids]
        small = [
            c.key()
            for c, n in zip(self.conditions, counts, strict=True)
            if n < cfg.train.cells_per_condition
        ]
        if small:
            warnings.warn(
                f"{len(small)} condition(s) have fewer cells than cells_per_condition="
                f"{cfg.train.cells_per_condition} (e.g. '{small[0]}'); their cells are sampled "
                "with replacement",
                DataWarning,
                stacklevel=2,
            )
        # PCA fitted on controls and training conditions only: held-out cells stay unseen.
        in_training = cells.is_control | np.isin(cells.condition_of_cell, train_ids)
        self.projection, self.standardizer = None, None
        if backed:  # X stays on disk: two streaming passes (see condmonge.data.backed)
            self.projection, features = fit_backed_projection(adata, cfg.data.n_pca, in_training)
        else:
            features = feature_matrix(adata, cfg.data.use_rep)
            standardize = cfg.data.standardize
            if standardize or (standardize is None and cfg.data.modality == "protein"):
                # Fitted on training controls: no treated (nor held-out) cell moves the scale.
                self.standardizer = fit_standardizer(features, cells.is_control)
                features = self.standardizer.encode(features)
            if cfg.data.n_pca is not None:
                self.projection = fit_pca(features[in_training], cfg.data.n_pca)
                features = self.projection.encode(features)
        train_pools, val_pools = build_pools(
            features, cells, train_ids, cfg.data.validation_fraction, cfg.train.seed
        )
        encoded = jax.tree.map(jnp.asarray, self.encoder.encode(self.conditions))
        train_pools = jax.tree.map(jnp.asarray, train_pools)
        val_pools = jax.tree.map(jnp.asarray, val_pools)

        module = self._module()
        optimizer = make_optimizer(cfg.train)
        state = self._init_state(module, optimizer, encoded, features)
        loop = TrainLoopState(best_params=state.params)
        checkpoint_fn = None
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            path = checkpoint_dir / ckpt.CHECKPOINT_NAME
            if resume and path.exists():
                state, loop = self._restore_training(path, state, loop)

            def checkpoint_fn(s: TrainState, lp: TrainLoopState) -> None:
                # Never replace the last good checkpoint by a diverged state (NaN/inf): the
                # loop notices a non-finite loss only at its next logging step.
                if not (_all_finite((s.params, s.opt_state)) and _all_finite(lp.best_params)):
                    return
                self.state, self.loop, self.params, self.constants = (
                    s,
                    lp,
                    lp.best_params,
                    s.constants,
                )
                self.save(checkpoint_dir)

        def count_trace() -> None:
            self.n_traces += 1

        mesh = (
            condition_mesh(cfg.train.conditions_per_step, required=cfg.train.data_parallel)
            if cfg.train.data_parallel is not False
            else None
        )
        state, train_pools, val_pools, encoded = replicate(
            (state, train_pools, val_pools, encoded), mesh
        )
        step_fn = make_train_step(
            module, optimizer, cfg.loss, cfg.train, on_trace=count_trace, mesh=mesh
        )
        eval_fn = make_eval_fn(module, cfg.loss, cfg.train)
        # A run that stopped early saved its checkpoint at the stopping step; resuming it (e.g.
        # after a kill before the process exited) must not train on.
        stopped_early = bool(cfg.train.patience) and loop.evals_since_best >= cfg.train.patience
        if stopped_early:
            cfg_train = cfg.train.model_copy(update={"steps": int(state.step)})
        else:
            cfg_train = cfg.train
        state, loop = train_loop(
            state,
            loop,
            step_fn,
            eval_fn,
            train_pools,
            val_pools,
            encoded,
            cfg_train,
            [c.key(cfg.data.combination_sep) for c in self.conditions],
            checkpoint_fn,
        )
        self.state, self.loop = state, loop
        self.params, self.constants = loop.best_params, state.constants
        self._apply = None
        return self

    def _make_encoder(self, cells, embeddings: Mapping[str, pd.DataFrame]) -> ConditionEncoder:
        d = self.config.data
        unknown = set(embeddings) - {d.condition_key, d.cell_type_key, "perturbation", "cell_type"}
        if unknown:
            raise DataError(
                f"embeddings given for {sorted(unknown)}; key them by the condition column "
                f"'{d.condition_key}'"
                + (f" or the cell-type column '{d.cell_type_key}'" if d.cell_type_key else "")
            )
        perts = sorted({p for c in self.conditions for p in c.perturbations})
        table = _embedding_for(embeddings, (d.condition_key, "perturbation"))
        table = table(perts) if callable(table) else table  # fitted on training names only
        pert_encoder: FeatureEncoder = (
            TableEncoder(table, "perturbation").fit(perts)
            if table is not None
            else OneHotEncoder(perts, "perturbation")
        )
        cell_encoder: FeatureEncoder | None = None
        if d.cell_type_key is not None:
            types = sorted({str(t) for t in cells.cell_type_of_cell})
            table = _embedding_for(embeddings, (d.cell_type_key, "cell_type"))
            table = table(types) if callable(table) else table
            cell_encoder = (
                TableEncoder(table, "cell type").fit(types)
                if table is not None
                else OneHotEncoder(types, "cell type")
            )
        max_set = max(len(c.perturbations) for c in self.conditions)
        return ConditionEncoder(
            pert_encoder,
            cell_encoder,
            len(d.covariate_keys),
            max_set,
            [d.covariate_transforms.get(k, "linear") for k in d.covariate_keys],
            [d.covariate_neutral.get(k) for k in d.covariate_keys],
        ).fit_covariates(self.conditions)

    def _init_state(self, module, optimizer, encoded: EncodedConditions, features) -> TrainState:
        rng = jax.random.PRNGKey(self.config.train.seed)
        rng, init_rng = jax.random.split(rng)
        one = jax.tree.map(lambda a: a[0], encoded)
        variables = module.init(init_rng, jnp.zeros((2, features.shape[1])), one)
        scale = features.std(axis=0)
        constants = {
            "feature_mean": jnp.asarray(features.mean(axis=0)),
            "feature_scale": jnp.asarray(np.where(scale > 1e-6, scale, 1.0)),
        }
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            constants=constants,
            opt_state=optimizer.init(params),
            rng=rng,
        )

    def _restore_training(self, path, state: TrainState, loop: TrainLoopState):
        meta, arrays = ckpt.read_checkpoint(path)
        training = meta.get("training")
        if training is None:
            raise CheckpointError(f"'{path}' holds no training state to resume from")
        if meta["feature_names"] != self.feature_names or meta["conditions"] != [
            _condition_to_json(c) for c in self.conditions
        ]:
            raise CheckpointError(
                f"'{path}' was trained on other genes or conditions; resume with the same data "
                "and holdout, or write to a new --out directory"
            )
        try:
            state = state.replace(
                step=jnp.asarray(training["step"], jnp.int32),
                params=ckpt.restore_leaves(state.params, arrays, "state/params"),
                constants={
                    k: jnp.asarray(v) for k, v in ckpt.unflatten_tree(arrays, "constants").items()
                },
                opt_state=ckpt.restore_leaves(state.opt_state, arrays, "state/opt_state"),
                rng=jnp.asarray(arrays["state/rng"]),
            )
        except CheckpointError as exc:
            raise CheckpointError(f"'{path}': {exc}") from None
        except KeyError as exc:
            raise CheckpointError(f"'{path}' is missing checkpoint field {exc}") from None
        best = jax.tree.map(jnp.asarray, ckpt.unflatten_tree(arrays, "params"))
        return state, _loop_from_meta(training, best)

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("the model is not trained; call `fit` or `ConditionalMonge.load`")

    def query_conditions(
        self,
        conditions: Sequence[str | Condition] | pd.DataFrame | None = None,
        *,
        dose: float | str | None = None,
        cell_type: str | None = None,
        cell_types_available: Sequence[str] = (),
    ) -> list[Condition]:
        """Resolve labels, a query table or ``None`` (all training conditions) to conditions."""
        self._check_fitted()
        d = self.config.data
        if conditions is None:
            if dose is None and cell_type is None:
                # Every training condition whose cell type has controls in the query.
                return [
                    c
                    for c in self.conditions
                    if not cell_types_available or c.cell_type in cell_types_available
                ]
            conditions = sorted({c.label(d.combination_sep) for c in self.conditions})
        if isinstance(conditions, pd.DataFrame):
            return [self._row_condition(row, i) for i, row in conditions.iterrows()]
        out: list[Condition] = []
        for item in conditions:
            if isinstance(item, Condition):
                out.append(item)
                continue
            types: Sequence[str | None]
            if d.cell_type_key is None:
                types = [None]
            elif cell_type is not None:
                types = [cell_type]
            else:
                types = cell_types_available or sorted(
                    {c.cell_type for c in self.conditions if c.cell_type is not None}
                )
            for ct in types:
                out.append(self._condition(item, dose, ct))
        return out

    def _condition(self, label: str, dose, cell_type) -> Condition:
        d = self.config.data
        if dose is None:
            doses = {
                c.doses
                for c in self.conditions
                if c.perturbations == tuple(sorted(label.split(d.combination_sep)))
            }
            if d.dose_key is not None and len(doses) != 1:
                raise UnknownConditionError(
                    f"condition '{label}' needs a dose (--dose or a '{d.dose_key}' column in the "
                    "query): the model was trained with doses"
                )
            dose = next(iter(doses))[0] if doses else 1.0
        if label == d.control:
            raise UnknownConditionError(
                f"'{label}' is the control label; the map of the control is the identity"
            )
        if d.covariate_keys:
            raise UnknownConditionError(
                f"the model conditions on the covariate(s) {', '.join(d.covariate_keys)}; give "
                f"the conditions as a query table with a column for each (--query)"
            )
        return make_condition(label, dose, cell_type, (), d.combination_sep)

    def _row_condition(self, row: pd.Series, index) -> Condition:
        d = self.config.data
        if d.condition_key not in row:
            raise DataError(
                f"the query table has no column '{d.condition_key}' (row {index}); give the "
                "condition in that column"
            )
        cell_type = None
        if d.cell_type_key is not None:
            if d.cell_type_key not in row:
                raise DataError(f"the query table has no column '{d.cell_type_key}'")
            cell_type = str(row[d.cell_type_key])
        missing = [k for k in d.covariate_keys if k not in row]
        if missing:
            raise DataError(
                f"the query table has no column '{missing[0]}', a covariate of the model; add "
                f"it (one value per row, e.g. {missing[0]}=48)"
            )
        covariates = []
        for key in d.covariate_keys:
            try:
                covariates.append(float(row[key]))
            except (TypeError, ValueError):
                raise DataError(
                    f"the query table's covariate '{key}' is not a number at row {index} "
                    f"('{row[key]}'); give numbers (e.g. 48 for 48 h)"
                ) from None
        dose = row[d.dose_key] if d.dose_key and d.dose_key in row else None
        if d.dose_key and dose is None:
            raise DataError(f"the query table has no column '{d.dose_key}'")
        return make_condition(
            str(row[d.condition_key]),
            1.0 if dose is None else dose,
            cell_type,
            tuple(covariates),
            d.combination_sep,
            where=f"query row {index}",
        )

    def transport(self, x: np.ndarray, condition: Condition) -> np.ndarray:
        """Push cells ``x [n, d]`` (model feature order) through ``T(., condition)``.

        With ``data.n_pca`` set, the map acts on the PCA coordinates and the latent displacement
        is added to each cell in gene space.
        """
        self._check_fitted()
        if self.standardizer is not None:  # the map acts on z-scored features
            x = self.standardizer.encode(x)
        if self.projection is None:
            y = self._map(x, condition)
        else:
            z = self.projection.encode(x)
            y = self.projection.decode_displacement(x, z, self._map(z, condition))
        return y if self.standardizer is None else self.standardizer.decode(y)

    def _map(self, x: np.ndarray, condition: Condition) -> np.ndarray:
        """Apply the network to ``x [n, p]`` in its own (possibly latent) space, in chunks."""
        encoded = jax.tree.map(lambda a: jnp.asarray(a[0]), self.encoder.encode([condition]))
        if self._apply is None:
            module = self._module()
            self._apply = jax.jit(
                lambda p, c, xb, cond: module.apply({"params": p, "constants": c}, xb, cond)
            )
        out = np.empty_like(np.asarray(x, np.float32))
        chunk = 4096
        for start in range(0, x.shape[0], chunk):
            xb = np.asarray(x[start : start + chunk], np.float32)
            n = xb.shape[0]
            # Pad to a power of two so that few distinct shapes are ever compiled.
            size = min(chunk, 1 << max(n - 1, 1).bit_length())
            padded = np.zeros((size, xb.shape[1]), np.float32)
            padded[:n] = xb
            out[start : start + n] = np.asarray(
                self._apply(self.params, self.constants, padded, encoded)
            )[:n]
        return out

    def predict(
        self,
        adata: ad.AnnData,
        conditions: Sequence[str | Condition] | pd.DataFrame | None = None,
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
        self._check_fitted()
        d = self.config.data
        adata = as_anndata(
            adata,
            [d.condition_key, d.dose_key, d.cell_type_key, *d.covariate_keys],
            features=None if d.use_rep else self.feature_names,
        )
        x = align_features(adata, self.feature_names, d.use_rep)
        if not np.isfinite(x).all():
            raise DataError("the query's features contain NaN or inf; remove those cells")
        if d.use_rep is None and d.modality in ("rna", "auto"):
            check_expression(x, "the query's adata.X")
        require_unique_names(
            adata.obs_names, "the query's adata.obs_names", "obs_names_make_unique"
        )
        is_control, types = control_rows(adata, d)
        available = sorted({str(t) for t in types[is_control]}) if d.cell_type_key else []
        query = self.query_conditions(
            conditions, dose=dose, cell_type=cell_type, cell_types_available=available
        )
        if not query:
            raise UnknownConditionError("no conditions to predict")
        self.encoder.encode(query)  # fail early, before any work, on unknown names
        return assemble_prediction(
            adata,
            x,
            query,
            self.transport,
            d,
            self.feature_names,
            uns={
                "version": __version__,
                "use_rep": d.use_rep or "X",
                "config": json.dumps(self.config.model_dump(mode="json")),
            },
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``path/model.safetensors`` and ``path/config.yaml``.

        The safetensors file holds parameters, encoders, genes and config (no pickle) and the
        training state, so that ``fit(..., resume=True)`` continues where training stopped.
        """
        self._check_fitted()
        path = Path(path)
        enc_meta, enc_arrays = self.encoder.state()
        arrays = ckpt.flatten_tree(self.params, "params")
        arrays.update(ckpt.flatten_tree(self.constants, "constants"))
        arrays.update({f"encoder/{k}": v for k, v in enc_arrays.items()})
        if self.projection is not None:
            arrays["projection/mean"] = self.projection.mean
            arrays["projection/components"] = self.projection.components
        if self.standardizer is not None:
            arrays["standardize/mean"] = self.standardizer.mean
            arrays["standardize/scale"] = self.standardizer.scale
        meta: dict[str, Any] = {
            "config": self.config.model_dump(mode="json"),
            "feature_names": self.feature_names,
            "encoder": enc_meta,
            "conditions": [_condition_to_json(c) for c in self.conditions],
            "holdout": self.holdout,
        }
        if self.state is not None and self.loop is not None:
            arrays.update(ckpt.tree_leaves_arrays(self.state.params, "state/params"))
            arrays.update(ckpt.tree_leaves_arrays(self.state.opt_state, "state/opt_state"))
            arrays["state/rng"] = np.asarray(jax.device_get(self.state.rng))
            meta["training"] = {
                "step": int(self.state.step),
                "best_val_loss": self.loop.best_val_loss,
                "best_step": self.loop.best_step,
                "evals_since_best": self.loop.evals_since_best,
                "history": self.loop.history,
            }
        out = ckpt.write_checkpoint(path / ckpt.CHECKPOINT_NAME, meta, arrays)
        replace_atomically(path / "config.yaml", self.config.to_yaml)
        return out

    @classmethod
    def load(cls, path: str | Path) -> ConditionalMonge:
        """Load a model written by :meth:`save` or by ``condmonge train`` (a run directory)."""
        meta, arrays = ckpt.read_checkpoint(path)
        try:
            model = cls(config_from_dict(meta["config"], source=str(path)))
            model.feature_names = list(meta["feature_names"])
            enc_arrays = {
                k[len("encoder/") :]: v for k, v in arrays.items() if k.startswith("encoder/")
            }
            model.encoder = ConditionEncoder.from_state(meta["encoder"], enc_arrays)
            model.conditions = [_condition_from_json(c) for c in meta["conditions"]]
            model.holdout = list(meta.get("holdout", []))
            if "projection/components" in arrays:
                model.projection = Projection(
                    arrays["projection/mean"], arrays["projection/components"]
                )
            if "standardize/mean" in arrays:
                model.standardizer = Standardizer(
                    arrays["standardize/mean"], arrays["standardize/scale"]
                )
            params = ckpt.unflatten_tree(arrays, "params")
            constants = ckpt.unflatten_tree(arrays, "constants")
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"'{path}' is missing checkpoint field {exc}") from None
        # Check that the stored arrays fit this version's network before accepting them.
        template = jax.eval_shape(
            model._module().init,
            jax.random.PRNGKey(0),
            jnp.zeros((2, model._module().n_features)),
            jax.tree.map(lambda a: a[0], model.encoder.encode(model.conditions[:1])),
        )
        expected = jax.tree.map(lambda a: a.shape, template["params"])
        found = jax.tree.map(lambda a: a.shape, params)
        if expected != found:
            raise CheckpointError(
                f"'{path}' parameters do not match the network of this condmonge version"
            )
        model.params = jax.tree.map(jnp.asarray, params)
        model.constants = jax.tree.map(jnp.asarray, constants)
        if "training" in meta:
            model.loop = _loop_from_meta(meta["training"], model.params)
        return model


def _all_finite(tree: Any) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite."""
    leaves = [
        leaf
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)
    ]
    # One reduction per leaf on the device, one transfer to the host.
    return (
        bool(jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves]))) if leaves else True
    )


def _loop_from_meta(training: Mapping[str, Any], best_params: Any) -> TrainLoopState:
    """Early-stopping state saved in a checkpoint's ``training`` header."""
    return TrainLoopState(
        best_params=best_params,
        best_val_loss=float(training["best_val_loss"]),
        best_step=int(training["best_step"]),
        evals_since_best=int(training["evals_since_best"]),
        history=list(training["history"]),
    )


def _condition_to_json(c: Condition) -> dict[str, Any]:
    return {
        "perturbations": list(c.perturbations),
        "doses": list(c.doses),
        "cell_type": c.cell_type,
        "covariates": list(c.covariates),
    }


def _condition_from_json(d: Mapping[str, Any]) -> Condition:
    return Condition(
        tuple(d["perturbations"]),
        tuple(float(v) for v in d["doses"]),
        d["cell_type"],
        tuple(float(v) for v in d["covariates"]),
    )
