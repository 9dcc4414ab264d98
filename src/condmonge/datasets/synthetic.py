"""Synthetic tasks whose optimal maps are known, for tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

__all__ = ["AffineTask", "l2_uvp", "spd_affine_task"]


@dataclass(frozen=True)
class AffineTask:
    """Conditions ``c`` with optimal maps ``T_c(x) = A_c x + b_c`` (``A_c`` SPD).

    ``T_c`` is the gradient of the convex quadratic ``x^T A_c x / 2 + b_c^T x``, so by Brenier's
    theorem it is the squared-Euclidean optimal transport map from the control distribution to
    its image, whatever the control distribution.

    Attributes:
      adata: control and treated cells; ``obs['condition']`` is ``control`` or ``drug_<i>``.
      matrices: ``[K, d, d]`` SPD ``A_c``; offsets: ``[K, d]`` ``b_c``; names: ``K`` labels.
    """

    adata: ad.AnnData
    matrices: np.ndarray
    offsets: np.ndarray
    names: list[str]

    def true_map(self, name: str, x: np.ndarray) -> np.ndarray:
        """Apply the ground-truth map of condition ``name`` to ``x [n, d]``."""
        i = self.names.index(name)
        return x @ self.matrices[i].T + self.offsets[i]


def _control_cloud(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    # A heterogeneous (clustered) control population: the maps must not rely on Gaussianity.
    labels = rng.integers(0, centres.shape[0], n)
    noise = rng.normal(scale=0.7, size=(n, centres.shape[1]))
    return (centres[labels] + noise).astype(np.float32)


def spd_affine_task(
    n_conditions: int = 5,
    n_features: int = 10,
    n_cells: int = 1000,
    seed: int = 0,
    eigen_range: tuple[float, float] = (0.5, 2.0),
) -> AffineTask:
    """Build a task with ``n_conditions`` SPD-affine maps in ``n_features`` dimensions.

    Control and treated cells are drawn independently (unpaired), ``n_cells`` of each per
    condition.
    """
    rng = np.random.default_rng(seed)
    d = n_features
    matrices, offsets, blocks, labels = [], [], [], []
    centres = rng.normal(scale=1.5, size=(3, d))
    controls = _control_cloud(rng, centres, n_cells)
    blocks.append(controls)
    labels += ["control"] * n_cells
    names = [f"drug_{i}" for i in range(n_conditions)]
    for name in names:
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        eig = rng.uniform(*eigen_range, size=d)
        a = (q * eig) @ q.T
        b = rng.normal(scale=1.0, size=d)
        matrices.append(a)
        offsets.append(b)
        fresh = _control_cloud(rng, centres, n_cells)  # unpaired: new draws, same distribution
        blocks.append((fresh @ a.T + b).astype(np.float32))
        labels += [name] * n_cells
    x = np.concatenate(blocks)
    index = [f"cell{i}" for i in range(len(x))]
    obs = pd.DataFrame({"condition": pd.Categorical(labels)}, index=index)
    var = pd.DataFrame(index=[f"f{j}" for j in range(d)])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    return AffineTask(adata, np.stack(matrices), np.stack(offsets), names)


def l2_uvp(predicted: np.ndarray, true_mapped: np.ndarray) -> float:
    r"""Unexplained variance percentage of a map (Korotin et al. 2021).

    .. math::
        \mathrm{L2\text{-}UVP} = 100 \cdot \frac{\mathbb{E}\|\hat T(x) - T^*(x)\|^2}
            {\operatorname{tr}\operatorname{Cov}(T^*\sharp\mu)}

    Args:
      predicted: ``[n, d]`` images under the learned map; true_mapped: ``[n, d]`` under ``T*``.
    """
    err = np.mean(np.sum((predicted - true_mapped) ** 2, axis=1))
    var = np.sum(np.var(true_mapped, axis=0))
    return float(100.0 * err / var)
