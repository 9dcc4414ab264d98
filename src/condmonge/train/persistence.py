"""A trained map and everything it was trained on, and how it is saved and loaded.

:class:`TrainedMap` is what ``fit`` produces and ``predict`` consumes. :func:`save_trained`
writes it as one safetensors checkpoint (parameters, encoders, genes, the condition spec, the
config and, during training, the full training state) plus ``config.yaml``; :func:`load_trained`
reads it back and checks it against this version's network; :func:`restore_training` resumes
an interrupted run from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np

from condmonge.conditions.encoding import ConditionEncoder
from condmonge.config import Config, config_from_dict
from condmonge.data.anndata_io import Standardizer, align_features
from condmonge.data.pca import Projection
from condmonge.data.spec import Condition, ConditionSpec
from condmonge.errors import CheckpointError, NotFittedError
from condmonge.files import replace_atomically
from condmonge.models.networks import ConditionalResidualMap, network_from_config
from condmonge.train import checkpoint as ckpt
from condmonge.train.trainer import TrainLoopState, TrainState

__all__ = ["FromTrained", "TrainedMap", "load_trained", "restore_training", "save_trained"]


@dataclass
class TrainedMap:
    """A trained conditional map with its vocabulary, genes and (optionally) training state.

    Attributes:
      config: the run's configuration; ``config.data.spec`` is the data's meaning.
      feature_names: ``[d]`` genes (or ``obsm`` columns) in the model's order.
      conditions: the ``K`` training conditions.
      holdout: the condition labels or keys held out of training.
      encoder: turns conditions into network inputs.
      projection: the PCA the map acts in, or ``None``.
      standardizer: the per-feature z-scoring (fitted on training controls) applied before
        the map (and undone after it), or ``None``.
      params, constants: the network's variables (the best validation parameters).
      state, loop: the last training state and early-stopping state (``None`` after a load
        of a file without them); saved so that training can resume exactly.
      n_traces: how many times the training step was traced in this process (not saved).
      validation: how the parameters were chosen (the record of
        :class:`~condmonge.data.validation.ValidationPlan`: ``mode``, ``kind``, the keys of
        the held-back ``conditions`` (never trained on), ``reason``, ``fallback``), or
        ``None`` for a checkpoint written before it was recorded.
    """

    config: Config
    feature_names: list[str]
    conditions: list[Condition]
    holdout: list[str]
    encoder: ConditionEncoder
    projection: Projection | None
    params: Any
    constants: Any
    state: TrainState | None = None
    loop: TrainLoopState | None = None
    n_traces: int = field(default=0, compare=False)
    standardizer: Standardizer | None = None
    validation: dict[str, Any] | None = None

    @property
    def spec(self) -> ConditionSpec:
        """The meaning of the data the map was trained on."""
        return self.config.data.spec

    def module(self) -> ConditionalResidualMap:
        """The network, sized for the space the map acts in (genes or PCA coordinates)."""
        width = (
            len(self.feature_names)
            if self.projection is None
            else self.projection.components.shape[1]
        )
        return network_from_config(self.config, width, self.encoder.neutral_features())


def save_trained(path: str | Path, trained: TrainedMap) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.yaml``; return the checkpoint's path.

    Args:
      path: the run directory.
      trained: the map; its ``state`` and ``loop``, when set, are saved for resuming.
    """
    path = Path(path)
    enc_meta, enc_arrays = trained.encoder.state()
    arrays = ckpt.flatten_tree(trained.params, "params")
    arrays.update(ckpt.flatten_tree(trained.constants, "constants"))
    arrays.update({f"encoder/{k}": v for k, v in enc_arrays.items()})
    if trained.projection is not None:
        arrays["projection/mean"] = trained.projection.mean
        arrays["projection/components"] = trained.projection.components
    if trained.standardizer is not None:
        arrays["standardize/mean"] = trained.standardizer.mean
        arrays["standardize/scale"] = trained.standardizer.scale
    meta: dict[str, Any] = {
        "config": trained.config.model_dump(mode="json"),
        "spec": trained.spec.to_dict(),
        "feature_names": trained.feature_names,
        "encoder": enc_meta,
        "conditions": [condition_to_json(c) for c in trained.conditions],
        "holdout": trained.holdout,
    }
    if trained.validation is not None:
        meta["validation"] = trained.validation
    if trained.state is not None and trained.loop is not None:
        arrays.update(_training_arrays(trained.state))
        meta["training"] = _training_meta(trained.state, trained.loop)
    out = ckpt.write_checkpoint(path / ckpt.CHECKPOINT_NAME, meta, arrays)
    replace_atomically(path / "config.yaml", trained.config.to_yaml)
    return out


def _training_arrays(state: TrainState) -> dict[str, np.ndarray]:
    arrays = ckpt.tree_leaves_arrays(state.params, "state/params")
    arrays.update(ckpt.tree_leaves_arrays(state.opt_state, "state/opt_state"))
    arrays["state/rng"] = np.asarray(jax.device_get(state.rng))
    return arrays


def _training_meta(state: TrainState, loop: TrainLoopState) -> dict[str, Any]:
    return {
        "step": int(state.step),
        "log_domain_streak": int(state.log_domain_streak),
        "best_val_loss": loop.best_val_loss,
        "best_step": loop.best_step,
        "evals_since_best": loop.evals_since_best,
        "history": loop.history,
    }


def load_trained(path: str | Path, adata: ad.AnnData | None = None) -> TrainedMap:
    """Read a map written by :func:`save_trained` (a run directory or a checkpoint file).

    Args:
      path: the run directory or its ``model.safetensors``.
      adata: optional data to predict from; its genes (or ``obsm`` representation) are
        checked against the model's now rather than at the first ``predict``.
    """
    meta, arrays = ckpt.read_checkpoint(path)
    try:
        trained = _from_meta(meta, arrays, str(path))
        params = ckpt.unflatten_tree(arrays, "params")
        constants = ckpt.unflatten_tree(arrays, "constants")
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"'{path}' is missing checkpoint field {exc}") from None
    _check_shapes(trained, params, path)
    trained.params = jax.tree.map(jnp.asarray, params)
    trained.constants = jax.tree.map(jnp.asarray, constants)
    if "training" in meta:
        trained.loop = loop_from_meta(meta["training"], trained.params)
    if adata is not None:
        align_features(adata[:1], trained.feature_names, trained.spec.use_rep)
    return trained


def _from_meta(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str):
    config = config_from_dict(meta["config"], source=source)
    if "spec" in meta and ConditionSpec.from_dict(meta["spec"]) != config.data.spec:
        raise CheckpointError(f"'{source}': its condition spec and its config disagree")
    enc_arrays = {k[len("encoder/") :]: v for k, v in arrays.items() if k.startswith("encoder/")}
    projection = None
    if "projection/components" in arrays:
        projection = Projection(arrays["projection/mean"], arrays["projection/components"])
    standardizer = None
    if "standardize/mean" in arrays:
        standardizer = Standardizer(arrays["standardize/mean"], arrays["standardize/scale"])
    return TrainedMap(
        config=config,
        feature_names=list(meta["feature_names"]),
        conditions=[condition_from_json(c) for c in meta["conditions"]],
        holdout=list(meta.get("holdout", [])),
        encoder=ConditionEncoder.from_state(meta["encoder"], enc_arrays),
        projection=projection,
        params=None,
        constants=None,
        standardizer=standardizer,
        validation=meta.get("validation"),  # absent from older checkpoints
    )


def _check_shapes(trained: TrainedMap, params: Any, path: str | Path) -> None:
    """The stored arrays must fit this version's network before they are accepted."""
    module = trained.module()
    one = jax.tree.map(lambda a: a[0], trained.encoder.encode(trained.conditions[:1]))
    template = jax.eval_shape(
        module.init, jax.random.PRNGKey(0), jnp.zeros((2, module.n_features)), one
    )
    expected = jax.tree.map(lambda a: a.shape, template["params"])
    if expected != jax.tree.map(lambda a: a.shape, params):
        raise CheckpointError(
            f"'{path}' parameters do not match the network of this condmonge version"
        )


def restore_training(
    path: Path, trained: TrainedMap, state: TrainState
) -> tuple[TrainState, TrainLoopState]:
    """The training state and loop state saved at ``path``, to resume the run of ``trained``.

    Args:
      path: the checkpoint file.
      trained: the map being trained (its genes and conditions must be the checkpoint's).
      state: a freshly initialised state: the template of every restored leaf.
    """
    meta, arrays = ckpt.read_checkpoint(path)
    training = meta.get("training")
    if training is None:
        raise CheckpointError(f"'{path}' holds no training state to resume from")
    conditions = [condition_to_json(c) for c in trained.conditions]
    if meta["feature_names"] != trained.feature_names or meta["conditions"] != conditions:
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
            log_domain_streak=jnp.asarray(training.get("log_domain_streak", 0), jnp.int32),
        )
    except CheckpointError as exc:
        raise CheckpointError(f"'{path}': {exc}") from None
    except KeyError as exc:
        raise CheckpointError(f"'{path}' is missing checkpoint field {exc}") from None
    best = jax.tree.map(jnp.asarray, ckpt.unflatten_tree(arrays, "params"))
    return state, loop_from_meta(training, best)


def loop_from_meta(training: Mapping[str, Any], best_params: Any) -> TrainLoopState:
    """Early-stopping state saved in a checkpoint's ``training`` header."""
    return TrainLoopState(
        best_params=best_params,
        best_val_loss=float(training["best_val_loss"]),
        best_step=int(training["best_step"]),
        evals_since_best=int(training["evals_since_best"]),
        history=list(training["history"]),
    )


def condition_to_json(c: Condition) -> dict[str, Any]:
    """A condition as plain JSON."""
    return {
        "perturbations": list(c.perturbations),
        "doses": list(c.doses),
        "cell_type": c.cell_type,
        "covariates": list(c.covariates),
    }


def condition_from_json(d: Mapping[str, Any]) -> Condition:
    """Inverse of :func:`condition_to_json`."""
    return Condition(
        tuple(d["perturbations"]),
        tuple(float(v) for v in d["doses"]),
        d["cell_type"],
        tuple(float(v) for v in d["covariates"]),
    )


class FromTrained:
    """A model attribute read from (and written to) its :class:`TrainedMap`.

    Before training it reads as ``default``; setting it then is a :class:`NotFittedError`.
    """

    def __init__(self, default: Any = None):
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, model: Any, owner: type) -> Any:
        if model is None or model.trained is None:
            return self if model is None else self.default
        return getattr(model.trained, self.name)

    def __set__(self, model: Any, value: Any) -> None:
        if model.trained is None:
            raise NotFittedError(f"the model is not trained; cannot set `{self.name}`")
        setattr(model.trained, self.name, value)
