"""Training wiring: from an AnnData and a config to a trained map.

The steps, in order: validate the data against the spec, label every cell, hold conditions
out, read the features (with a PCA fitted on training cells only), build the encoder and the
device-ready pools, initialise or resume the state, and run the training loop with
checkpoints.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np

from condmonge.conditions.encoding import (
    ConditionEncoder,
    Embeddings,
    EncodedConditions,
    build_encoder,
)
from condmonge.config import Config, DataConfig
from condmonge.data.anndata_io import (
    Standardizer,
    detect_modality,
    feature_matrix,
    feature_names,
    fit_standardizer,
    validate_adata,
)
from condmonge.data.backed import fit_backed_projection, obs_only
from condmonge.data.pca import (
    AUTO_MAX_COMPONENTS,
    AUTO_MIN_FEATURES,
    Projection,
    fit_auto_pca,
    fit_pca,
)
from condmonge.data.prepare import (
    CellPools,
    LabelledCells,
    build_pools,
    label_cells,
    select_conditions,
)
from condmonge.data.sampler import auto_cells_per_condition
from condmonge.data.spec import Condition
from condmonge.data.validation import ValidationPlan, choose_validation, fallback_plan
from condmonge.errors import DataError, DataWarning, UnknownConditionError
from condmonge.models.prior import auto_prior, prior_constants, training_signatures
from condmonge.train import checkpoint as ckpt
from condmonge.train.persistence import TrainedMap, restore_training, save_trained
from condmonge.train.sharding import condition_mesh, replicate
from condmonge.train.trainer import (
    LoopParts,
    TrainLoopState,
    TrainState,
    compiled_training,
    make_optimizer,
    train_loop,
)

__all__ = ["fit_map", "init_state"]


class _Prepared(NamedTuple):
    """The data of a run, ready for the device."""

    cells: LabelledCells
    train_ids: list[int]
    val_ids: list[int]  # held-back validation conditions (empty: held-back cells)
    validation: dict[str, Any]  # the ValidationPlan's record
    encoder: ConditionEncoder
    feature_names: list[str]
    projection: Projection | None
    standardizer: Standardizer | None
    features: np.ndarray  # [N, p] every cell, in the space the map acts in
    train_pools: CellPools
    val_pools: CellPools


def fit_map(  # noqa: PLR0913  the data, the config and keyword-only run options
    adata: ad.AnnData,
    config: Config,
    *,
    embeddings: Embeddings | None = None,
    holdout: Sequence[str] = (),
    test_conditions: Sequence[Condition] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_validation: Callable[[int, float], None] | None = None,
) -> TrainedMap:
    """Train the conditional map of ``config`` on ``adata``.

    Early stopping and the best parameters follow the validation fitting term on held-back
    training *conditions* of the test set's kind (:mod:`condmonge.data.validation`), never
    trained on; too few conditions fall back to held-back cells (with a :class:`DataWarning`).

    Args:
      adata: cells x genes (dense, sparse or backed X, or ``obsm[spec.use_rep]``), annotated as
        ``config.data.spec`` says.
      config: every hyperparameter; ``config.data`` holds the spec.
      embeddings: condition and cell-type tables (see ``build_encoder``).
      holdout: condition labels (``"A+B"``) or keys kept out of training.
      test_conditions: test conditions absent from ``adata`` (the test side of a split
        column); with ``holdout`` they decide the kind of validation.
      checkpoint_dir: where to write checkpoints during training (``None``: nowhere).
      resume: continue from the checkpoint in ``checkpoint_dir`` if it exists.
      on_validation: called as ``on_validation(step, value)`` after each validation (e.g. by
        :mod:`condmonge.tuning` to prune a trial); an exception it raises stops training.

    Returns:
      The trained map: ``params`` best by validation fit, ``validation`` says how chosen.
    """
    if not adata.isbacked:  # stored, so that predictions run the checks of this modality
        config = config.updated({"data.modality": detect_modality(adata, config.data)})
    data = _prepare(adata, config, holdout, test_conditions, embeddings)
    if config.train.cells_per_condition == "auto":  # the checkpoint records what ran
        pools = data.train_pools
        n_cells = auto_cells_per_condition(pools.source_count, pools.target_count)
        config = config.updated({"train.cells_per_condition": n_cells})
    conditions = [data.cells.conditions[i] for i in data.train_ids]
    encoded, val_encoded = _encode(data, data.train_ids), _encode(data, data.val_ids)
    if config.model.prior == "auto":  # resolved here, so the checkpoint records the choice
        choice = auto_prior(training_signatures(encoded), data.validation["kind"])
        config = config.updated({"model.prior": choice})
    prior = None  # the tables of model.prior (condmonge.models.prior)
    if config.model.prior != "none":
        prior = prior_constants(
            data.train_pools, encoded, data.validation["kind"], config.model.prior
        )
    trained = TrainedMap(
        config=config,
        feature_names=data.feature_names,
        conditions=conditions,
        holdout=list(holdout),
        encoder=data.encoder,
        projection=data.projection,
        params=None,
        constants=None,
        standardizer=data.standardizer,
        validation=data.validation,
    )
    optimizer = make_optimizer(config.train)
    state = init_state(
        trained.module(), optimizer, encoded, data.features, config.train.seed, prior
    )
    loop = TrainLoopState(best_params=state.params)
    checkpoint_fn = None
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / ckpt.CHECKPOINT_NAME
        if resume and path.exists():
            state, loop = restore_training(path, trained, state)
        checkpoint_fn = _checkpointer(Path(checkpoint_dir), trained)
    hooks = (checkpoint_fn, on_validation)
    state, loop = _run(trained, state, loop, data, (encoded, val_encoded), hooks)
    return replace(
        trained, params=loop.best_params, constants=state.constants, state=state, loop=loop
    )


def _prepare(
    adata: ad.AnnData,
    config: Config,
    holdout: Sequence[str],
    test_conditions: Sequence[Condition],
    embeddings: Embeddings | None,
) -> _Prepared:
    """Validate, label, hold out, choose validation, read features (PCA on training cells)."""
    d = config.data
    backed = adata.isbacked
    if backed:
        _check_backed(adata, d)
    validate_adata(obs_only(adata) if backed else adata, d)
    cells = label_cells(adata, d.spec)
    held = set(select_conditions(cells.conditions, holdout, d.combination_sep, d.control))
    train_ids = [i for i in range(len(cells.conditions)) if i not in held]
    if not train_ids:
        raise DataError("every treated condition is held out; nothing left to train on")
    test = [cells.conditions[i] for i in sorted(held)] + list(test_conditions)
    train_ids, val_ids, plan, encoder = _choose_validation(
        cells, train_ids, test, config, embeddings
    )
    if config.train.cells_per_condition != "auto":
        _warn_small_conditions(cells, train_ids, config.train.cells_per_condition)
    # PCA fitted on controls and training conditions only: held-out and validation cells
    # stay unseen.
    in_training = cells.is_control | np.isin(cells.condition_of_cell, train_ids)
    projection, standardizer = None, None
    if backed:  # X stays on disk: two streaming passes (see condmonge.data.backed)
        n_pca = AUTO_MAX_COMPONENTS if d.n_pca == "auto" else d.n_pca
        projection, features = fit_backed_projection(adata, n_pca, in_training)
    else:
        features = feature_matrix(adata, d.use_rep)
        if d.standardize or (d.standardize is None and d.modality == "protein"):
            # Fitted on training controls: no treated (nor held-out) cell moves the scale.
            standardizer = fit_standardizer(features, cells.is_control)
            features = standardizer.encode(features)
        projection = _latent_space(features[in_training], d)
        if projection is not None:
            features = projection.encode(features)
    train_pools, val_pools = build_pools(
        features, cells, train_ids, d.validation_fraction, config.train.data_seed, val_ids or None
    )
    all_train = [cells.conditions[i] for i in sorted(train_ids + val_ids)]
    return _Prepared(
        cells,
        train_ids,
        val_ids,
        plan.record(all_train, d.combination_sep),
        encoder,
        feature_names(adata, d.use_rep),
        projection,
        standardizer,
        features,
        jax.tree.map(jnp.asarray, train_pools),
        jax.tree.map(jnp.asarray, val_pools),
    )


def _encode(data: _Prepared, ids: list[int]) -> EncodedConditions | None:
    """The conditions ``ids`` encoded, as device arrays (``None`` for no condition)."""
    if not ids:
        return None
    return jax.tree.map(jnp.asarray, data.encoder.encode([data.cells.conditions[i] for i in ids]))


def _check_backed(adata: ad.AnnData, d: DataConfig) -> None:
    # "auto" streams AUTO_MAX_COMPONENTS components of a wide backed X.
    auto_narrow = d.n_pca == "auto" and adata.n_vars <= AUTO_MIN_FEATURES
    if d.n_pca is None or auto_narrow or d.use_rep is not None:
        raise DataError(
            "a backed AnnData (read_h5ad(..., backed='r')) is trained through a streaming "
            "PCA of X: set data.n_pca (e.g. 50) and leave use_rep unset"
        )


def _latent_space(train_cells: np.ndarray, d: DataConfig) -> Projection | None:
    """The PCA of ``data.n_pca`` fitted on ``train_cells [n, p]``, or ``None`` (no PCA).

    ``"auto"`` projects X with more than :data:`AUTO_MIN_FEATURES` features (never a
    ``use_rep``) on the components explaining 90 % of the top-100 spectrum, at most 50
    (:func:`~condmonge.data.pca.fit_auto_pca`); low-dimensional inputs stay as they are.
    """
    if d.n_pca == "auto":
        if d.use_rep is None and train_cells.shape[1] > AUTO_MIN_FEATURES:
            return fit_auto_pca(train_cells)
        return None
    return None if d.n_pca is None else fit_pca(train_cells, d.n_pca)


def _choose_validation(
    cells: LabelledCells,
    train_ids: list[int],
    test: list[Condition],
    config: Config,
    embeddings: Embeddings | None,
) -> tuple[list[int], list[int], ValidationPlan, ConditionEncoder]:
    """Split ``train_ids`` into training and validation conditions; build the encoder.

    The encoder is fitted on the remaining training conditions only; when it cannot encode
    the validation conditions (one-hot perturbations unseen in training), the run falls back
    to held-back cells with a :class:`DataWarning`.
    """
    d = config.data
    types = [str(t) for t in cells.cell_type_of_cell]

    def encoder_of(ids: list[int]) -> ConditionEncoder:
        conditions = [cells.conditions[i] for i in ids]
        return build_encoder(
            conditions, types, d.spec, embeddings, d.covariate_transforms, d.covariate_neutral
        )

    train = [cells.conditions[i] for i in train_ids]
    plan = choose_validation(
        train,
        test,
        mode=d.validation,
        kind=d.validation_kind,
        share=d.validation_conditions,
        seed=config.train.data_seed,
    )
    val_ids = [train_ids[j] for j in plan.condition_ids]
    if val_ids:
        rest = [i for i in train_ids if i not in set(val_ids)]
        encoder = encoder_of(rest)
        try:
            encoder.encode([cells.conditions[i] for i in val_ids])
            return rest, val_ids, plan, encoder
        except UnknownConditionError as exc:
            why = f"{str(exc).split(';')[0]}; give an embedding table to validate on them"
            plan = fallback_plan(plan.kind, why)
    # Silent when nothing was asked: no test set and every choice left on auto.
    asked = bool(test) or d.validation != "auto" or d.validation_kind != "auto"
    if plan.fallback and asked:
        warnings.warn(
            f"model selection: {plan.reason}",
            DataWarning,
            stacklevel=5,  # the caller of ConditionalMonge.fit
        )
    return train_ids, [], plan, encoder_of(train_ids)


def _warn_small_conditions(cells: LabelledCells, train_ids: list[int], n_cells: int) -> None:
    counts = np.bincount(
        cells.condition_of_cell[~cells.is_control], minlength=len(cells.conditions)
    )[train_ids]
    small = [
        cells.conditions[i].key() for i, n in zip(train_ids, counts, strict=True) if n < n_cells
    ]
    if small:
        warnings.warn(
            f"{len(small)} condition(s) have fewer cells than cells_per_condition={n_cells} "
            f"(e.g. '{small[0]}'); their cells are sampled with replacement",
            DataWarning,
            stacklevel=5,  # the caller of ConditionalMonge.fit
        )


def init_state(
    module: Any,
    optimizer: Any,
    encoded: EncodedConditions,
    features: np.ndarray,
    seed: int,
    prior: dict[str, np.ndarray] | None = None,
) -> TrainState:
    """A fresh training state: parameters, fixed feature statistics, optimiser state, key.

    Args:
      module: the network.
      optimizer: the optax optimiser.
      encoded: ``K`` encoded conditions (the first one shapes the parameters).
      features: ``[N, p]`` the cells the map acts on; their mean and scale normalise its input.
      seed: ``config.train.seed``.
      prior: the tables of ``model.prior`` (:func:`~condmonge.models.prior.prior_constants`).
    """
    rng = jax.random.PRNGKey(seed)
    rng, init_rng = jax.random.split(rng)
    one = jax.tree.map(lambda a: a[0], encoded)
    variables = _jitted_init(module)(init_rng, jnp.zeros((2, features.shape[1])), one)
    scale = features.std(axis=0)
    constants = {
        "feature_mean": jnp.asarray(features.mean(axis=0)),
        "feature_scale": jnp.asarray(np.where(scale > 1e-6, scale, 1.0)),
    } | {k: jnp.asarray(v) for k, v in (prior or {}).items()}
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        constants=constants,
        opt_state=optimizer.init(params),
        rng=rng,
    )


@functools.lru_cache(maxsize=8)
def _jitted_init(module: Any) -> Callable[..., Any]:
    """``module.init`` as one jitted program (the same values, bit for bit).

    Run eagerly, Flax's initialisation dispatches and compiles some fifty small XLA programs
    (one per operation and shape), about 0.8 s of a new process's first fit even when they
    come from the persistent compilation cache.
    """
    return jax.jit(module.init)


def _checkpointer(directory: Path, trained: TrainedMap):
    """``checkpoint_fn(state, loop)`` for the training loop: saves ``trained`` at that point."""

    def checkpoint_fn(state: TrainState, loop: TrainLoopState) -> None:
        # Never replace the last good checkpoint by a diverged state (NaN/inf): the loop
        # notices a non-finite loss only at its next logging step.
        if not (_all_finite((state.params, state.opt_state)) and _all_finite(loop.best_params)):
            return
        at = replace(
            trained, params=loop.best_params, constants=state.constants, state=state, loop=loop
        )
        save_trained(directory, at)

    return checkpoint_fn


def _run(trained, state, loop, data: _Prepared, encoded, hooks):
    """Compile the step and the validation, place the arrays, and run the training loop.

    ``encoded`` is ``(training conditions, validation conditions or None)``; ``hooks`` is
    ``(checkpoint_fn, on_validation)``.
    """
    cfg = trained.config
    mesh = (
        condition_mesh(cfg.train.conditions_per_step, required=cfg.train.data_parallel)
        if cfg.train.data_parallel is not False
        else None
    )
    state, train_pools, val_pools, (encoded, val_encoded) = replicate(
        (state, data.train_pools, data.val_pools, encoded), mesh
    )
    # Shared with earlier runs of the same network, loss and batch shape (ensemble members,
    # tune trials): the step is traced once per process, not once per run.
    compiled = compiled_training(trained.module(), cfg.loss, cfg.train, mesh)
    # A run that stopped early saved its checkpoint at the stopping step; resuming it (e.g.
    # after a kill before the process exited) must not train on.
    cfg_train = cfg.train
    if cfg.train.patience and loop.evals_since_best >= cfg.train.patience:
        cfg_train = cfg.train.model_copy(update={"steps": int(state.step)})
    names = [c.key(cfg.data.combination_sep) for c in trained.conditions]
    checkpoint_fn, on_validation = hooks
    parts = LoopParts(
        compiled.step,
        compiled.evaluate,
        train_pools,
        val_pools,
        encoded,
        names,
        checkpoint_fn,
        val_encoded,
        on_validation=on_validation,
    )
    traces_before = compiled.traces[0]
    try:
        # With a shift prior the starting map is a baseline, kept unless training beats it.
        return train_loop(state, loop, parts, cfg_train, validate_start=cfg.model.prior != "none")
    finally:
        trained.n_traces += compiled.traces[0] - traces_before


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
