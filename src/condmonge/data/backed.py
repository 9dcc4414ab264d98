r"""Training from an ``.h5ad`` larger than memory: streaming PCA over a backed AnnData.

Open the file with ``anndata.read_h5ad(path, backed="r")`` and fit with ``data.n_pca`` set. Only
``obs`` is in memory; ``X`` (dense or CSR on disk) is read in row chunks:

1. the PCA of the training cells. Up to :data:`~condmonge.data.pca.EXACT_MAX_DIM` genes:
   moments :math:`\sum_i x_i` and :math:`\sum_i x_i x_i^\top` in float64 (dense chunks shifted
   by the first chunk's mean for numerical stability; sparse chunks multiplied as sparse
   matrices), then the eigendecomposition of the ``[d, d]`` covariance, the same PCA that
   :func:`condmonge.data.pca.fit_pca` computes in memory, exactly. With more genes: the
   randomized subspace iteration of :func:`condmonge.data.pca.streaming_axes`, one pass over
   the chunks per iteration and ``O(d p)`` memory, never ``[d, d]``;
2. projection: every cell's latent coordinates ``[N, p]`` in float32.

Peak memory is ``O(chunk * d + min(d, 2048)^2 + N * p)``: for 1M cells x 2,000 genes and
``p = 50`` about 0.2 GB of latent cells plus a 64 MB chunk, whatever the size of ``X``.
Predictions are returned in gene space for control cells loaded in memory
(``adata[rows].to_memory()``).
"""

from __future__ import annotations

from collections.abc import Iterator

import anndata as ad
import numpy as np
import scipy.sparse as sp

from condmonge.data.pca import (
    EXACT_MAX_DIM,
    Projection,
    check_n_components,
    projection_from_moments,
    streaming_axes,
)
from condmonge.errors import DataError

__all__ = ["fit_backed_projection", "iter_row_chunks", "obs_only"]

DEFAULT_CHUNK = 8192


def obs_only(adata: ad.AnnData) -> ad.AnnData:
    """An in-memory AnnData with the same ``obs`` and ``var`` and no ``X`` (for validation).

    Args:
      adata: backed or in-memory AnnData.
    """
    return ad.AnnData(obs=adata.obs, var=adata.var)


def iter_row_chunks(
    adata: ad.AnnData, chunk: int = DEFAULT_CHUNK, dense: bool = True
) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(start, rows)`` of ``adata.X`` (backed or not), ``chunk`` rows at a time.

    Rows are dense float32, or with ``dense=False`` CSR when ``X`` is sparse.

    Args:
      adata: ``[N, d]`` AnnData, backed or not.
      chunk: rows per block.
      dense: densify sparse blocks.
    """
    x = adata.X
    if x is None:
        raise DataError("adata.X is empty; a backed AnnData must store expression in X")
    for start in range(0, adata.n_obs, chunk):
        block = x[start : min(start + chunk, adata.n_obs)]
        if sp.issparse(block):
            yield start, block.toarray().astype(np.float32) if dense else sp.csr_matrix(block)
        else:
            yield start, np.asarray(block, dtype=np.float32)


def _check_finite(block, start: int) -> None:
    values = block.data if sp.issparse(block) else block
    if np.isfinite(values).all():
        return
    rows = (
        np.flatnonzero(~np.isfinite(block.toarray()).all(axis=1))
        if sp.issparse(block)
        else np.flatnonzero(~np.isfinite(block).all(axis=1))
    )
    raise DataError(
        f"adata.X contains NaN or inf (first at row {start + rows[0]}); remove or impute those "
        "cells before training"
    )


def fit_backed_projection(
    adata: ad.AnnData,
    n_components: int,
    fit_rows: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[Projection, np.ndarray]:
    """Streaming PCA on the rows ``fit_rows``, then latent coordinates of all rows.

    With at most :data:`~condmonge.data.pca.EXACT_MAX_DIM` features the exact moments are
    accumulated (:func:`_moments`); with more, the randomized solver of
    :func:`condmonge.data.pca.streaming_axes` makes one pass over the chunks per iteration.

    Args:
      adata: ``[N, d]`` AnnData, backed (``backed="r"``) or in memory.
      n_components: latent dimension ``p``.
      fit_rows: boolean ``[N]``, the training cells the PCA is fitted on.
      chunk: rows read at a time.

    Returns:
      The :class:`Projection` (``components [d, p]``) and ``[N, p]`` float32 latent features.

    Raises:
      DataError: NaN or inf in ``X`` (naming the first bad row) or a bad ``n_components``.
    """
    n_obs, d = adata.shape
    n_fit = int(np.count_nonzero(fit_rows))
    check_n_components(n_components, n_fit, d)

    def fit_chunks() -> Iterator[np.ndarray | sp.csr_matrix]:
        for start, block in iter_row_chunks(adata, chunk, dense=False):
            _check_finite(block, start)
            block = block[fit_rows[start : start + block.shape[0]]]
            if block.shape[0]:
                yield block

    if d <= EXACT_MAX_DIM:
        mean, cov = _moments(fit_chunks(), n_fit, d)
        projection = projection_from_moments(mean, cov, n_components)
    else:
        result = streaming_axes(fit_chunks, (n_fit, d), n_components)
        projection = Projection(
            result.mean.astype(np.float32), result.components.astype(np.float32)
        )
    latent = np.empty((n_obs, n_components), np.float32)
    offset = projection.mean @ projection.components
    for start, block in iter_row_chunks(adata, chunk, dense=False):
        latent[start : start + block.shape[0]] = np.asarray(block @ projection.components) - offset
    return projection, latent


def _moments(
    blocks: Iterator[np.ndarray | sp.csr_matrix], n_fit: int, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and covariance ``[d, d]`` (float64) of the rows of ``blocks``.

    Dense chunks are shifted by the first chunk's mean before their float32 Gram matrix is
    added; sparse chunks keep their sparsity (a float64 sparse Gram product, ``O(nnz_row^2)`` per
    cell, several times cheaper than dense at 5% density) and the mean is removed from the
    float64 moments at the end.
    """
    shift: np.ndarray | None = None
    total = np.zeros(d, np.float64)
    gram = np.zeros((d, d), np.float64)
    for block in blocks:
        if sp.issparse(block):
            block = block.astype(np.float64)
            total += np.asarray(block.sum(axis=0)).ravel()
            gram += (block.T @ block).toarray()
            continue
        if shift is None:
            shift = block.mean(axis=0, dtype=np.float64).astype(np.float32)
        block -= shift
        total += block.sum(axis=0, dtype=np.float64)
        gram += block.T @ block  # float32 GEMM per chunk, float64 accumulation across chunks
    if shift is None:
        shift = np.zeros(d, np.float32)
    centred_mean = total / n_fit
    cov = (gram - n_fit * np.outer(centred_mean, centred_mean)) / max(n_fit - 1, 1)
    return shift + centred_mean, cov
