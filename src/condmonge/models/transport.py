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

An ensemble of ``M`` members of the same architecture (and the same PCA, z-scoring and
encoder) is applied by the same call with the members' parameters stacked on a leading axis:
one jitted apply vmapped over members and conditions, giving ``[M, k, n, d]``;
:func:`combine_members` turns that into one prediction and :func:`member_spread` into the
per-condition uncertainty.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from condmonge.conditions.encoding import EncodedConditions
from condmonge.data.anndata_io import Standardizer
from condmonge.data.pca import Projection
from condmonge.models.networks import ConditionEmbedding

__all__ = [
    "CONDITION_BLOCK",
    "ROWS_PER_CALL",
    "BatchedTransport",
    "combine_members",
    "condition_embeddings",
    "member_spread",
    "stack_members",
]

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
      standardizer: the z-scoring applied before the map and undone after it, or ``None``.
      n_members: ``None`` for one map; ``M`` when ``params`` and ``constants`` are those of
        ``M`` members stacked on a leading axis (see :func:`stack_members`): every call then
        returns ``[M, k, n, d]``.

    Attributes:
      n_traces: how many times the apply has been traced (compiled) so far.
    """

    def __init__(
        self,
        module: nn.Module,
        params: Any,
        constants: Any,
        projection: Projection | None = None,
        standardizer: Standardizer | None = None,
        n_members: int | None = None,
    ):
        self.variables = {"params": params, "constants": constants}
        self.projection = projection
        self.standardizer = standardizer
        self.n_members = n_members
        self.n_traces = 0

        def one_member(variables, x, conditions):
            return jax.vmap(lambda c: module.apply(variables, x, c))(conditions)

        def apply(variables, x, conditions):
            self.n_traces += 1  # Python side effect: runs at trace time only
            if n_members is None:
                return one_member(variables, x, conditions)
            return jax.vmap(one_member, in_axes=(0, None, None))(variables, x, conditions)

        self._apply = jax.jit(apply)

    def __call__(self, x: np.ndarray, conditions: EncodedConditions) -> np.ndarray:
        """Predicted cells ``[k, n, d]`` (``[M, k, n, d]`` for members) for ``x [n, d]``.

        Args:
          x: ``[n, d]`` cells in the model's feature order (genes, or an ``obsm`` representation).
          conditions: ``k`` encoded conditions (leading axis ``k``).
        """
        x = np.asarray(x, np.float32)
        if self.standardizer is not None:  # the map acts on z-scored features
            return self.standardizer.decode(
                self._unstandardized(self.standardizer.encode(x), conditions)
            )
        return self._unstandardized(x, conditions)

    def _unstandardized(self, x: np.ndarray, conditions: EncodedConditions) -> np.ndarray:
        if self.projection is None:
            return self._latent(x, conditions)
        z = self.projection.encode(x)
        mapped = self._latent(z, conditions)
        blocks = mapped.reshape(-1, *mapped.shape[-2:])  # members x conditions, one by one
        decoded = np.stack([self.projection.decode_displacement(x, z, block) for block in blocks])
        return decoded.reshape(*mapped.shape[:-1], x.shape[1])

    def _latent(self, z: np.ndarray, conditions: EncodedConditions) -> np.ndarray:
        """``[k, n, p]`` (``[M, k, n, p]``): the network on ``z [n, p]``, in fixed-shape blocks."""
        k, n = conditions.mask.shape[0], z.shape[0]
        lead = () if self.n_members is None else (self.n_members,)
        kb = _bucket(k, CONDITION_BLOCK)
        nb = _bucket(n, max(ROWS_PER_CALL // (kb * (self.n_members or 1)), 1))
        out = np.empty((*lead, k, n, z.shape[1]), np.float32)
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
                out[..., c0 : c0 + kc, r0 : r0 + len(rows), :] = np.asarray(mapped)[
                    ..., :kc, : len(rows), :
                ]
        return out


def stack_members(trees: Sequence[Any]) -> Any:
    """The members' variables (same structure) stacked leaf by leaf on a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def condition_embeddings(
    module: nn.Module, params: Sequence[Any], conditions: EncodedConditions
) -> np.ndarray:
    r"""The network's condition embedding :math:`h_m(c)` of every member: ``[M, k, e]``.

    Args:
      module: the members' network (a ``ConditionalResidualMap``; its ``condition`` branch).
      params: ``M`` members' parameters.
      conditions: ``k`` encoded conditions (leading axis ``k``).
    """
    branch = ConditionEmbedding(
        module.condition_dim, module.perturbation_hidden_dim, module.pooling
    )
    stacked = stack_members([p["condition"] for p in params])
    return np.asarray(_embedder(branch)(stacked, conditions), np.float32)


@functools.lru_cache(maxsize=8)
def _embedder(branch: ConditionEmbedding):
    """Jitted ``(stacked params, conditions) -> [M, k, e]``, one per branch (not per call)."""

    def embed(member_params, conditions):
        return jax.vmap(lambda c: branch.apply({"params": member_params}, c))(conditions)

    return jax.jit(jax.vmap(embed, in_axes=(0, None)))


def combine_members(mapped: np.ndarray, how: str, draws: np.ndarray | None = None) -> np.ndarray:
    r"""One prediction ``[k, n, d]`` from the members' ``mapped [M, k, n, d]``.

    ``"mean"`` averages the displacements, :math:`x + \frac1M \sum_m (T_m(x) - x)`, which
    equals the mean of the members' outputs; ``"mixture"`` takes each cell from one member,
    ``draws [k, n]`` (member indices, drawn by the caller), so the prediction is a sample of
    the mixture :math:`\frac1M \sum_m T_{m\#}\mu`.

    Args:
      mapped: ``[M, k, n, d]`` the members' predicted cells.
      how: ``"mean"`` or ``"mixture"``.
      draws: ``[k, n]`` integers in ``[0, M)``; required for ``"mixture"``.
    """
    if how == "mean":
        return mapped.mean(axis=0, dtype=np.float32)
    k, n = mapped.shape[1:3]
    return mapped[draws, np.arange(k)[:, None], np.arange(n)[None, :]]


def member_spread(mapped: np.ndarray, x: np.ndarray, *, relative: bool = True) -> np.ndarray:
    r"""Per-condition disagreement of the members, relative to the size of the effect: ``[k]``.

    With displacements :math:`\delta_{m,i} = T_m(x_i) - x_i` and their mean over members
    :math:`\bar\delta_i`,

    .. math::
        u = \frac{\frac1n \sum_i \sqrt{\frac1M \sum_m \|\delta_{m,i} - \bar\delta_i\|^2}}
                 {\frac1n \sum_i \|\bar\delta_i\|},

    the mean over cells of the per-cell standard deviation of the member displacements (the
    root of its trace), divided by the mean norm of the ensemble displacement. 0 when the
    members agree; about 1 when they disagree as much as the predicted effect is large. With
    ``relative=False``, the numerator alone (in feature units).

    Args:
      mapped: ``[M, k, n, d]`` the members' predicted cells (in the output space).
      x: ``[n, d]`` the source cells.
      relative: divide by the mean norm of the ensemble displacement.
    """
    delta = mapped - x[None, None]
    mean = delta.mean(axis=0)
    spread = np.sqrt(((delta - mean[None]) ** 2).sum(axis=-1).mean(axis=0))  # [k, n]
    if not relative:
        return spread.mean(axis=-1).astype(np.float64)
    size = np.linalg.norm(mean, axis=-1).mean(axis=-1)  # [k]
    return (spread.mean(axis=-1) / np.maximum(size, np.finfo(np.float32).tiny)).astype(np.float64)
