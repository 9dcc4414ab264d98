"""Training: a pure jitted step over all conditions, and the host loop around it.

``step(state, pools, conditions) -> (state, metrics)`` samples ``k`` conditions and ``n`` cells
each from arrays already on the device and evaluates all conditions with ``vmap``; it is traced
once per run whatever the number of conditions. The host loop only logs, validates, stops early
and checkpoints.

With ``mesh`` (see :mod:`condmonge.train.sharding`) the batch's condition axis is split over the
devices of the mesh; the step is otherwise identical.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
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
    "TrainLoopState",
    "make_eval_fn",
    "make_optimizer",
    "make_train_step",
    "make_value_and_grad",
    "use_scaling_domain",
    "train_loop",
]


class TrainState(struct.PyTreeNode):
    """Everything that changes during training (a pytree; saved whole for resuming)."""

    step: jnp.ndarray
    params: Any
    constants: Any
    opt_state: Any
    rng: jnp.ndarray


@struct.dataclass
class TrainLoopState:
    """Host-side early-stopping bookkeeping, saved with checkpoints for exact resumption."""

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


#: Consecutive log-domain fallbacks after which the training step stops trying the scaling domain.
LOG_DOMAIN_AFTER = 5


def make_value_and_grad(
    apply_fn: Callable[..., jnp.ndarray], loss_cfg: LossConfig
) -> Callable[..., tuple[tuple[jnp.ndarray, dict], Any, jnp.ndarray]]:
    """``(loss, aux), grads, fell_back`` of the conditional loss w.r.t. the parameters.

    When :func:`use_scaling_domain`, the solves run in the scaling domain; if the loss or a
    gradient is not finite or a solve ended far from its marginals
    (:func:`~condmonge.models.losses.solves_are_sound`), the same batch is recomputed in the log
    domain (``lax.cond``: only then is that branch executed) and ``fell_back`` is true.
    """
    safe = jax.value_and_grad(make_conditional_loss(apply_fn, loss_cfg, True), has_aux=True)
    if not use_scaling_domain(loss_cfg):

        def plain(*args):
            out, grads = safe(*args)
            return out, grads, jnp.zeros((), bool)

        return plain
    fast = jax.value_and_grad(make_conditional_loss(apply_fn, loss_cfg, False), has_aux=True)

    def value_and_grad(*args):
        out, grads = fast(*args)
        ok = _all_finite((out[0], grads)) & solves_are_sound(out[1], loss_cfg)
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
    """The training step: one jitted function. ``on_trace`` is called each time it is traced.

    ``mesh``: shard the ``k`` sampled conditions over its devices (data parallel); the caller
    places ``state``, pools and conditions replicated on the mesh
    (:func:`condmonge.train.sharding.replicate`).

    With the scaling domain (:func:`use_scaling_domain`) the jitted step also reports whether
    its solves are sound (:func:`~condmonge.models.losses.solves_are_sound`, finite gradients);
    when not, the same step (same state, same random batch) is redone by a log-domain jitted
    step, compiled only the first time it is needed, and ``log_domain_fallback`` is true. After
    ``LOG_DOMAIN_AFTER`` fallbacks in a row every later step runs in the log domain directly.
    """

    def build(lse_mode: bool, trace: Callable[[], None] | None):
        loss_fn = make_conditional_loss(model.apply, loss_cfg, lse_mode)

        @jax.jit
        def step(state: TrainState, pools: CellPools, conditions: EncodedConditions):
            if trace is not None:
                trace()  # Python side effect: runs at trace time only.
            rng, rng_batch = jax.random.split(state.rng)
            batch = sample_batch(
                rng_batch,
                pools,
                conditions,
                train_cfg.conditions_per_step,
                train_cfg.cells_per_condition,
            )
            source, target, condition = shard_conditions(
                (batch.source, batch.target, batch.condition), mesh
            )
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, state.constants, source, target, condition
            )
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = {
                "loss": loss,
                "fit": aux["fit"],
                "monge_gap": aux["monge_gap"],
                "per_condition": aux["per_condition"],
                "condition_index": batch.condition_index,
                "sound": _all_finite((loss, grads)) & solves_are_sound(aux, loss_cfg),
            }
            new_state = state.replace(
                step=state.step + 1, params=params, opt_state=opt_state, rng=rng
            )
            return new_state, metrics

        return step

    log_step = build(True, None if use_scaling_domain(loss_cfg) else on_trace)
    if not use_scaling_domain(loss_cfg):

        def plain(state, pools, conditions):
            new_state, metrics = log_step(state, pools, conditions)
            return new_state, {**metrics, "log_domain_fallback": False}

        return plain
    fast_step = build(False, on_trace)

    consecutive = [0]  # fallbacks in a row; the host loop's only state

    def checked(state, pools, conditions):
        if consecutive[0] >= LOG_DOMAIN_AFTER:
            # The data keep underflowing: paying for a scaling step first is pure waste.
            new_state, metrics = log_step(state, pools, conditions)
            return new_state, {**metrics, "log_domain_fallback": True, "log_domain_only": True}
        new_state, metrics = fast_step(state, pools, conditions)
        if bool(metrics["sound"]):  # waits for the step: cheap on CPU, where this path runs
            consecutive[0] = 0
            return new_state, {**metrics, "log_domain_fallback": False}
        consecutive[0] += 1
        new_state, metrics = log_step(state, pools, conditions)
        return new_state, {**metrics, "log_domain_fallback": True}

    return checked


def make_eval_fn(
    model: nn.Module, loss_cfg: LossConfig, train_cfg: TrainConfig
) -> Callable[[Any, Any, CellPools, EncodedConditions, jnp.ndarray], jnp.ndarray]:
    """Validation loss over *every* condition, with cells drawn with a fixed key (jitted).

    Conditions are visited in chunks of ``conditions_per_step`` (the last chunk padded and
    masked), ``validation_batches`` times, so the value is comparable from one call to the next
    and no condition is left out of early stopping. In the scaling domain an unsound result is
    recomputed in the log domain (compiled on first need), as in :func:`make_train_step`.
    """
    k = train_cfg.conditions_per_step

    def build(lse_mode: bool):
        loss_fn = make_conditional_loss(model.apply, loss_cfg, lse_mode)

        @jax.jit
        def evaluate(params, constants, pools, conditions, rng):
            n_pool = pools.target_start.shape[0]
            n_chunks = -(-n_pool // k)
            index = jnp.minimum(jnp.arange(n_chunks * k), n_pool - 1).reshape(n_chunks, k)
            weight = (jnp.arange(n_chunks * k) < n_pool).reshape(n_chunks, k)

            def one(args):
                key, idx, w = args
                batch = sample_cells(key, pools, conditions, idx, train_cfg.cells_per_condition)
                aux = loss_fn(params, constants, batch.source, batch.target, batch.condition)[1]
                return jnp.sum(aux["per_condition"] * w), solves_are_sound(aux, loss_cfg)

            repeats = train_cfg.validation_batches
            keys = jax.random.split(rng, repeats * n_chunks)
            chunks = (keys, jnp.tile(index, (repeats, 1)), jnp.tile(weight, (repeats, 1)))
            total, sound = jax.lax.map(one, chunks)
            return jnp.sum(total) / (n_pool * repeats), jnp.all(sound)

        return evaluate

    log_eval = build(True)
    if not use_scaling_domain(loss_cfg):
        return lambda *args: log_eval(*args)[0]
    fast_eval = build(False)

    def checked(*args):
        value, sound = fast_eval(*args)
        return value if bool(sound) else log_eval(*args)[0]

    return checked


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val {task.fields[val]}"),
        TextColumn("{task.fields[rate]} steps/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def train_loop(
    state: TrainState,
    loop: TrainLoopState,
    step_fn: Callable,
    eval_fn: Callable,
    train_pools: CellPools,
    val_pools: CellPools,
    conditions: EncodedConditions,
    cfg: TrainConfig,
    condition_names: Sequence[str],
    checkpoint_fn: Callable[[TrainState, TrainLoopState], None] | None = None,
    log_every: int = 10,
) -> tuple[TrainState, TrainLoopState]:
    """Run ``step_fn`` until ``cfg.steps``, validating, stopping early and checkpointing.

    Returns the final state and the loop state whose ``best_params`` are the parameters with
    the lowest validation loss.
    """
    val_rng = jax.random.PRNGKey(cfg.seed + 1)
    start_step = int(state.step)
    last_logged = (time.perf_counter(), start_step)
    rate = "-"
    fell_back_warned = False
    with _progress(cfg.progress) as bar:
        task = bar.add_task(
            "train", total=cfg.steps, completed=start_step, loss="-", val="-", rate="-"
        )
        try:
            for step in range(start_step + 1, cfg.steps + 1):
                previous = state
                state, metrics = step_fn(state, train_pools, conditions)
                done_validating = step % cfg.validate_every == 0 or step == cfg.steps
                if metrics.get("log_domain_only") and not fell_back_warned:
                    # A single redone step is routine and silent; a switch for good is not.
                    fell_back_warned = True
                    warnings.warn(
                        f"step {step}: scaling-domain Sinkhorn solves underflowed on "
                        f"{LOG_DOMAIN_AFTER} steps in a row; the remaining steps run in the log "
                        "domain (slower); set loss.sinkhorn_scaling=false to skip the attempt",
                        stacklevel=2,
                    )
                if step % log_every == 0 or done_validating:
                    loss = float(metrics["loss"])
                    if not np.isfinite(loss):
                        per = np.asarray(metrics["per_condition"])
                        idx = np.asarray(metrics["condition_index"])
                        bad = [
                            condition_names[i]
                            for i, v in zip(idx, per, strict=True)
                            if not np.isfinite(v)
                        ]
                        if checkpoint_fn is not None:
                            checkpoint_fn(previous, loop)
                        raise TrainingError(
                            f"non-finite loss at step {step} (condition(s): "
                            f"{', '.join(bad[:3]) or 'unknown'}); lower train.learning_rate or "
                            "check the data of these conditions; the last good checkpoint was kept"
                        )
                    now = time.perf_counter()
                    rate = f"{(step - last_logged[1]) / max(now - last_logged[0], 1e-9):.1f}"
                    last_logged = (now, step)
                    record = {
                        "step": step,
                        "loss": loss,
                        "fit": float(metrics["fit"]),
                        "monge_gap": float(metrics["monge_gap"]),
                        "steps_per_s": float(rate),
                    }
                    bar.update(task, completed=step, loss=f"{loss:.4g}", rate=rate)
                    if done_validating:
                        val = float(
                            eval_fn(state.params, state.constants, val_pools, conditions, val_rng)
                        )
                        record["val_loss"] = val
                        bar.update(task, val=f"{val:.4g}")
                        if val < loop.best_val_loss:
                            loop = loop.replace(
                                best_params=state.params,
                                best_val_loss=val,
                                best_step=step,
                                evals_since_best=0,
                            )
                        else:
                            loop = loop.replace(evals_since_best=loop.evals_since_best + 1)
                    loop.history.append(record)
                    if done_validating and cfg.patience and loop.evals_since_best >= cfg.patience:
                        bar.update(task, completed=step)
                        if checkpoint_fn is not None:
                            checkpoint_fn(state, loop)
                        break
                if checkpoint_fn is not None and step % cfg.checkpoint_every == 0:
                    checkpoint_fn(state, loop)
            else:
                if checkpoint_fn is not None and int(state.step) % cfg.checkpoint_every != 0:
                    checkpoint_fn(state, loop)
        except KeyboardInterrupt:
            # Ctrl-C: `state` is the last completed step (an interrupted step never assigns).
            if checkpoint_fn is not None:
                checkpoint_fn(state, loop)
            raise TrainingInterrupted(
                f"interrupted at step {int(state.step)}"
                + ("; checkpoint saved, continue with --resume" if checkpoint_fn else "")
            ) from None
    return state, loop
