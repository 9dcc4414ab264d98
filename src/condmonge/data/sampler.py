"""Fixed-shape batch sampling on the device: pure ``jax.random`` index arithmetic."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from condmonge.data.prepare import CellPools

__all__ = ["Batch", "sample_batch", "sample_cells"]


class Batch(NamedTuple):
    """``k`` conditions with ``n`` source and ``n`` target cells each.

    Attributes:
      source: ``[k, n, d]`` control cells of each condition's cell type.
      target: ``[k, n, d]`` treated cells of each condition.
      condition: the drawn conditions: a pytree of arrays with leading axis ``k`` (the
        network's inputs, e.g. :class:`~condmonge.conditions.encoding.EncodedConditions`).
      condition_index: ``[k]`` which of the ``K`` pool conditions were drawn.
    """

    source: jnp.ndarray
    target: jnp.ndarray
    condition: Any
    condition_index: jnp.ndarray


def sample_batch(
    rng: jax.Array,
    pools: CellPools,
    conditions: Any,
    n_conditions: int,
    n_cells: int,
) -> Batch:
    """Draw ``n_conditions`` conditions and ``n_cells`` source and target cells of each.

    Conditions are distinct unless fewer than ``n_conditions`` exist; cells are drawn uniformly
    with replacement.

    Shapes depend only on ``n_conditions``, ``n_cells`` and ``d``: one compilation serves every
    condition.
    """
    rng_c, rng_cells = jax.random.split(rng)
    n_pool = pools.target_start.shape[0]
    index = jax.random.choice(rng_c, n_pool, (n_conditions,), replace=n_conditions > n_pool)
    return sample_cells(rng_cells, pools, conditions, index, n_cells)


def sample_cells(
    rng: jax.Array,
    pools: CellPools,
    conditions: Any,
    index: jnp.ndarray,
    n_cells: int,
) -> Batch:
    """Draw ``n_cells`` source and target cells (with replacement) for conditions ``index [k]``."""
    rng_s, rng_t = jax.random.split(rng)

    def draw(key, rows, start, count):
        offset = jax.random.randint(key, (index.shape[0], n_cells), 0, count[index][:, None])
        return pools.features[rows[start[index][:, None] + offset]]

    source = draw(rng_s, pools.source_rows, pools.source_start, pools.source_count)
    target = draw(rng_t, pools.target_rows, pools.target_start, pools.target_count)
    condition = jax.tree.map(lambda a: a[index], conditions)
    return Batch(source, target, condition, index)
