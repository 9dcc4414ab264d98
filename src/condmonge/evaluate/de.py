r"""One differential-expression test for every DE-based metric: scanpy's ``rank_genes_groups``.

The default, ``wilcoxon``, is scanpy's Wilcoxon rank-sum test of a group against a reference
(``rank_genes_groups(..., reference=control, method="wilcoxon")``, no tie correction) computed
here vectorised over genes and groups, because scanpy ranks group by group (about 6 s for
200 conditions of 50 genes on two cores, 0.2 s here); tests/test_published_metrics.py checks
that scores, FDRs and fold changes equal scanpy's. Other methods (``t-test``, ``logreg``, or
``scanpy-wilcoxon`` for scanpy's own Wilcoxon code) call scanpy.

Each condition's cells are tested against the control cells of its cell type (the truth's
controls, also for predictions), gene by gene, with ``method`` (Wilcoxon rank-sum by default;
any ``rank_genes_groups`` method works), Benjamini-Hochberg FDR, and genes ranked by the absolute
test statistic (``rankby_abs=True``, as GEARS and scPerturBench rank their top DE genes).
The same call gives scanpy's log2 fold change
:math:`\log_2\frac{e^{\mu}-1+10^{-9}}{e^{\mu_0}-1+10^{-9}}` (it assumes log1p data); where that
is undefined or meaningless (a negative mean, e.g. z-scored or PCA features) the difference of
means in log2 units, :math:`(\mu-\mu_0)/\ln 2`, takes its place, so that its sign is the
direction of change.

Results are cached by a fingerprint of the cells (both groups' bytes, the genes and the
method), in memory and optionally in a directory, so that the truth's test runs once however
many predictions are scored against it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy.stats import norm

from condmonge.errors import ConfigError, suggest

__all__ = [
    "DE_METHODS",
    "DECache",
    "DETable",
    "FDR_THRESHOLD",
    "benjamini_hochberg",
    "rank_genes",
    "wilcoxon",
]

#: Significance threshold on the Benjamini-Hochberg FDR (cell-eval's).
FDR_THRESHOLD = 0.05
#: Accepted ``method`` values (scanpy's ``rank_genes_groups`` methods; ``scanpy-wilcoxon`` runs
#: scanpy's own Wilcoxon code instead of the vectorised one).
DE_METHODS = ("wilcoxon", "scanpy-wilcoxon", "t-test", "t-test_overestim_var", "logreg")
_CONTROL = "__control__"


@dataclass(frozen=True)
class DETable:
    """One condition's test result, every array ``[g]`` in the order of ``genes``.

    Attributes:
      genes: gene names.
      score: test statistic (Wilcoxon z-score for the default test).
      lfc: scanpy's log2 fold change vs control.
      fdr: Benjamini-Hochberg adjusted p-value.
    """

    genes: np.ndarray
    score: np.ndarray
    lfc: np.ndarray
    fdr: np.ndarray

    def top(self, k: int) -> np.ndarray:
        """Indices of the ``k`` top DE genes (largest ``|score|``, ties by gene order)."""
        return np.argsort(-np.abs(self.score), kind="stable")[:k]

    def significant(self, threshold: float = FDR_THRESHOLD) -> np.ndarray:
        """Boolean ``[g]``: FDR below ``threshold``."""
        return self.fdr < threshold

    def ranked_significant(self, threshold: float = FDR_THRESHOLD) -> list[str]:
        """Significant gene names sorted by decreasing ``|lfc|`` (cell-eval's DE gene list)."""
        idx = np.flatnonzero(self.significant(threshold))
        return [str(g) for g in self.genes[idx[np.argsort(-np.abs(self.lfc[idx]), kind="stable")]]]


def _digest(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def _array_digest(x: np.ndarray) -> str:
    x = np.ascontiguousarray(x, np.float32)
    return _digest(str(x.shape), x.tobytes())


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    r"""Benjamini-Hochberg adjusted p-values of ``p [g]`` (statsmodels' ``fdr_bh``).

    .. math:: q_{(i)} = \min\bigl(1, \min_{j \ge i} p_{(j)}\, g / j\bigr)
    """
    order = np.argsort(p, kind="mergesort")
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out = np.empty_like(q)
    out[order] = q
    return out


def _log2_fold_change(group_mean: np.ndarray, control_mean: np.ndarray) -> np.ndarray:
    """Scanpy's log2 fold change, replaced by ``(mu - mu0) / ln 2`` where it is meaningless."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lfc = np.log2((np.expm1(group_mean) + 1e-9) / (np.expm1(control_mean) + 1e-9))
    # scanpy's expm1-based ratio is meaningless for negative means (not log1p data).
    valid = np.isfinite(lfc) & (group_mean >= 0) & (control_mean >= 0)
    return np.where(valid, lfc, (group_mean - control_mean) / np.log(2.0))


def wilcoxon(
    groups: Mapping[str, np.ndarray], control: np.ndarray, genes: Sequence[str]
) -> dict[str, DETable]:
    r"""Scanpy's Wilcoxon rank-sum test of each group against ``control``, vectorised.

    For a group of :math:`n` cells and :math:`m` controls, the rank sum of the group in the
    pooled sample (average ranks for ties) is
    :math:`R = n(n+1)/2 + \sum_i (\#\{y < x_i\} + \tfrac12\#\{y = x_i\})` (counts over the
    sorted controls, so each gene's controls are sorted once);
    :math:`z = (R - n(n+m+1)/2) / \sqrt{nm(n+m+1)/12}`, :math:`p = 2\,\Phi(-|z|)`, FDR by
    Benjamini-Hochberg over genes.
    """
    # Column-major float32 copies: each gene's values are contiguous for the searches.
    ref = np.asfortranarray(np.sort(np.asarray(control, np.float32), axis=0))
    m = ref.shape[0]
    control_mean = ref.mean(0, dtype=np.float64)
    names = list(groups)
    blocks = [np.asarray(groups[k], np.float32) for k in names]
    sizes = np.array([len(b) for b in blocks])
    pooled = np.asfortranarray(np.concatenate(blocks))
    # Twice the count of controls below each value (ties count half): exact integers.
    below = np.empty(pooled.shape, np.int64, order="F")
    for j in range(pooled.shape[1]):
        below[:, j] = np.searchsorted(ref[:, j], pooled[:, j], side="left")
        below[:, j] += np.searchsorted(ref[:, j], pooled[:, j], side="right")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sums = np.add.reduceat(below, starts, axis=0) / 2.0
    gene_arr = np.asarray([str(g) for g in genes])
    out = {}
    for i, name in enumerate(names):
        n = sizes[i]
        rank_sum = n * (n + 1) / 2.0 + sums[i]
        z = (rank_sum - n * (n + m + 1) / 2.0) / np.sqrt(n * m * (n + m + 1) / 12.0)
        z = np.nan_to_num(z)
        p = 2 * norm.sf(np.abs(z))
        lfc = _log2_fold_change(blocks[i].mean(0, dtype=np.float64), control_mean)
        out[name] = DETable(gene_arr, z, lfc, benjamini_hochberg(p))
    return out


def rank_genes(
    groups: Mapping[str, np.ndarray],
    control: np.ndarray,
    genes: Sequence[str],
    method: str = "wilcoxon",
) -> dict[str, DETable]:
    """Test every group against ``control``: :func:`wilcoxon`, or one scanpy call.

    Args:
      groups: ``{name: [n_i, g]}`` cells of each condition.
      control: ``[n_0, g]`` control cells (the reference group).
      genes: the ``g`` gene names.
      method: a ``rank_genes_groups`` method (``wilcoxon``, ``t-test``, ...).

    Returns:
      ``{name: DETable}``.
    """
    names = list(groups)
    if not names:
        return {}
    if method == "wilcoxon":
        return wilcoxon(groups, control, genes)
    method = "wilcoxon" if method == "scanpy-wilcoxon" else method
    x = np.concatenate([np.asarray(groups[n], np.float32) for n in names] + [control])
    labels = np.concatenate(
        [np.repeat(f"g{i}", len(groups[n])) for i, n in enumerate(names)]
        + [np.repeat(_CONTROL, len(control))]
    )
    var = pd.DataFrame(index=pd.Index([f"v{j}" for j in range(len(genes))]))
    obs = pd.DataFrame({"group": pd.Categorical(labels)}, index=np.arange(len(x)).astype(str))
    adata = ad.AnnData(x, obs=obs, var=var)
    with warnings.catch_warnings():
        # Constant genes (zero variance in both groups) make scanpy warn; their p-value is 1.
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            adata, "group", groups=[f"g{i}" for i in range(len(names))], reference=_CONTROL,
            method=method, n_genes=len(genes), rankby_abs=True, use_raw=False,
        )  # fmt: skip
    res = adata.uns["rank_genes_groups"]
    out = {}
    gene_arr = np.asarray([str(g) for g in genes])
    control_mean = np.asarray(control, np.float64).mean(0)
    for i, name in enumerate(names):
        g = f"g{i}"
        order = np.asarray([int(v[1:]) for v in res["names"][g]])
        score, lfc, fdr = (np.empty(len(genes)) for _ in range(3))
        score[order] = np.asarray(res["scores"][g], np.float64)
        lfc[order] = np.asarray(res["logfoldchanges"][g], np.float64)
        fdr[order] = np.asarray(res["pvals_adj"][g], np.float64)
        group_mean = np.asarray(groups[name], np.float64).mean(0)
        valid = np.isfinite(lfc) & (group_mean >= 0) & (control_mean >= 0)
        lfc = np.where(valid, lfc, _log2_fold_change(group_mean, control_mean))
        out[name] = DETable(gene_arr, np.nan_to_num(score), lfc, np.nan_to_num(fdr, nan=1.0))
    return out


class DECache:
    """:func:`rank_genes` with results kept by fingerprint (memory, and ``directory`` if given).

    A group's fingerprint covers its cells, the control cells, the genes and the method, so a
    cached table is reused only for identical inputs.
    """

    def __init__(self, method: str = "wilcoxon", directory: str | Path | None = None) -> None:
        if method not in DE_METHODS:
            raise ConfigError(
                f"unknown DE method '{method}'{suggest(method, DE_METHODS)}; choose from "
                f"{', '.join(DE_METHODS)}"
            )
        self.method = method
        self.directory = Path(directory) if directory is not None else None
        self.memory: dict[str, DETable] = {}
        self.computed = 0

    def _load(self, key: str) -> DETable | None:
        if key in self.memory:
            return self.memory[key]
        if self.directory is not None and (path := self.directory / f"{key}.npz").is_file():
            with np.load(path, allow_pickle=False) as z:
                table = DETable(z["genes"], z["score"], z["lfc"], z["fdr"])
            self.memory[key] = table
            return table
        return None

    def _store(self, key: str, table: DETable) -> None:
        self.memory[key] = table
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{key}.tmp.npz"
            np.savez(tmp, genes=table.genes, score=table.score, lfc=table.lfc, fdr=table.fdr)
            tmp.replace(self.directory / f"{key}.npz")

    def rank(
        self, groups: Mapping[str, np.ndarray], control: np.ndarray, genes: Sequence[str]
    ) -> dict[str, DETable]:
        """Like :func:`rank_genes`, computing only the groups not cached yet."""
        base = _digest(self.method, _array_digest(control), "\n".join(map(str, genes)))
        keys = {name: _digest(base, _array_digest(x)) for name, x in groups.items()}
        out = {name: self._load(k) for name, k in keys.items()}
        todo = {name: groups[name] for name, t in out.items() if t is None}
        if todo:
            fresh = rank_genes(todo, control, genes, self.method)
            self.computed += len(fresh)
            for name, table in fresh.items():
                self._store(keys[name], table)
                out[name] = table
        return out  # type: ignore[return-value]
