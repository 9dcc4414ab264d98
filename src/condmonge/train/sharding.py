"""Data-parallel training over conditions with ``jax.sharding``; multi-host via ``jax.distributed``.

JAX is the distributed engine: the training step is one ``jax.jit`` program whose per-step batch
``[k, n, d]`` is constrained to be split along the condition axis ``k`` over a 1-D
:class:`~jax.sharding.Mesh` of every device (``jax.devices()``, all hosts). Parameters, optimiser
state and the cell pools are replicated; XLA's SPMD partitioner runs each device's conditions
locally and all-reduces the gradient. Nothing else changes: the same step, the same random
numbers, so a 2-device run matches a 1-device run up to float reassociation.

Multi-host: call :func:`initialize_distributed` in every process before any other JAX call (it
wraps :func:`jax.distributed.initialize`), then run the same ``fit`` in each process on the same
data; ``jax.devices()`` then lists the devices of all hosts.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from condmonge.errors import ConfigError

__all__ = [
    "CONDITION_AXIS",
    "condition_mesh",
    "initialize_distributed",
    "replicate",
    "shard_conditions",
]

CONDITION_AXIS = "conditions"
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def initialize_distributed(**kwargs: Any) -> None:
    """Join a multi-host JAX job (``jax.distributed.initialize(**kwargs)``).

    Without arguments JAX reads the cluster from the environment (SLURM, Open MPI, Kubernetes,
    Cloud TPU); otherwise pass ``coordinator_address``, ``num_processes`` and ``process_id``.
    Call it once per process, before anything else touches JAX.
    """
    jax.distributed.initialize(**kwargs)


def condition_mesh(conditions_per_step: int, devices: Any = None) -> Mesh | None:
    """A 1-D mesh over ``devices`` (default: all) for sharding the condition axis.

    Returns ``None`` (single-device training) when only one device exists, with a one-time
    warning. Raises :class:`ConfigError` when ``conditions_per_step`` does not divide evenly.
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) == 1:
        platform = devices[0].platform
        hint = (
            "set XLA_FLAGS=--xla_force_host_platform_device_count=N for N CPU devices"
            if platform == "cpu"
            else "only one device is visible"
        )
        _warn_once(
            "single-device",
            f"train.data_parallel: one {platform} device, training without sharding ({hint})",
        )
        return None
    if conditions_per_step % len(devices):
        raise ConfigError(
            f"train.conditions_per_step={conditions_per_step} must be a multiple of the "
            f"{len(devices)} devices for train.data_parallel"
        )
    return Mesh(np.asarray(devices), (CONDITION_AXIS,))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Place every array of ``tree`` on all devices of ``mesh`` (a global array per leaf).

    Built from host data with :func:`jax.make_array_from_callback`, so that it also works when
    ``mesh`` spans several processes (each holds the same host data).
    """
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, jax.device_get(tree))


def shard_conditions(tree: Any, mesh: Mesh | None) -> Any:
    """Inside a jitted function: constrain the leading (condition) axis of ``tree`` to ``mesh``."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(CONDITION_AXIS))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)
