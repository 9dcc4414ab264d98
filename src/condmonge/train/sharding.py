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

import os
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
    "use_cpu_cores",
]

CONDITION_AXIS = "conditions"
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def initialize_distributed(cpu_collectives: str | None = "gloo", **kwargs: Any) -> None:
    """Join a multi-host JAX job (``jax.distributed.initialize(**kwargs)``).

    Without arguments JAX reads the cluster from the environment (SLURM, Open MPI, Kubernetes,
    Cloud TPU); otherwise pass ``coordinator_address``, ``num_processes`` and ``process_id``.
    ``cpu_collectives``: the cross-process collectives of CPU devices (``"gloo"``; ``None``
    leaves JAX's setting), so that CPU-only processes can train together too. Call it once per
    process, before anything else touches JAX.
    """
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(**kwargs)


def condition_mesh(
    conditions_per_step: int, devices: Any = None, required: bool | None = True
) -> Mesh | None:
    """A 1-D mesh over ``devices`` (default: all) for sharding the condition axis.

    ``required=True`` (``train.data_parallel: true``): every device; returns ``None``
    (single-device training) with a one-time warning when only one device exists, and raises
    :class:`ConfigError` when ``conditions_per_step`` is not a multiple of the device count.
    ``required=None`` (the default ``train.data_parallel``): silently the largest number of
    devices that divides ``conditions_per_step`` (``None`` when that is one), within this
    process only, so that several CPU devices (:func:`use_cpu_cores`) are used without
    configuration.
    """
    devices = list(jax.devices() if devices is None else devices)
    if required is None:
        local = [d for d in devices if d.process_index == jax.process_index()]
        count = max(m for m in range(1, len(local) + 1) if conditions_per_step % m == 0)
        return Mesh(np.asarray(local[:count]), (CONDITION_AXIS,)) if count > 1 else None
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


def use_cpu_cores(count: int | None = None) -> int:
    """Expose ``count`` CPU devices to JAX (default: the cores this process may use).

    XLA runs most of a training step on one core; with one CPU device per core the default
    ``train.data_parallel`` splits each step's conditions over them (1.9x the steps/s on 2
    cores, same result up to float reassociation). Sets
    ``XLA_FLAGS=--xla_force_host_platform_device_count=count`` and so only takes effect before
    JAX has started its backend (before the first array is created); an explicit device count
    already in ``XLA_FLAGS`` is left alone. The command line calls it first. Returns the count
    requested (0 when left alone).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return 0
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = max(int(count or 1), 1)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    return count


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
