"""Fixed-shape batch sampling on the device: pure ``jax.random`` index arithmetic."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from condmonge.data.prepare import CellPools

__all__ = ["Batch", "auto_cells_per_condition", "distinct_offsets", "sample_batch", "sample_cells"]


def _primes_above(start: int, count: int) -> np.ndarray:
    """The first ``count`` primes above ``start`` (trial division: a few ms, once)."""
    found, candidate = [], start | 1
    while len(found) < count:
        if all(candidate % d for d in range(3, int(candidate**0.5) + 1, 2)):
            found.append(candidate)
        candidate += 2
    return np.asarray(found, np.int32)


#: Strides of :func:`distinct_offsets`: primes above any pool size, so ``p mod count`` is a unit
#: of the integers modulo ``count`` (``gcd(p, count) = 1``) for every pool.
_STRIDE_PRIMES = _primes_above(1 << 24, 64)


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
    distinct: bool = True,
) -> Batch:
    """Draw ``n_conditions`` conditions and ``n_cells`` source and target cells of each.

    Conditions are distinct unless fewer than ``n_conditions`` exist; cells are drawn as
    :func:`sample_cells` draws them (``distinct``).

    Shapes depend only on ``n_conditions``, ``n_cells`` and ``d``: one compilation serves every
    condition.
    """
    rng_c, rng_cells = jax.random.split(rng)
    n_pool = pools.target_start.shape[0]
    index = jax.random.choice(rng_c, n_pool, (n_conditions,), replace=n_conditions > n_pool)
    return sample_cells(rng_cells, pools, conditions, index, n_cells, distinct)


def distinct_offsets(rng: jax.Array, count: jnp.ndarray, n: int) -> jnp.ndarray:
    r"""``[k, n]`` offsets into pools of ``count [k]`` cells that repeat no cell they need not.

    Row ``i`` is the walk :math:`o_j = (b + a j) \bmod m` with :math:`m` = ``count[i]``, a
    random start :math:`b` and a random stride :math:`a = p \bmod m` for a prime :math:`p > m`,
    a unit modulo :math:`m`: the first :math:`m` steps visit every cell once. So ``n <= m``
    cells are distinct and larger draws use each cell :math:`\lfloor n/m \rfloor` or
    :math:`\lceil n/m \rceil` times. Each cell is equally likely at every position, but not
    every subset can be drawn: a draw is an arithmetic progression in pool order (cells one
    position apart differ by a unit modulo :math:`m`). (With
    replacement a draw of 256 from 90 cells repeats most of them, and the two halves of the
    split divergence then share cells, which breaks its independence.) Pools too large for
    int32 products (``m n >= 2^31``) are drawn with replacement, where repeats are rare.

    Args:
      rng: key.
      count: ``[k]`` pool sizes, each >= 1.
      n: cells per row.
    """
    rng_a, rng_b = jax.random.split(rng)
    primes = jnp.asarray(_STRIDE_PRIMES)
    count = count.astype(jnp.int32)
    stride = primes[jax.random.randint(rng_a, count.shape, 0, primes.shape[0])] % count
    start = jax.random.randint(rng_b, count.shape, 0, count)
    steps = jnp.arange(n, dtype=jnp.int32)
    walk = (start[:, None] + stride[:, None] * steps[None, :]) % count[:, None]
    fallback = jax.random.randint(rng_a, (count.shape[0], n), 0, count[:, None])
    fits = count.astype(jnp.float32) * n < 2.0**31
    return jnp.where(fits[:, None], walk, fallback)


def sample_cells(
    rng: jax.Array,
    pools: CellPools,
    conditions: Any,
    index: jnp.ndarray,
    n_cells: int,
    distinct: bool = True,
) -> Batch:
    """Draw ``n_cells`` source and target cells for conditions ``index [k]``.

    ``distinct``: each row's cells are distinct while its pool has enough of them
    (:func:`distinct_offsets`); otherwise uniform with replacement.
    """
    rng_s, rng_t = jax.random.split(rng)

    def draw(key, rows, start, count):
        if distinct:
            offset = distinct_offsets(key, count[index], n_cells)
        else:
            offset = jax.random.randint(key, (index.shape[0], n_cells), 0, count[index][:, None])
        return pools.features[rows[start[index][:, None] + offset]]

    source = draw(rng_s, pools.source_rows, pools.source_start, pools.source_count)
    target = draw(rng_t, pools.target_rows, pools.target_start, pools.target_count)
    condition = jax.tree.map(lambda a: a[index], conditions)
    return Batch(source, target, condition, index)


def auto_cells_per_condition(
    source_count: np.ndarray, target_count: np.ndarray, low: int = 32, high: int = 256
) -> int:
    """``train.cells_per_condition: auto``: a batch most training conditions can fill.

    The 25th percentile over conditions of ``min(source_count, target_count)``, rounded down
    to a multiple of 8 and clipped to ``[low, high]``: three conditions in four then give every
    step distinct cells (:func:`distinct_offsets`), and the split divergence's halves share
    none.

    Args:
      source_count, target_count: ``[K]`` control and treated cells of each training
        condition (a :class:`~condmonge.data.prepare.CellPools`' counts).
      low, high: the bounds.
    """
    fewer = np.minimum(np.asarray(source_count), np.asarray(target_count))
    if fewer.size == 0:
        return high
    quarter = int(np.percentile(fewer, 25, method="lower")) // 8 * 8
    return int(np.clip(quarter, low, high))
