"""Synthetic tasks whose optimal maps are known, for tests and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import anndata as ad
import numpy as np
import pandas as pd
from scipy.special import expit

from condmonge.errors import ConfigError, UnknownConditionError, suggest

__all__ = ["AffineTask", "ConvexTask", "convex_task", "spd_affine_task"]


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
        """Apply the ground-truth map of condition ``name`` to ``x [n, d]``.

        Args:
          name: a condition name of the task.
          x: ``[n, d]`` cells.
        """
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

    Args:
      n_conditions: number of conditions ``drug_0 ...``.
      n_features: dimension ``d`` of the cells.
      n_cells: control cells, and treated cells per condition.
      seed: the same seed gives the same task.
      eigen_range: range of the eigenvalues of every ``A_c``.
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


@dataclass(frozen=True)
class ConvexTask:
    r"""Conditions with embeddings and non-affine optimal maps known in closed form.

    Condition ``c`` has an embedding :math:`e_c` (a row of :attr:`embeddings`) and, at dose
    scale :math:`t \ge 0`, the map

    .. math::
        T_{c,t}(x) = x + t\,\nabla\psi_{e_c}(x), \qquad
        \psi_e(x) = \tfrac12 x^\top M(e) x + b(e)^\top x
            + \sum_k w_k(e)\,\mathrm{softplus}(a_k^\top x + \beta_k(e)),

    with :math:`M(e) = L(e) L(e)^\top / 16` (PSD), :math:`L(e)`, :math:`b(e)`, :math:`\beta(e)`
    linear in :math:`e` and :math:`w(e) = 3\,\mathrm{softplus}(W e) \ge 0`: every parameter is a
    smooth function of the embedding. :math:`\psi_e` is convex, so :math:`T_{c,t}` is the gradient
    of the strictly convex :math:`\varphi(x) = \|x\|^2/2 + t\,\psi_e(x)` and, by Brenier's
    theorem, the squared-Euclidean optimal transport map from the control distribution to its
    image, whatever the control distribution. ``t = 0`` is the identity. The four sharp ridges
    (``|a_k| = 3``) make the maps clearly non-affine: the best affine fit leaves a few percent of
    the variance of the image unexplained (L2-UVP), the identity tens of percent.

    The dose scale is :math:`t = \log_{10}(1 + \text{dose})` (the model's dose feature); without
    a dose, ``t = 1``.

    Attributes:
      adata: controls (``obs['condition'] == 'control'``) and treated cells of every condition
        (and dose, in ``obs['dose']``, controls at 0), each treated block pushed from fresh
        control draws (unpaired).
      embeddings: ``[n_conditions, embedding_dim]`` table indexed by condition name; usable as
        the model's embedding table (``embeddings={"condition": task.embeddings}``).
      names: every condition, sorted; unseen: the conditions meant to be held out (their cells
        and embeddings are in the data: hold them out, e.g. with
        ``make_split(adata, "condition", holdout=task.unseen)``).
      doses: the doses of the data, or ``None`` without a dose column.
    """

    adata: ad.AnnData
    embeddings: pd.DataFrame
    names: list[str]
    unseen: list[str]
    doses: tuple[float, ...] | None
    _theta: dict[str, np.ndarray] = field(repr=False)

    @property
    def seen(self) -> list[str]:
        """The conditions meant for training (all but :attr:`unseen`)."""
        return [n for n in self.names if n not in self.unseen]

    def _embedding(self, condition: str) -> np.ndarray:
        if condition not in self.embeddings.index:
            raise UnknownConditionError(
                f"condition '{condition}' is not in this task{suggest(condition, self.names)}"
            )
        return self.embeddings.loc[condition].to_numpy(np.float64)

    def _parameters(self, e: np.ndarray) -> tuple[np.ndarray, ...]:
        th = self._theta
        e = np.asarray(e, np.float64)
        if e.shape != (th["L"].shape[0],):
            raise ConfigError(f"an embedding has {th['L'].shape[0]} values, got shape {e.shape}")
        lower = np.tensordot(e, th["L"], axes=1)  # [d, d]
        m = lower @ lower.T / 16.0
        b = th["B"] @ e
        w = 3.0 * np.logaddexp(0.0, th["W"] @ e)
        beta = _SHARPNESS * (th["G"] @ e)
        return m, b, w, beta

    @staticmethod
    def _scale(dose: float | None) -> float:
        if dose is None:
            return 1.0
        if not math.isfinite(dose) or dose < 0:
            raise ConfigError(f"dose must be a finite number >= 0, got {dose!r}")
        return math.log10(1.0 + float(dose))

    def map_embedding(
        self, embedding: np.ndarray, x: np.ndarray, dose: float | None = None
    ) -> np.ndarray:
        """Ground-truth map of an arbitrary embedding vector applied to ``x [n, d]``.

        Args:
          embedding: ``[embedding_dim]`` vector.
          x: ``[n, d]`` cells.
          dose: the dose (``None``: scale 1).
        """
        m, b, w, beta = self._parameters(embedding)
        x = np.asarray(x, np.float64)
        a = self._theta["A"]
        grad = x @ m + b + expit(x @ a.T + beta) * w @ a  # M is symmetric
        return x + self._scale(dose) * grad

    def true_map(self, condition: str, x: np.ndarray, dose: float | None = None) -> np.ndarray:
        """Apply the ground-truth map of ``condition`` at ``dose`` to ``x [n, d]`` (float64).

        ``condition == 'control'`` is the identity.

        Args:
          condition: a condition name (or ``control``).
          x: ``[n, d]`` cells.
          dose: the dose (``None``: scale 1).
        """
        if condition == "control":
            return np.array(x, np.float64)
        return self.map_embedding(self._embedding(condition), x, dose)

    def potential(self, condition: str, x: np.ndarray, dose: float | None = None) -> np.ndarray:
        r"""The convex potential :math:`\varphi` of :meth:`true_map` at ``x [n, d]``: ``[n]``.

        Args:
          condition: a condition name (or ``control``).
          x: ``[n, d]`` cells.
          dose: the dose (``None``: scale 1).
        """
        x = np.asarray(x, np.float64)
        half_norm = 0.5 * np.sum(x * x, axis=1)
        if condition == "control":
            return half_norm
        m, b, w, beta = self._parameters(self._embedding(condition))
        psi = (
            0.5 * np.einsum("ni,ij,nj->n", x, m, x)
            + x @ b
            + np.logaddexp(0.0, x @ self._theta["A"].T + beta) @ w
        )
        return half_norm + self._scale(dose) * psi

    def sample_controls(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` fresh draws ``[n, d]`` (float32) from the control distribution.

        Args:
          n: number of cells.
          seed: seed of the draws.
        """
        return sample_mixture(np.random.default_rng(seed), self._theta, n)


_SHARPNESS = 3.0  # |a_k|: ridges sharp on the scale of the control clusters


def sample_mixture(rng: np.random.Generator, theta: dict[str, np.ndarray], n: int) -> np.ndarray:
    """``n`` draws ``[n, d]`` (float32) of a Laplace mixture (the synthetic control cells).

    Clusters of unequal weight with anisotropic, heavy-tailed (Laplace) noise: heterogeneous
    and non-Gaussian, so a map cannot get away with matching means and covariances.

    Args:
      rng: the generator (advanced).
      theta: ``weights [K]``, ``centres [K, d]`` and ``spreads [K, d]`` of the clusters.
      n: number of draws.
    """
    labels = rng.choice(len(theta["weights"]), size=n, p=theta["weights"])
    noise = rng.laplace(scale=1.0, size=(n, theta["centres"].shape[1]))
    return (theta["centres"][labels] + noise * theta["spreads"][labels]).astype(np.float32)


def convex_task(
    n_conditions: int = 20,
    n_features: int = 10,
    n_cells: int = 500,
    embedding_dim: int = 8,
    doses: Sequence[float] | None = None,
    n_unseen: int = 5,
    seed: int = 0,
) -> ConvexTask:
    """Build a :class:`ConvexTask`: conditions ``drug_00, drug_01, ...`` with known OT maps.

    Args:
      n_conditions: conditions in total, ``n_unseen`` of them (the last ones) flagged unseen.
      n_features: dimension ``d`` of the cells.
      n_cells: control cells, and treated cells per condition and dose.
      embedding_dim: length of each condition's embedding (standard normal entries).
      doses: doses at which every condition is observed (``obs['dose']``); ``None`` gives no
        dose column and dose scale 1.
      n_unseen: how many conditions (the last ones) are flagged unseen.
      seed: the same seed gives the same task.

    Returns:
      The task; its ``adata`` holds ``n_cells * (1 + n_conditions * len(doses))`` cells
      ``[N, d]``.
    """
    if n_conditions < 1 or n_features < 1 or n_cells < 1 or embedding_dim < 1:
        raise ConfigError("n_conditions, n_features, n_cells and embedding_dim must be >= 1")
    if not 0 <= n_unseen < n_conditions:
        raise ConfigError(f"n_unseen must be in [0, {n_conditions}), got {n_unseen}")
    if doses is not None:
        doses = tuple(float(d) for d in doses)
        if not doses or not all(math.isfinite(d) and d >= 0 for d in doses):
            raise ConfigError(f"doses must be a non-empty list of numbers >= 0, got {doses}")
    rng = np.random.default_rng(seed)
    theta = _convex_parameters(rng, n_features, embedding_dim)
    width = len(str(n_conditions - 1))
    names = [f"drug_{i:0{width}d}" for i in range(n_conditions)]
    embeddings = pd.DataFrame(
        rng.normal(size=(n_conditions, embedding_dim)),
        index=pd.Index(names, name="condition"),
        columns=[f"emb_{j}" for j in range(embedding_dim)],
    )
    task = ConvexTask(  # without cells yet: its map pushes the treated blocks
        ad.AnnData(np.zeros((0, n_features), np.float32)),
        embeddings,
        names,
        names[n_conditions - n_unseen :],
        doses,
        theta,
    )
    return replace(task, adata=_convex_cells(task, rng, n_cells))


def _convex_parameters(rng: np.random.Generator, d: int, p: int) -> dict[str, np.ndarray]:
    """The control mixture and the map parameters of :class:`ConvexTask` (``d`` features)."""
    n_clusters, n_ridges = 4, 4
    theta = {
        "centres": rng.normal(scale=2.0, size=(n_clusters, d)),
        "spreads": rng.uniform(0.3, 1.0, size=(n_clusters, d)),
        "weights": rng.dirichlet(np.full(n_clusters, 2.0)),
        "L": rng.normal(scale=1.0 / math.sqrt(p * d), size=(p, d, d)),
        "B": rng.normal(scale=0.5 / math.sqrt(p), size=(d, p)),
        "W": rng.normal(scale=1.0 / math.sqrt(p), size=(n_ridges, p)),
        "G": rng.normal(scale=1.5 / math.sqrt(p), size=(n_ridges, p)),
    }
    directions = rng.normal(size=(n_ridges, d))
    theta["A"] = _SHARPNESS * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    return theta


def _convex_cells(task: ConvexTask, rng: np.random.Generator, n_cells: int) -> ad.AnnData:
    """Controls, then every condition (and dose) pushed from fresh control draws."""
    names, doses, theta = task.names, task.doses, task._theta
    blocks = [sample_mixture(rng, theta, n_cells)]
    labels, dose_col = ["control"] * n_cells, [0.0] * n_cells
    for name in names:
        for dose in doses if doses is not None else [None]:
            fresh = sample_mixture(rng, theta, n_cells)  # unpaired: new draws, same distribution
            blocks.append(task.true_map(name, fresh, dose).astype(np.float32))
            labels += [name] * n_cells
            dose_col += [0.0 if dose is None else dose] * n_cells
    x = np.concatenate(blocks)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels, categories=["control", *names])},
        index=[f"cell{i}" for i in range(len(x))],
    )
    if doses is not None:
        obs["dose"] = np.asarray(dose_col, np.float64)
    var = pd.DataFrame(index=[f"f{j}" for j in range(x.shape[1])])
    return ad.AnnData(X=x, obs=obs, var=var)
