"""Training: a pure jitted step over all conditions, and the host loop around it.

``step(state, pools, conditions) -> (state, metrics)`` samples ``k`` conditions and ``n`` cells
each from arrays already on the device and evaluates all conditions with ``vmap``; it is traced
once per run whatever the number of conditions. The host loop only logs, validates, stops early
and checkpoints.

With ``mesh`` (see :mod:`condmonge.train.sharding`) the batch's condition axis is split over the
devices of the mesh; the step is otherwise identical.

The scaling-domain Sinkhorn (faster on CPU) has one fallback, in the graph: an unsound step is
recomputed in the log domain by ``lax.cond`` (:func:`make_value_and_grad`), and a streak counter
in :class:`TrainState` switches to the log domain for good after :data:`LOG_DOMAIN_AFTER`
redone steps in a row. No Python state, and no host round trip between logging steps.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from condmonge.conditions.encoding import EncodedConditions
from condmonge.config import LossConfig, TrainConfig
from condmonge.data.prepare import CellPools
from condmonge.data.sampler import sample_batch, sample_cells
from condmonge.errors import TrainingError, TrainingInterrupted
from condmonge.models.losses import make_conditional_loss, solves_are_sound
from condmonge.train.sharding import shard_conditions

__all__ = [
    "TrainState",
    "LoopParts",
    "TrainLoopState",
    "CompiledTraining",
    "clear_compiled_training",
    "compiled_training",
    "make_eval_fn",
    "make_optimizer",
    "make_train_step",
    "make_value_and_grad",
    "use_scaling_domain",
    "train_loop",
]


class TrainState(struct.PyTreeNode):
    """Everything that changes during training (a pytree; saved whole for resuming).

    Attributes:
      step: ``[]`` int32, steps taken.
      params, constants: the network's trained and fixed variables.
      opt_state: the optimiser's state.
      rng: the PRNG key of the next step.
      log_domain_streak: ``[]`` int32, scaling-domain steps redone in the log domain in a row
        (see :func:`make_value_and_grad`); from :data:`LOG_DOMAIN_AFTER` on, every step runs in
        the log domain directly.
    """

    step: jnp.ndarray
    params: Any
    constants: Any
    opt_state: Any
    rng: jnp.ndarray
    log_domain_streak: jnp.ndarray = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))


@struct.dataclass
class TrainLoopState:
    """Host-side early-stopping bookkeeping, saved with checkpoints for exact resumption.

    ``best_val_loss`` is the lowest validation *fitting term* (``history``'s ``val_fit``;
    lower is better), the value that early stopping and ``condmonge tune`` use.
    """

    best_params: Any
    best_val_loss: float = float("inf")
    best_step: int = 0
    evals_since_best: int = 0
    history: list = struct.field(pytree_node=False, default_factory=list)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW, linear warm-up then cosine decay to 1% of the peak rate, after gradient clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=min(cfg.warmup_steps, max(cfg.steps - 1, 0)),
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
        end_value=0.01 * cfg.learning_rate,
    )
    adamw = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    if cfg.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)


def _all_finite(tree: Any) -> jnp.ndarray:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def use_scaling_domain(loss_cfg: LossConfig) -> bool:
    """``loss.sinkhorn_scaling``, with ``None`` resolved to: on the CPU backend only.

    Measured: on 2 CPU cores the scaling domain cuts the step's CPU time by about a quarter; on
    an H100 the log domain is faster (its exponentials are cheap, and TF32 matrix-vector
    products leave the scaling solves short of the marginal check).
    """
    if loss_cfg.sinkhorn_scaling is not None:
        return loss_cfg.sinkhorn_scaling
    return jax.default_backend() == "cpu"


#: Scaling-domain steps redone in the log domain in a row after which the training step stops
#: trying the scaling domain (the data keep underflowing: paying for a scaling step first is
#: pure waste).
LOG_DOMAIN_AFTER = 5


def make_value_and_grad(
    apply_fn: Callable[..., jnp.ndarray], loss_cfg: LossConfig
) -> Callable[..., tuple[tuple[jnp.ndarray, dict], Any, jnp.ndarray]]:
    """``(loss, aux), grads, fell_back`` of the conditional loss w.r.t. the parameters.

    The one fallback of the scaling-domain Sinkhorn, inside the jitted graph. When
    :func:`use_scaling_domain`, the solves run in the scaling domain; if the loss or a gradient
    is not finite or a solve ended far from its marginals
    (:func:`~condmonge.models.losses.solves_are_sound`), the same batch is recomputed in the
    log domain (``lax.cond``: only then is that branch executed) and ``fell_back`` is true.
    With ``log_only`` (a traced bool) the scaling attempt is skipped and the log domain runs
    directly (``fell_back`` is then true too). No host round trip, no Python state.

    The returned function takes ``(params, constants, source [k, n, d], target [k, n, d],
    condition, log_only=False)``.
    """
    safe = jax.value_and_grad(make_conditional_loss(apply_fn, loss_cfg, True), has_aux=True)
    if not use_scaling_domain(loss_cfg):

        def plain(*args, log_only=False):
            out, grads = safe(*args)
            return out, grads, jnp.zeros((), bool)

        return plain
    fast = jax.value_and_grad(make_conditional_loss(apply_fn, loss_cfg, False), has_aux=True)

    def value_and_grad(*args, log_only=False):
        def skipped():
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fast, *args))

        log_only = jnp.asarray(log_only, bool)
        out, grads = jax.lax.cond(log_only, skipped, lambda: fast(*args))
        ok = ~log_only & _all_finite((out[0], grads)) & solves_are_sound(out[1], loss_cfg)
        out, grads = jax.lax.cond(ok, lambda: (out, grads), lambda: safe(*args))
        return out, grads, ~ok

    return value_and_grad


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    loss_cfg: LossConfig,
    train_cfg: TrainConfig,
    on_trace: Callable[[], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[TrainState, CellPools, EncodedConditions], tuple[TrainState, dict]]:
    """The training step: one jitted function, traced once per run.

    Args:
      model, optimizer: the network and the optax optimiser.
      loss_cfg, train_cfg: the loss and the batch shape (``conditions_per_step`` ``k``,
        ``cells_per_condition`` ``n``).
      on_trace: called at trace time (counts compilations).
      mesh: shard the ``k`` sampled conditions over its devices (data parallel); the caller
        places ``state``, pools and conditions replicated on the mesh
        (:func:`condmonge.train.sharding.replicate`).

    Returns:
      ``step(state, pools, conditions) -> (state, metrics)``. An unsound scaling-domain step is
      redone in the log domain in the graph (:func:`make_value_and_grad`); after
      :data:`LOG_DOMAIN_AFTER` in a row (``state.log_domain_streak``) every step runs there.
      ``metrics`` flag both (device bools the host reads only when it logs).
    """
    value_and_grad = make_value_and_grad(model.apply, loss_cfg)

    @jax.jit
    def step(state: TrainState, pools: CellPools, conditions: EncodedConditions):
        if on_trace is not None:
            on_trace()  # Python side effect: runs at trace time only.
        rng, rng_batch = jax.random.split(state.rng)
        k, n = train_cfg.conditions_per_step, train_cfg.cells_per_condition
        distinct = train_cfg.cell_sampling == "distinct"
        batch = sample_batch(rng_batch, pools, conditions, k, n, distinct)
        if train_cfg.input_noise > 0:  # static: without noise the key stream is unchanged
            rng, rng_noise = jax.random.split(rng)
            noise = jax.random.normal(rng_noise, batch.source.shape, batch.source.dtype)
            scale = train_cfg.input_noise * state.constants["feature_scale"]
            batch = batch._replace(source=batch.source + noise * scale)
        source, target, condition = shard_conditions(
            (batch.source, batch.target, batch.condition), mesh
        )
        log_only = state.log_domain_streak >= LOG_DOMAIN_AFTER
        (loss, aux), grads, fell_back = value_and_grad(
            state.params, state.constants, source, target, condition, log_only=log_only
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Reset by a sound scaling step, frozen once the log domain is used for good.
        streak = jnp.where(fell_back, state.log_domain_streak + 1, 0)
        metrics = {key: aux[key] for key in ("fit", "monge_gap", "per_condition")}
        metrics.update(loss=loss, condition_index=batch.condition_index)
        metrics.update(log_domain_fallback=fell_back, log_domain_only=log_only)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=rng,
            log_domain_streak=jnp.where(log_only, state.log_domain_streak, streak),
        )
        return new_state, metrics

    return step


def make_eval_fn(
    model: nn.Module, loss_cfg: LossConfig, train_cfg: TrainConfig
) -> Callable[[Any, Any, CellPools, EncodedConditions, jnp.ndarray], dict[str, jnp.ndarray]]:
    r"""Validation loss and fitting term over *every* validation condition (jitted).

    Conditions are visited in chunks of ``conditions_per_step`` (the last chunk padded and
    masked), ``validation_batches`` times, with cells drawn with a fixed key, so the values are
    comparable from one call to the next and no condition is left out of early stopping. The
    solves run in the log domain only, whatever :func:`use_scaling_domain` says: validation runs
    once every ``validate_every`` steps, so the scaling domain's faster iterations save little,
    while its attempt and log-domain fallback would compile every solve twice (measured on the
    demo: the validation's compilation 5.0 s with both, 2.5 s with the log domain alone).

    Returns:
      ``evaluate(params, constants, pools, conditions, rng) -> {"loss", "fit"}``: the mean
      per-condition loss (fitting term + weighted Monge gap) and the mean fitting term alone,
      :math:`S_\varepsilon(T_\#\mu_c, \nu_c)`, the metric that selects the parameters.
    """
    k, n_cells = train_cfg.conditions_per_step, train_cfg.cells_per_condition
    distinct = train_cfg.cell_sampling == "distinct"
    loss_fn = make_conditional_loss(model.apply, loss_cfg, True)

    @jax.jit
    def evaluate(params, constants, pools, conditions, rng):
        n_pool = pools.target_start.shape[0]
        n_chunks = -(-n_pool // k)
        index = jnp.minimum(jnp.arange(n_chunks * k), n_pool - 1).reshape(n_chunks, k)
        weight = (jnp.arange(n_chunks * k) < n_pool).reshape(n_chunks, k)

        def one(args):
            key, idx, w = args
            batch = sample_cells(key, pools, conditions, idx, n_cells, distinct)
            aux = loss_fn(params, constants, batch.source, batch.target, batch.condition)[1]
            return jnp.stack(
                [jnp.sum(aux["per_condition"] * w), jnp.sum(aux["per_condition_fit"] * w)]
            )

        repeats = train_cfg.validation_batches
        keys = jax.random.split(rng, repeats * n_chunks)
        chunks = (keys, jnp.tile(index, (repeats, 1)), jnp.tile(weight, (repeats, 1)))
        mean = jnp.sum(jax.lax.map(one, chunks), axis=0) / (n_pool * repeats)
        return {"loss": mean[0], "fit": mean[1]}

    return evaluate


#: TrainConfig fields that only the host loop reads (:func:`train_loop`, checkpoints, the
#: ensemble and the split), never the step or the validation: fits that differ only in them
#: share one compiled step (:func:`compiled_training`).
HOST_ONLY_FIELDS = (
    "seed",
    "split_seed",
    "n_members",
    "progress",
    "validate_every",
    "patience",
    "checkpoint_every",
)


@dataclass(frozen=True)
class CompiledTraining:
    """A run's jitted functions.

    Attributes:
      step: :func:`make_train_step`'s step, with the optimiser of :func:`make_optimizer`.
      evaluate: :func:`make_eval_fn`'s validation.
      traces: a one-element list, the number of times ``step`` has been traced so far.
    """

    step: Callable[[TrainState, CellPools, EncodedConditions], tuple[TrainState, dict]]
    evaluate: Callable[..., dict[str, jnp.ndarray]]
    traces: list


def compiled_training(
    model: nn.Module,
    loss_cfg: LossConfig,
    train_cfg: TrainConfig,
    mesh: jax.sharding.Mesh | None = None,
) -> CompiledTraining:
    """The jitted step and validation of a run, shared by the runs of this process alike in it.

    Tracing the step (vmapped Sinkhorn solves, their gradients and the log-domain fallback)
    costs seconds on a CPU, more than a short run's training: without this, every member of an
    ensemble and every trial of ``condmonge tune`` would trace it again. Two runs share the
    functions when ``model``, ``loss_cfg``, ``mesh`` and ``train_cfg`` less
    :data:`HOST_ONLY_FIELDS` are equal; ``jax.jit`` still traces anew for arrays of new shapes
    (another data set). The step and the validation close over nothing else, so a shared
    function computes what a fresh one would (the same program). The last 8 are kept;
    :func:`clear_compiled_training` drops them.
    """
    defaults = TrainConfig()
    step_view = train_cfg.model_copy(
        update={name: getattr(defaults, name) for name in HOST_ONLY_FIELDS}
    )
    return _compiled_training(model, loss_cfg, step_view, mesh)


@functools.lru_cache(maxsize=8)
def _compiled_training(model, loss_cfg, train_cfg, mesh) -> CompiledTraining:
    traces = [0]

    def count_trace() -> None:
        traces[0] += 1

    optimizer = make_optimizer(train_cfg)
    step = make_train_step(model, optimizer, loss_cfg, train_cfg, on_trace=count_trace, mesh=mesh)
    return CompiledTraining(step, make_eval_fn(model, loss_cfg, train_cfg), traces)


def clear_compiled_training() -> None:
    """Forget the functions kept by :func:`compiled_training` (the next run traces anew)."""
    _compiled_training.cache_clear()


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val fit {task.fields[val]}"),
        TextColumn("{task.fields[rate]} steps/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


@dataclass(frozen=True)
class LoopParts:
    """What the training loop runs: the compiled functions and the data on the device.

    Attributes:
      step_fn: ``step(state, pools, conditions) -> (state, metrics)`` (:func:`make_train_step`).
      eval_fn: ``evaluate(params, constants, pools, conditions, rng) -> {"loss", "fit"}``
        (:func:`make_eval_fn`).
      train_pools, val_pools: the training and validation cells.
      conditions: the ``K`` encoded training conditions.
      condition_names: ``[K]`` readable names, for messages.
      checkpoint_fn: ``save(state, loop)``, or ``None`` to write no checkpoints.
      val_conditions: the encoded conditions of ``val_pools`` when they are held-back
        conditions (condition-level validation); ``None``: ``val_pools`` holds held-back cells
        of ``conditions``.
      on_validation: ``callback(step, value)`` after each validation (e.g. to report to a
        hyperparameter search, which may stop training by raising), or ``None``.
    """

    step_fn: Callable
    eval_fn: Callable
    train_pools: CellPools
    val_pools: CellPools
    conditions: EncodedConditions
    condition_names: Sequence[str]
    checkpoint_fn: Callable[[TrainState, TrainLoopState], None] | None = None
    val_conditions: EncodedConditions | None = None
    on_validation: Callable[[int, float], None] | None = None

    def checkpoint(self, state: TrainState, loop: TrainLoopState) -> None:
        """Save, when there is somewhere to save to."""
        if self.checkpoint_fn is not None:
            self.checkpoint_fn(state, loop)


def train_loop(
    state: TrainState,
    loop: TrainLoopState,
    parts: LoopParts,
    cfg: TrainConfig,
    log_every: int = 10,
    validate_start: bool = False,
) -> tuple[TrainState, TrainLoopState]:
    """Run ``parts.step_fn`` until ``cfg.steps``, validating, stopping early and checkpointing.

    The host reads the device only every ``log_every`` steps and at validations, so steps are
    dispatched ahead of the device in between. With ``validate_start`` a fresh run (step 0)
    first validates its starting parameters, which become ``best_params`` (``best_step`` 0)
    unless a later validation beats them: the starting map is a baseline worth keeping when
    the network starts from a shift prior (``model.prior``). It is not in the history.

    Returns:
      The final state and the loop state whose ``best_params`` are the parameters with the
      lowest validation fitting term (``best_val_loss``; lower is better).
    """
    log = _Log(cfg, int(state.step))
    if validate_start and int(state.step) == 0:
        loop = loop.replace(best_params=state.params, best_val_loss=_validate(state, parts, log)[1])
    with log.bar:
        try:
            for step in range(int(state.step) + 1, cfg.steps + 1):
                previous = state
                state, metrics = parts.step_fn(state, parts.train_pools, parts.conditions)
                validating = step % cfg.validate_every == 0 or step == cfg.steps
                if step % log_every == 0 or validating:
                    loop, stop = _log_step(step, (previous, state), loop, metrics, parts, log)
                    if stop:
                        break
                if step % cfg.checkpoint_every == 0:
                    parts.checkpoint(state, loop)
            else:
                if int(state.step) % cfg.checkpoint_every != 0:
                    parts.checkpoint(state, loop)
        except KeyboardInterrupt:
            # Ctrl-C: `state` is the last completed step (an interrupted step never assigns).
            parts.checkpoint(state, loop)
            raise TrainingInterrupted(
                f"interrupted at step {int(state.step)}"
                + ("; checkpoint saved, continue with --resume" if parts.checkpoint_fn else "")
            ) from None
    return state, loop


class _Log:
    """The progress bar, the steps/s clock and the once-only log-domain warning."""

    def __init__(self, cfg: TrainConfig, start_step: int):
        self.cfg = cfg
        self.val_rng = jax.random.PRNGKey(cfg.seed + 1)
        self.last = (time.perf_counter(), start_step)
        self.warned = False
        self.bar = _progress(cfg.progress)
        self.task = self.bar.add_task(
            "train", total=cfg.steps, completed=start_step, loss="-", val="-", rate="-"
        )

    def rate(self, step: int) -> float:
        """Steps per second since the last call."""
        now = time.perf_counter()
        rate = (step - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, step)
        return float(f"{rate:.1f}")

    def warn_log_domain(self, step: int, metrics: dict) -> None:
        """Say once that the scaling domain was given up (a single redone step is silent)."""
        if not self.warned and bool(metrics["log_domain_only"]):
            self.warned = True
            warnings.warn(
                f"by step {step}: scaling-domain Sinkhorn solves underflowed on "
                f"{LOG_DOMAIN_AFTER} steps in a row; the remaining steps run in the log domain "
                "(slower); set loss.sinkhorn_scaling=false to skip the attempt",
                stacklevel=7,  # the caller of ConditionalMonge.fit
            )


def _log_step(step, states, loop, metrics, parts: LoopParts, log: _Log):
    """Record a logged step (and validate); return the loop state and whether to stop."""
    previous, state = states
    cfg = log.cfg
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        parts.checkpoint(previous, loop)
        raise TrainingError(
            f"non-finite loss at step {step} (condition(s): "
            f"{', '.join(_bad_conditions(metrics, parts)[:3]) or 'unknown'}); lower "
            "train.learning_rate or check the data of these conditions; the last good "
            "checkpoint was kept"
        )
    log.warn_log_domain(step, metrics)
    record = {
        "step": step,
        "loss": loss,
        "fit": float(metrics["fit"]),
        "monge_gap": float(metrics["monge_gap"]),
        "steps_per_s": log.rate(step),
    }
    log.bar.update(log.task, completed=step, loss=f"{loss:.4g}", rate=record["steps_per_s"])
    validating = step % cfg.validate_every == 0 or step == cfg.steps
    if validating:
        record["val_loss"], record["val_fit"] = _validate(state, parts, log)
        val = record["val_fit"]
        log.bar.update(log.task, val=f"{val:.4g}")
        if val < loop.best_val_loss:
            loop = loop.replace(
                best_params=state.params, best_val_loss=val, best_step=step, evals_since_best=0
            )
        else:
            loop = loop.replace(evals_since_best=loop.evals_since_best + 1)
        if parts.on_validation is not None:
            parts.on_validation(step, val)
    loop.history.append(record)
    stop = validating and bool(cfg.patience) and loop.evals_since_best >= cfg.patience
    if stop:
        parts.checkpoint(state, loop)
    return loop, stop


def _validate(state: TrainState, parts: LoopParts, log: _Log) -> tuple[float, float]:
    """The validation loss and fitting term of ``state``'s parameters.

    The fitting term alone selects the parameters: comparable across Monge-gap weights.
    """
    conditions = parts.conditions if parts.val_conditions is None else parts.val_conditions
    values = parts.eval_fn(state.params, state.constants, parts.val_pools, conditions, log.val_rng)
    return float(values["loss"]), float(values["fit"])


def _bad_conditions(metrics: dict, parts: LoopParts) -> list[str]:
    per = np.asarray(metrics["per_condition"])
    idx = np.asarray(metrics["condition_index"])
    return [parts.condition_names[i] for i, v in zip(idx, per, strict=True) if not np.isfinite(v)]
