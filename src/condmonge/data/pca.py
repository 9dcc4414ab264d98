r"""The one PCA of condmonge: exact when small, randomized and streaming when large.

Training in the first ``p`` principal components removes noise dimensions that a map fitted on a
few hundred cells per condition would otherwise memorise. Predictions are returned in gene space by
adding the predicted *latent displacement* to each control cell,

.. math::
    \hat y = x + (T(z, c) - z)\,V^\top, \qquad z = (x - m)\,V,

so the variation of a cell outside the latent space is kept rather than discarded.

Solvers (:func:`principal_axes`), chosen by ``solver="auto"`` from the shape ``[n, d]``:

- ``"covariance"`` (``d <= n`` and ``d <=`` :data:`EXACT_MAX_DIM`): eigendecomposition of the
  ``[d, d]`` covariance, exact;
- ``"gram"`` (``n < d`` and ``n <=`` :data:`EXACT_MAX_DIM`): eigendecomposition of the
  ``[n, n]`` Gram matrix of the centred cells, exact and ``O(n^2 d)`` (7,000 genes x 2,000
  cells in seconds);
- ``"svd"`` (never chosen by ``"auto"``): thin SVD of the centred data, exact, slower than
  ``"gram"`` but accurate down to the smallest singular values (used for the small tables of
  :mod:`condmonge.conditions`, where every axis may be used);
- ``"randomized"`` (both dimensions large): block subspace iteration on the covariance
  operator with Rayleigh-Ritz (Halko, Martinsson & Tropp 2011, Algorithm 4.4 on
  :math:`X_c^\top X_c`), ``p + oversample`` columns, one pass over the rows per iteration
  (dense or CSR chunks, never the ``[d, d]`` matrix), stopped when every wanted Ritz pair has
  :math:`\|C v_i - \theta_i v_i\| \le \mathrm{tol}\,\theta_1`. Component ``i`` converges like
  :math:`(\lambda_{b+1}/\lambda_i)^t`: the leading components (clear spectral gap) reach float32
  tolerance in a few iterations; components inside a flat noise spectrum stop at
  ``max_iter`` with a residual that is reported (``PCAResult.residual``).

Every solver returns the same sign convention (:func:`fix_signs`: the largest loading of each
component is positive), so results are deterministic and solvers agree.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp
from rich.console import Console
from rich.progress import Progress

from condmonge.errors import DataError

__all__ = [
    "AUTO_MAX_COMPONENTS",
    "AUTO_MIN_FEATURES",
    "AUTO_SHARE",
    "AUTO_SPECTRUM",
    "EXACT_MAX_DIM",
    "auto_components",
    "fit_auto_pca",
    "PCAResult",
    "Projection",
    "check_n_components",
    "fit_pca",
    "fix_signs",
    "pca_scores",
    "principal_axes",
    "projection_from_moments",
    "streaming_axes",
]

#: Largest ``min(n, d)`` solved exactly by ``solver="auto"`` (an exact solve costs
#: ``O(min(n, d)^2 max(n, d))``, about the cost of 15 randomized iterations at this size).
EXACT_MAX_DIM = 2048

#: Threads for the sparse products of the randomized solver (at most 4).
_WORKERS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))

Solver = Literal["auto", "covariance", "gram", "svd", "randomized"]
#: Row blocks of a data matrix, one pass per call: dense ``[r, d]`` or CSR ``[r, d]`` arrays.
Chunks = Callable[[], Iterable[np.ndarray | sp.csr_matrix]]


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


class PCAResult(NamedTuple):
    r"""Float64 output of :func:`principal_axes`.

    Attributes:
      mean: ``[d]`` column means.
      components: ``[d, p]`` orthonormal principal axes, signs fixed by :func:`fix_signs`.
      variances: ``[p]`` variances along them (eigenvalues of the covariance, ``n - 1``).
      residual: largest :math:`\|C v_i - \lambda_i v_i\| / \lambda_1` (0 for exact solvers).
      iterations: passes of the randomized solver (0 for exact solvers).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual: float = 0.0
    iterations: int = 0


def fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each column of ``components [d, p]`` so that its largest-magnitude entry is positive.

    Args:
      components: ``[d, p]`` axes (columns).

    Returns:
      ``[d, p]`` the same axes, deterministic whatever solver produced them.
    """
    p = components.shape[1]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(p)])
    return components * np.where(signs == 0, 1.0, signs)


def check_n_components(n_components: int, n: int, d: int, what: str = "data.n_pca") -> None:
    """Raise :class:`DataError` unless ``1 <= n_components <= min(n, d)``.

    Args:
      n_components: the requested ``p``.
      n, d: the data's shape.
      what: how the message names the setting.
    """
    if not 0 < n_components <= min(n, d):
        raise DataError(
            f"{what}={n_components} must be between 1 and min(cells, features)={min(n, d)}"
        )


def projection_from_moments(mean: np.ndarray, cov: np.ndarray, n_components: int) -> Projection:
    """Top ``n_components`` eigenvectors of the covariance ``cov [d, d]``, signs fixed.

    Args:
      mean: ``[d]`` column means.
      cov: ``[d, d]`` covariance matrix (symmetric).
      n_components: number of axes ``p``.

    Returns:
      float32 :class:`Projection` with ``components [d, p]``.
    """
    axes, _ = _top_eigenvectors(cov, n_components)
    return Projection(mean.astype(np.float32), axes.astype(np.float32))


def _top_eigenvectors(sym: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``k`` eigenvectors ``[m, k]`` (signs fixed) and eigenvalues of ``sym [m, m]``."""
    values, vectors = np.linalg.eigh(sym)
    order = np.argsort(values)[::-1][:k]
    return fix_signs(vectors[:, order]), values[order]


def _dense64(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    return x.toarray().astype(np.float64) if sp.issparse(x) else np.asarray(x, np.float64)


def principal_axes(
    x: np.ndarray | sp.spmatrix,
    n_components: int,
    *,
    solver: Solver = "auto",
    seed: int = 0,
    progress: bool = True,
) -> PCAResult:
    """Principal axes of the rows of ``x`` (see the module docstring for the solvers).

    Args:
      x: ``[n, d]`` data, dense or sparse (sparse stays sparse for ``"randomized"``).
      n_components: number of axes ``p``, ``1 <= p <= min(n, d)``.
      solver: ``"auto"``, ``"covariance"``, ``"gram"``, ``"svd"`` or ``"randomized"``.
      seed: seed of the randomized solver's starting block.
      progress: show a progress bar (on a terminal only) for the randomized solver.

    Returns:
      :class:`PCAResult` with ``components [d, p]``.
    """
    n, d = x.shape
    check_n_components(n_components, n, d)
    if solver == "auto":
        solver = "randomized" if min(n, d) > EXACT_MAX_DIM else "covariance" if d <= n else "gram"
    if solver == "randomized":
        return streaming_axes(_row_chunks(x), (n, d), n_components, seed=seed, progress=progress)
    dense = _dense64(x)
    mean = dense.mean(axis=0)
    centred = dense - mean
    if solver == "covariance":
        cov = centred.T @ centred / max(n - 1, 1)
        axes, variances = _top_eigenvectors(cov, n_components)
        return PCAResult(mean, axes, variances)
    if solver == "gram":
        # X_c^T u_i / |X_c^T u_i| are the axes for the eigenvectors u_i of X_c X_c^T.
        u, values = _top_eigenvectors(centred @ centred.T, n_components)
        axes = centred.T @ u
        axes /= np.maximum(np.linalg.norm(axes, axis=0), 1e-300)
        return PCAResult(mean, fix_signs(axes), values / max(n - 1, 1))
    if solver != "svd":
        raise DataError(
            f"unknown PCA solver '{solver}'; use auto, covariance, gram, svd or randomized"
        )
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return PCAResult(mean, fix_signs(vt[:n_components].T), s[:n_components] ** 2 / max(n - 1, 1))


def fit_pca(
    x: np.ndarray | sp.spmatrix, n_components: int, *, solver: Solver = "auto", seed: int = 0
) -> Projection:
    """PCA of ``x [n, d]`` as a float32 :class:`Projection` (see :func:`principal_axes`).

    Args:
      x: ``[n, d]`` training cells, dense or sparse.
      n_components: latent dimension ``p``.
      solver: see :func:`principal_axes`.
      seed: seed of the randomized solver.

    Returns:
      :class:`Projection` with ``mean [d]`` and ``components [d, p]``.
    """
    result = principal_axes(x, n_components, solver=solver, seed=seed)
    return Projection(result.mean.astype(np.float32), result.components.astype(np.float32))


#: ``data.n_pca: auto`` projects inputs with more features than this (protein panels and other
#: low-dimensional inputs stay as they are).
AUTO_MIN_FEATURES = 200
#: ``auto``: the spectrum the explained variance is measured on, the share to reach, the cap.
AUTO_SPECTRUM, AUTO_SHARE, AUTO_MAX_COMPONENTS = 100, 0.9, 50


def auto_components(
    variances: np.ndarray, share: float = AUTO_SHARE, cap: int = AUTO_MAX_COMPONENTS
) -> int:
    r"""The smallest ``k`` whose components explain ``share`` of the variance in ``variances``.

    .. math::
        k = \min\Big(\mathrm{cap},\ \min\{k : \textstyle\sum_{i \le k} \lambda_i \ge
        \mathrm{share} \sum_i \lambda_i\}\Big)

    Args:
      variances: ``[q]`` leading eigenvalues, decreasing (the top-:data:`AUTO_SPECTRUM`).
      share: the share of their sum to reach.
      cap: the largest ``k``.
    """
    cumulative = np.cumsum(np.asarray(variances, np.float64))
    if cumulative.size == 0 or cumulative[-1] <= 0:
        return 1
    k = int(np.searchsorted(cumulative, share * cumulative[-1]) + 1)
    return max(1, min(k, cap, cumulative.size))


def fit_auto_pca(x: np.ndarray | sp.spmatrix, *, seed: int = 0) -> Projection:
    """``data.n_pca: auto``: a PCA of ``x [n, d]`` sized by :func:`auto_components`.

    The rule: fit the top :data:`AUTO_SPECTRUM` components (fewer when ``min(n, d)`` is
    smaller) and keep the smallest number that explains :data:`AUTO_SHARE` of *their* variance,
    at most :data:`AUTO_MAX_COMPONENTS`.

    Args:
      x: ``[n, d]`` training cells, dense or sparse.
      seed: seed of the randomized solver.
    """
    q = min(AUTO_SPECTRUM, *x.shape)
    result = principal_axes(x, q, seed=seed)
    k = auto_components(result.variances)
    return Projection(result.mean.astype(np.float32), result.components[:, :k].astype(np.float32))


def pca_scores(x: np.ndarray, n_components: int) -> np.ndarray:
    """Coordinates ``[n, p]`` (float64) of the rows of ``x [n, d]`` on their own principal axes.

    For the small tables of :mod:`condmonge.conditions` (drugs x features): thin SVD when
    ``n < d``, so that axes beyond the rank are those of the SVD.

    Args:
      x: ``[n, d]`` rows.
      n_components: number of axes ``p``.
    """
    n, d = np.shape(x)
    solver = "svd" if n < d else "auto"
    result = principal_axes(np.asarray(x, np.float64), n_components, solver=solver)
    return (np.asarray(x, np.float64) - result.mean) @ result.components


def _row_chunks(x: np.ndarray | sp.spmatrix, chunk: int = 4096) -> Chunks:
    x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)

    def chunks():
        for start in range(0, x.shape[0], chunk):
            yield x[start : start + chunk]

    return chunks


def _column_mean(chunks: Chunks, n: int, d: int) -> np.ndarray:
    total = np.zeros(d, np.float64)
    for block in chunks():
        total += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
    return total / n


def _block_product(block, q32: np.ndarray, mean32: np.ndarray, mean_q: np.ndarray):
    """``(B_c^T B_c q, column sums of B_c q)`` of one row block, ``B_c`` the centred block."""
    if sp.issparse(block):
        y = np.asarray(block @ q32) - mean_q  # centred, so no cancellation
        return np.asarray(block.T @ y), y.sum(axis=0, dtype=np.float64)
    centred = np.asarray(block, np.float32) - mean32
    return centred.T @ (centred @ q32), None


def _covariance_times(chunks: Chunks, mean: np.ndarray, n: int, q: np.ndarray) -> np.ndarray:
    """``C q`` for the covariance ``C`` of the rows and ``q [d, b]``: one pass over the rows.

    Dense blocks are centred before their float32 products (BLAS uses every core); sparse
    blocks stay sparse, are multiplied on :data:`_WORKERS` threads (scipy's sparse products
    release the GIL) and have the mean taken out of ``B q`` and, at the end, of ``B^T y``.
    Partial sums are added in block order, so the result does not depend on the threads.
    """
    q32 = q.astype(np.float32)
    mean32 = mean.astype(np.float32)
    mean_q = mean32 @ q32
    out = np.zeros(q.shape, np.float64)
    column_sums = np.zeros(q.shape[1], np.float64)

    def add(result) -> None:
        nonlocal column_sums
        product, sums = result
        out[...] += product
        if sums is not None:
            column_sums += sums

    with ThreadPoolExecutor(_WORKERS) as pool:
        pending: deque = deque()
        for block in chunks():
            if not sp.issparse(block):
                add(_block_product(block, q32, mean32, mean_q))
                continue
            pending.append(pool.submit(_block_product, block, q32, mean32, mean_q))
            if len(pending) > 2 * _WORKERS:  # bounded: at most a few blocks in memory
                add(pending.popleft().result())
        while pending:
            add(pending.popleft().result())
    out -= np.outer(mean, column_sums)
    return out / max(n - 1, 1)


def streaming_axes(
    chunks: Chunks,
    shape: tuple[int, int],
    n_components: int,
    *,
    tol: float = 1e-6,
    max_iter: int = 12,
    seed: int = 0,
    progress: bool = True,
) -> PCAResult:
    r"""Randomized block subspace iteration over row chunks (in memory or backed).

    Args:
      chunks: ``chunks()`` yields the ``n`` rows once, as dense or CSR ``[r, d]`` blocks.
      shape: ``(n, d)`` of the data.
      n_components: number of axes ``p``; the iterated block has ``p + max(10, p // 2)``
        columns (oversampling, as in Halko et al.).
      tol: stop when every wanted Ritz pair has residual at most ``tol`` times the top variance.
      max_iter: at most this many passes after the one that computes the mean.
      seed: seed of the Gaussian starting block.
      progress: a rich progress bar (shown on a terminal only).

    Returns:
      :class:`PCAResult` with ``components [d, p]``, the residual reached and the passes made.
    """
    n, d = shape
    check_n_components(n_components, n, d)
    block_size = min(d, n, n_components + max(10, n_components // 2))
    console = Console(stderr=True)
    show = progress and console.is_terminal
    with Progress(console=console, transient=True, disable=not show) as bar:
        task = bar.add_task("PCA (randomized)", total=max_iter + 1)
        mean = _column_mean(chunks, n, d)
        bar.advance(task)
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, block_size)))
        for iteration in range(1, max_iter + 1):
            cq = _covariance_times(chunks, mean, n, q)
            ritz_values, w = np.linalg.eigh(q.T @ cq)
            ritz_values, w = ritz_values[::-1], w[:, ::-1]
            vectors, c_vectors = q @ w, cq @ w
            wanted = slice(0, n_components)
            residual = np.linalg.norm(
                c_vectors[:, wanted] - vectors[:, wanted] * ritz_values[wanted], axis=0
            ).max() / max(ritz_values[0], 1e-300)
            bar.advance(task)
            if residual <= tol or iteration == max_iter:
                break
            q, _ = np.linalg.qr(c_vectors)
    components = fix_signs(vectors[:, wanted])
    return PCAResult(mean, components, ritz_values[wanted], float(residual), iteration)
