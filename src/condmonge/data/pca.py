r"""A linear latent space for training: PCA fitted on training cells only.

Training in the first ``p`` principal components removes noise dimensions that a map fitted on a
few hundred cells per condition would otherwise memorise. Predictions are returned in gene space by
adding the predicted *latent displacement* to each control cell,

.. math::
    \hat y = x + (T(z, c) - z)\,V^\top, \qquad z = (x - m)\,V,

so the variation of a cell outside the latent space is kept rather than discarded.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from condmonge.errors import DataError

__all__ = ["Projection", "fit_pca", "projection_from_moments"]


class Projection(NamedTuple):
    """``mean [d]`` and orthonormal ``components [d, p]`` of a PCA."""

    mean: np.ndarray
    components: np.ndarray

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Latent coordinates ``[n, p]`` of cells ``x [n, d]``."""
        return ((x - self.mean) @ self.components).astype(np.float32)

    def decode_displacement(self, x: np.ndarray, z: np.ndarray, mapped: np.ndarray) -> np.ndarray:
        """Gene-space prediction ``x + (mapped - z) V^T`` for cells ``x [n, d]``."""
        return (x + (mapped - z) @ self.components.T).astype(np.float32)


def fit_pca(x: np.ndarray, n_components: int) -> Projection:
    """PCA of ``x [n, d]`` through the eigendecomposition of its ``[d, d]`` covariance.

    Memory is ``O(d^2)`` beyond the data, whatever ``n``; signs are fixed so that the largest
    loading of every component is positive (deterministic output).
    """
    n, d = x.shape
    if not 0 < n_components <= min(n, d):
        raise DataError(
            f"data.n_pca={n_components} must be between 1 and min(cells, features)={min(n, d)}"
        )
    mean = x.mean(axis=0, dtype=np.float64)
    centred = x - mean
    cov = centred.T @ centred / max(n - 1, 1)
    return projection_from_moments(mean, cov, n_components)


def projection_from_moments(mean: np.ndarray, cov: np.ndarray, n_components: int) -> Projection:
    """Top ``n_components`` eigenvectors of the covariance ``cov [d, d]``, signs fixed.

    Shared by :func:`fit_pca` and the streaming PCA of :mod:`condmonge.data.backed`, which
    accumulate the same moments in memory or chunk by chunk.
    """
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:n_components]
    components = vectors[:, order]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(n_components)])
    components = components * np.where(signs == 0, 1.0, signs)
    return Projection(mean.astype(np.float32), components.astype(np.float32))
