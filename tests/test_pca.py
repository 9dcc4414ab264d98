"""The one PCA: exact solvers, the randomized streaming solver, signs, backed files."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from condmonge.data import backed, pca
from condmonge.errors import DataError


def _low_rank(rng, n=400, d=300, strengths=(20.0, 15.0, 10.0, 7.0, 5.0), offset=3.0):
    """Cells with a clear leading spectrum: a rank-5 signal on unit noise, off-centre."""
    u = rng.normal(size=(n, len(strengths)))
    v, _ = np.linalg.qr(rng.normal(size=(d, len(strengths))))
    x = (u * np.asarray(strengths)) @ v.T + rng.normal(size=(n, d)) + offset
    return x.astype(np.float32)


def _reference(x, k):
    """Full eigendecomposition of the float64 covariance, largest loading made positive."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    order = np.argsort(values)[::-1][:k]
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    return values[order], vectors * signs


def test_fix_signs_makes_the_largest_loading_positive():
    axes = np.array([[0.1, -0.9], [-0.8, 0.2], [0.3, 0.1]])
    fixed = pca.fix_signs(axes)
    np.testing.assert_array_equal(
        fixed, [[-0.1, -0.9], [0.8, 0.2], [-0.3, 0.1]] * np.array([1, -1])
    )
    np.testing.assert_array_equal(pca.fix_signs(-axes), fixed)


@pytest.mark.parametrize("shape", [(400, 60), (60, 400)])
def test_exact_solvers_agree_with_the_full_eigendecomposition(rng, shape):
    x = rng.normal(size=shape).astype(np.float32) * np.linspace(3, 1, shape[1], dtype=np.float32)
    values, vectors = _reference(x, 6)
    for solver in ("auto", "covariance", "gram", "svd"):
        result = pca.principal_axes(x, 6, solver=solver)
        np.testing.assert_allclose(result.components, vectors, atol=1e-8)
        np.testing.assert_allclose(result.variances, values, rtol=1e-10)
        assert result.iterations == 0 and result.residual == 0.0


def _sparse_clusters(rng, d=300):
    """CSR cells of 6 clusters of unequal size, each with its own marker genes, plus sparse noise.

    The 5 leading components (the centred cluster means) have clearly distinct variances.
    """
    sizes = [30, 50, 70, 90, 110, 150]
    labels = np.repeat(np.arange(6), sizes)
    means = np.zeros((6, d))
    for k in range(6):
        means[k, 40 * k : 40 * k + 30] = 2.0 + 0.5 * k
    noise = sp.random(len(labels), d, density=0.05, random_state=1, dtype=np.float64)
    return sp.csr_matrix(means[labels] + noise.toarray(), dtype=np.float32)


@pytest.mark.parametrize("sparse", [False, True])
def test_randomized_solver_is_exact_on_the_leading_components(rng, sparse):
    x = _sparse_clusters(rng) if sparse else _low_rank(rng)
    values, vectors = _reference(x.toarray() if sparse else x, 5)
    result = pca.principal_axes(x, 5, solver="randomized", seed=3)
    # Same signs (the shared convention), float32 products: float32 tolerance.
    np.testing.assert_allclose(result.components, vectors, atol=2e-5)
    np.testing.assert_allclose(result.variances, values, rtol=1e-5)
    assert result.residual <= 1e-6
    assert 1 <= result.iterations < 12  # stopped on the residual, not on the cap


def test_randomized_solver_does_not_depend_on_the_seed_beyond_tolerance(rng):
    x = _low_rank(rng)
    a = pca.principal_axes(x, 5, solver="randomized", seed=0).components
    b = pca.principal_axes(x, 5, solver="randomized", seed=1).components
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_auto_switches_to_the_randomized_solver_for_large_data(rng, monkeypatch):
    x = _low_rank(rng)
    exact = pca.fit_pca(x, 5)
    monkeypatch.setattr(pca, "EXACT_MAX_DIM", 100)  # 400 x 300 now counts as large
    assert pca.principal_axes(x, 5).iterations > 0
    randomized = pca.fit_pca(x, 5)
    np.testing.assert_allclose(randomized.components, exact.components, atol=2e-5)
    np.testing.assert_allclose(randomized.mean, exact.mean, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_backed_streaming_randomized_path_matches_in_memory(tmp_path, rng, monkeypatch, sparse):
    x = _low_rank(rng, n=500, d=240)
    rows = rng.random(len(x)) < 0.8
    stored = sp.csr_matrix(x) if sparse else x
    ad.AnnData(X=stored).write_h5ad(tmp_path / "cells.h5ad")
    opened = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    monkeypatch.setattr(backed, "EXACT_MAX_DIM", 100)  # 240 genes: the randomized path
    projection, latent = backed.fit_backed_projection(opened, 5, rows, chunk=64)
    reference = pca.fit_pca(x[rows], 5, solver="covariance")
    np.testing.assert_allclose(projection.components, reference.components, atol=2e-5)
    np.testing.assert_allclose(latent, reference.encode(x), atol=2e-3)


def test_bad_number_of_components_names_the_limit(rng):
    x = rng.normal(size=(10, 4))
    with pytest.raises(DataError, match=r"data.n_pca=5 must be between 1 and .*=4"):
        pca.fit_pca(x, 5)
    with pytest.raises(DataError, match="unknown PCA solver 'eig'"):
        pca.principal_axes(x, 2, solver="eig")


def test_pca_scores_are_centred_coordinates_on_the_axes(rng):
    x = rng.normal(size=(8, 30))
    scores = pca.pca_scores(x, 3)
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(np.abs(scores), np.abs(u[:, :3] * s[:3]), atol=1e-10)
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-12)
