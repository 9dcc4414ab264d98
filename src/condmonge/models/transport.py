r"""Push cells through a trained map for many conditions at once.

Every call of the network here has one of a few fixed shapes: the condition axis is padded to a
power of two up to :data:`CONDITION_BLOCK` (more conditions are cut into blocks of that size)
and the cell axis to a power of two up to as many cells as :data:`ROWS_PER_CALL` allows. One
jitted, vmapped apply is therefore traced once for 200 conditions as for 64, and memory is
bounded by ``ROWS_PER_CALL`` cells times the network's width, whatever the query.

With a PCA the map acts on the latent coordinates and the latent displacement is added to each
cell in gene space (see :mod:`condmonge.data.pca`):

.. math::
    \hat y_c = x + (T(z, c) - z)\,V^\top, \qquad z = (x - m)\,V.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from condmonge.conditions.encoding import EncodedConditions
from condmonge.data.pca import Projection

__all__ = ["CONDITION_BLOCK", "ROWS_PER_CALL", "BatchedTransport"]

#: Largest number of conditions in one call of the network.
CONDITION_BLOCK = 64
#: Conditions x cells in one call: bounds the memory of the activations.
ROWS_PER_CALL = 1 << 16


def _bucket(n: int, cap: int) -> int:
    """The power of two ``>= n`` (at least 1), at most ``cap``."""
    return min(cap, 1 << max(n - 1, 0).bit_length())


class BatchedTransport:
    """``T(x, c)`` for ``k`` conditions and ``n`` cells: one jitted, vmapped apply.

    Args:
      module: the network, ``module.apply(variables, x [n, p], condition) -> [n, p]`` for one
        condition (arrays without the leading ``k`` axis).
      params, constants: its variables.
      projection: the PCA the map was trained in, or ``None`` (the map acts on ``x``).

    Attributes:
      n_traces: how many times the apply has been traced (compiled) so far.
    """

    def __init__(
        self,
        module: nn.Module,
        params: Any,
        constants: Any,
        projection: Projection | None = None,
    ):
        self.variables = {"params": params, "constants": constants}
        self.projection = projection
        self.n_traces = 0

        def apply(variables, x, conditions):
            self.n_traces += 1  # Python side effect: runs at trace time only
            return jax.vmap(lambda c: module.apply(variables, x, c))(conditions)

        self._apply = jax.jit(apply)

    def __call__(self, x: np.ndarray, conditions: EncodedConditions) -> np.ndarray:
        """Predicted cells ``[k, n, d]`` for cells ``x [n, d]`` under ``k`` conditions.

        Args:
          x: ``[n, d]`` cells in the model's feature order (genes, or an ``obsm`` representation).
          conditions: ``k`` encoded conditions (leading axis ``k``).
        """
        x = np.asarray(x, np.float32)
        if self.projection is None:
            return self._latent(x, conditions)
        z = self.projection.encode(x)
        mapped = self._latent(z, conditions)
        return np.stack([self.projection.decode_displacement(x, z, block) for block in mapped])

    def _latent(self, z: np.ndarray, conditions: EncodedConditions) -> np.ndarray:
        """``[k, n, p]``: the network on ``z [n, p]``, in fixed-shape blocks."""
        k, n = conditions.mask.shape[0], z.shape[0]
        kb = _bucket(k, CONDITION_BLOCK)
        nb = _bucket(n, max(ROWS_PER_CALL // kb, 1))
        out = np.empty((k, n, z.shape[1]), np.float32)
        for c0 in range(0, k, kb):
            # Pad the last block by repeating its first condition: same shape, sliced off below.
            index = np.arange(c0, c0 + kb)
            block = conditions.take(np.where(index < k, index, c0))
            kc = min(kb, k - c0)
            for r0 in range(0, n, nb):
                rows = z[r0 : r0 + nb]
                padded = np.zeros((nb, z.shape[1]), np.float32)
                padded[: len(rows)] = rows
                mapped = self._apply(self.variables, padded, block)
                out[c0 : c0 + kc, r0 : r0 + len(rows)] = np.asarray(mapped)[:kc, : len(rows)]
        return out
