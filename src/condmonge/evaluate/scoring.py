r"""Score any model's predictions against observed cells, condition by condition, streaming.

A prediction is any AnnData with a condition column (plus dose / cell-type columns when the
truth has them) and genes in ``var_names``: ``condmonge predict`` output, CellFlow's, CPA's or a
hand-made one. Conditions are matched by :meth:`Condition.key` of those columns, genes by name.
Conditions on one side only, and genes missing from a prediction, are reported in
:class:`Coverage`, not silently dropped.

Cells are read a chunk of conditions at a time (backed ``.h5ad`` files work), so memory is
bounded by the chunk, not the data: per condition the means use every cell, the DE test
(:mod:`condmonge.evaluate.de`) and the distribution metrics use up to ``max_cells`` cells
(seeded subsample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from condmonge.config import DataConfig
from condmonge.data.prepare import label_cells
from condmonge.errors import ConfigError, DataError, UnknownConditionError
from condmonge.evaluate import published as pub
from condmonge.evaluate.baselines import make_baseline
from condmonge.evaluate.de import DECache, DETable
from condmonge.evaluate.metrics import evaluate_populations, metric_higher_is_better

__all__ = [
    "Coverage",
    "DEFAULT_BASELINES",
    "PUBLISHED_DIRECTIONS",
    "TOP_DE",
    "baseline_predictions",
    "higher_is_better",
    "metric_names",
    "score_predictions",
]

#: Sizes of the top-DE gene sets of ``pearson_delta_de{k}``.
TOP_DE = (20, 50, 100)
#: Direction of each published metric (``True``: higher is better).
PUBLISHED_DIRECTIONS = {
    "pearson_delta": True,
    **{f"pearson_delta_de{k}": True for k in TOP_DE},
    "cmonge_r2_mean_de50": True,
    "cosine_logfc": True,
    "rank_cosine_logfc": False,
    "discrimination_score_l1": True,
    **{f"de_{m}_at_{n}": True for m in ("overlap", "precision") for n in ("N", 50, 100)},
    "de_direction_match": True,
}


#: Columns of a score table that are not metrics.
ID_COLUMNS = ("method", "condition", "label", "cell_type", "n_pred", "n_true")


def metric_names(table: pd.DataFrame) -> list[str]:
    """The metric columns of a :func:`score_predictions` table, in table order."""
    return [c for c in table.columns if c not in ID_COLUMNS]


def higher_is_better(name: str) -> bool:
    """Direction of any metric column: published ones by table, the rest by name."""
    return PUBLISHED_DIRECTIONS.get(name, metric_higher_is_better(name))


@dataclass
class Coverage:
    """What was and was not scored for one prediction.

    Attributes:
      scored: condition keys present on both sides.
      only_in_prediction: predicted conditions without observed cells in the truth.
      only_in_truth: observed conditions the prediction lacks.
      genes_missing: truth genes absent from the prediction (scored on the shared genes).
    """

    scored: list[str] = field(default_factory=list)
    only_in_prediction: list[str] = field(default_factory=list)
    only_in_truth: list[str] = field(default_factory=list)
    genes_missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready summary (gene lists cut to 20 names)."""
        return {
            "n_scored": len(self.scored),
            "only_in_prediction": self.only_in_prediction,
            "only_in_truth": self.only_in_truth,
            "n_genes_missing": len(self.genes_missing),
            "genes_missing": self.genes_missing[:20],
        }


class _Side:
    """Rows of each condition (and control cell type) of one AnnData, by condition key."""

    def __init__(self, adata: ad.AnnData, cfg: DataConfig, what: str):
        for key in (cfg.condition_key, cfg.dose_key, cfg.cell_type_key):
            if key and key not in adata.obs:
                raise DataError(
                    f"the {what} has no obs column '{key}'; pass --condition-key / --dose-key / "
                    f"--cell-type-key naming its columns"
                )
        cells = label_cells(adata, cfg.spec)
        self.adata = adata
        self.x = adata.X
        if self.x is None:
            raise DataError(f"the {what} has no X; genes are scored from adata.X")
        self.conditions = {c.key(cfg.combination_sep): c for c in cells.conditions}
        order = np.argsort(cells.condition_of_cell, kind="stable")
        n = len(cells.conditions)
        bounds = np.searchsorted(cells.condition_of_cell[order], np.arange(n + 1))
        self.rows = {
            c.key(cfg.combination_sep): order[bounds[i] : bounds[i + 1]]
            for i, c in enumerate(cells.conditions)
        }
        types = cells.cell_type_of_cell
        self.control = {
            ct: np.flatnonzero(cells.is_control & (types == ct if ct is not None else True))
            for ct in set(types[cells.is_control].tolist())
        }


def _read(x, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
    """Dense float32 ``[len(rows), g]`` of matrix ``x``; contiguous runs are read as slices.

    ``x`` is ``adata.X`` taken once: on a backed AnnData each ``adata.X`` access reopens the
    dataset, so it is not taken per read.
    """
    rows = np.sort(rows)
    if rows.size == 0:
        return np.zeros((0, x.shape[1] if cols is None else len(cols)), np.float32)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    parts = []
    for run in np.split(rows, breaks):
        block = x[int(run[0]) : int(run[-1]) + 1]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        parts.append(block if cols is None else block[:, cols])
    return np.concatenate(parts).astype(np.float32, copy=False)


def _mean_and_sample(
    x, rows: np.ndarray, cols, max_cells: int, rng: np.random.Generator, read_rows: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over all ``rows`` and a seeded subsample of ``max_cells`` of them, in one pass.

    Rows are read in blocks of ``read_rows`` (contiguous runs as slices) and the subsample is
    taken from the blocks in memory, so a condition is read once.
    """
    rows = np.sort(rows)
    keep = np.ones(len(rows), bool)
    if len(rows) > max_cells:
        keep[:] = False
        keep[rng.choice(len(rows), max_cells, replace=False)] = True
    total, sample = None, []
    for start in range(0, len(rows), read_rows):
        block = _read(x, rows[start : start + read_rows], cols)
        s = block.sum(0, dtype=np.float64)
        total = s if total is None else total + s
        sample.append(block[keep[start : start + read_rows]])
    return total / len(rows), np.concatenate(sample)


def _gene_columns(adata: ad.AnnData, genes: Sequence[str]) -> np.ndarray | None:
    names = [str(v) for v in adata.var_names]
    if names == list(genes):
        return None
    position = {g: i for i, g in enumerate(names)}
    return np.asarray([position[g] for g in genes])


def _condition_metrics(
    pred_mean: np.ndarray, true_mean: np.ndarray, control_mean: np.ndarray,
    de_true: DETable, de_pred: DETable,
) -> dict[str, float]:  # fmt: skip
    """Every per-condition published metric (``[g]`` means; DE tables of truth and prediction)."""
    p_delta, t_delta = pred_mean - control_mean, true_mean - control_mean
    out = {"pearson_delta": pub.pearson(p_delta, t_delta)}
    for k in TOP_DE:
        top = de_true.top(k)
        out[f"pearson_delta_de{k}"] = pub.pearson(p_delta[top], t_delta[top])
    top = de_true.top(50)
    out["cmonge_r2_mean_de50"] = pub.pearson(pred_mean[top], true_mean[top]) ** 2
    out["cosine_logfc"] = pub.cosine_logfc(pred_mean, true_mean, control_mean)
    true_genes, pred_genes = de_true.ranked_significant(), de_pred.ranked_significant()
    for metric in ("overlap", "precision"):
        for n in ("N", 50, 100):
            out[f"de_{metric}_at_{n}"] = pub.de_overlap(
                true_genes, pred_genes, None if n == "N" else int(n), metric
            )
    out["de_direction_match"] = pub.de_direction_match(
        de_true.lfc, de_pred.lfc, de_true.significant()
    )
    return out


def _cross_condition_metrics(
    keys: list[str], means: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    perturbations: dict[str, tuple[str, ...]], genes: Sequence[str],
) -> dict[str, dict[str, float]]:  # fmt: skip
    """PerturBench's rank metric and cell-eval's discrimination score among ``keys``.

    ``keys`` are the conditions compared together (one cell type); the perturbed genes of each
    condition are left out of its discrimination score, as cell-eval does.
    """
    pm = np.stack([means[k][0] for k in keys])
    tm = np.stack([means[k][1] for k in keys])
    cm = np.stack([means[k][2] for k in keys])
    ranks = pub.rank_metric(pub.log2_fold_change(pm, cm), pub.log2_fold_change(tm, cm))
    gene_arr = np.asarray(genes)
    exclude = [np.isin(gene_arr, perturbations[k]) for k in keys]
    disc = pub.discrimination_scores(pm - cm, tm - cm, exclude)
    return {
        k: {"rank_cosine_logfc": float(r), "discrimination_score_l1": float(s)}
        for k, r, s in zip(keys, ranks, disc, strict=True)
    }


def _shared_genes(truth: ad.AnnData, predictions: Mapping[str, ad.AnnData]) -> list[str]:
    genes = [str(g) for g in truth.var_names]
    for name, pred in predictions.items():
        if pred.var_names.has_duplicates:
            raise DataError(
                f"prediction '{name}' has duplicate var_names; call `var_names_make_unique()`"
            )
        present = set(map(str, pred.var_names))
        genes = [g for g in genes if g in present]
    if not genes:
        raise DataError(
            "the predictions share no gene (var_names) with the truth; genes are matched by name"
        )
    return genes


def _coverage(truth: _Side, side: _Side, genes: list[str], pred: ad.AnnData) -> Coverage:
    present = set(map(str, pred.var_names))
    return Coverage(
        scored=[k for k in truth.rows if k in side.rows],
        only_in_prediction=[k for k in side.rows if k not in truth.rows],
        only_in_truth=[k for k in truth.rows if k not in side.rows],
        genes_missing=[str(g) for g in truth.adata.var_names if str(g) not in present],
    )


class _Run:
    """State of one scoring run: shared genes, controls and truth DE per cell type."""

    def __init__(self, truth: _Side, genes: list[str], cfg: DataConfig, max_cells: int,
                 cache: DECache, seed: int):  # fmt: skip
        self.truth, self.genes, self.cfg, self.max_cells = truth, genes, cfg, max_cells
        self.cache, self.rng = cache, np.random.default_rng(seed)
        self.truth_cols = _gene_columns(truth.adata, genes)
        self.controls: dict = {}
        # Top-20 DE genes' mean deltas per condition, for the scatter plots (small).
        self.top_deltas: dict[str, dict] = {}

    def control(self, cell_type) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``[g]`` and subsample ``[<=max_cells, g]`` of the truth's controls of a type."""
        if cell_type not in self.controls:
            rows = self.truth.control.get(cell_type)
            if rows is None or rows.size == 0:
                where = f" of cell type '{cell_type}'" if cell_type is not None else ""
                raise DataError(
                    f"the truth has no control cells{where} (label '{self.cfg.control}' in "
                    f"obs['{self.cfg.condition_key}']); mean deltas need them"
                )
            self.controls[cell_type] = _mean_and_sample(
                self.truth.x, rows, self.truth_cols, self.max_cells, self.rng
            )
        return self.controls[cell_type]

    def cells(self, side: _Side, key: str, cols) -> tuple[np.ndarray, np.ndarray]:
        """Mean and subsample of one condition's cells on one side."""
        return _mean_and_sample(side.x, side.rows[key], cols, self.max_cells, self.rng)

    def chunk(
        self, keys: list[str], cell_type, sides: Mapping[str, _Side], distributions: bool
    ) -> tuple[list[dict], dict[str, dict[str, tuple]]]:
        """Per-condition rows of every method for ``keys`` (one cell type); means for ranks."""
        c_mean, c_cells = self.control(cell_type)
        truth = {k: self.cells(self.truth, k, self.truth_cols) for k in keys}
        de_true = self.cache.rank({k: v[1] for k, v in truth.items()}, c_cells, self.genes)
        for k in keys:
            top = de_true[k].top(20)
            self.top_deltas[k] = {"genes": [self.genes[i] for i in top],
                                  "truth": (truth[k][0] - c_mean)[top].tolist()}  # fmt: skip
        rows, means = [], {}
        for name, side in sides.items():
            mine = [k for k in keys if k in side.rows]
            cols = _gene_columns(side.adata, self.genes)
            pred = {k: self.cells(side, k, cols) for k in mine}
            de_pred = self.cache.rank({k: v[1] for k, v in pred.items()}, c_cells, self.genes)
            means[name] = {k: (pred[k][0], truth[k][0], c_mean) for k in mine}
            for k in mine:
                top = de_true[k].top(20)
                self.top_deltas[k][name] = (pred[k][0] - c_mean)[top].tolist()
            dist = None
            if distributions and mine:
                dist = evaluate_populations(
                    [pred[k][1] for k in mine], [truth[k][1] for k in mine],
                    [c_cells] * len(mine), mine, max_cells=self.max_cells,
                )  # fmt: skip
            for k in mine:
                cond = self.truth.conditions[k]
                row = {"method": name, "condition": k,
                       "label": cond.label(self.cfg.combination_sep),
                       "cell_type": cond.cell_type, "n_pred": len(side.rows[k]),
                       "n_true": len(self.truth.rows[k])}  # fmt: skip
                row |= _condition_metrics(pred[k][0], truth[k][0], c_mean, de_true[k], de_pred[k])
                if dist is not None:
                    row |= {m: float(v) for m, v in dist.loc[k].items()}
                rows.append(row)
        return rows, means


def _progress(enabled: bool, total: int):

    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    console = Console(stderr=True)  # stdout stays for results (JSON lines, tables)
    return Progress(*columns, console=console, disable=not enabled, transient=False), total


def score_predictions(  # noqa: PLR0913  public entry point: each keyword-only option is documented
    predictions: Mapping[str, ad.AnnData],
    truth: ad.AnnData,
    cfg: DataConfig | None = None,
    *,
    max_cells: int = 500,
    de_method: str = "wilcoxon",
    de_cache: DECache | None = None,
    distributions: bool = True,
    chunk_conditions: int = 64,
    progress: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Score predictions of any model side by side: one row per method and condition.

    Args:
      predictions: ``{method name: AnnData}``; each needs ``obs[cfg.condition_key]`` (and the
        dose / cell-type columns that ``cfg`` names) and gene names; backed AnnData work.
      truth: observed treated and control cells (backed works).
      cfg: obs column names (default: ``condition`` / ``control``).
      max_cells: cells per condition (and control set) for the DE test and the distribution
        metrics (seeded subsample; means use every cell).
      de_method: ``scanpy.tl.rank_genes_groups`` method of :mod:`condmonge.evaluate.de`.
      de_cache: reuse DE results across calls (one is made per call otherwise).
      distributions: also compute the distribution metrics of
        :func:`~condmonge.evaluate.metrics.evaluate_populations` (MMD, energy, Sinkhorn, ...).
      chunk_conditions: conditions held in memory at a time.
      progress: show a progress bar on stderr.

    Returns:
      Table with ``method``, ``condition``, ``label``, ``cell_type``, ``n_pred``, ``n_true`` and
      every metric; ``table.attrs['coverage']`` holds ``{method: Coverage.as_dict()}``.
    """
    if max_cells < 2:
        raise ConfigError(f"max_cells must be at least 2 (got {max_cells}); DE needs cells")
    if chunk_conditions < 1:
        raise ConfigError(f"chunk_conditions must be at least 1 (got {chunk_conditions})")
    if not predictions:
        raise ConfigError("no predictions to score; pass at least one")
    cfg = cfg or DataConfig()
    truth_side = _Side(truth, cfg, "truth")
    sides = {name: _Side(p, cfg, f"prediction '{name}'") for name, p in predictions.items()}
    genes = _shared_genes(truth, predictions)
    coverage = {n: _coverage(truth_side, s, genes, predictions[n]) for n, s in sides.items()}
    run = _Run(truth_side, genes, cfg, max_cells, de_cache or DECache(de_method), seed)
    keys = [k for k in truth_side.rows if any(k in s.rows for s in sides.values())]
    by_type: dict = {}
    for k in keys:
        by_type.setdefault(truth_side.conditions[k].cell_type, []).append(k)
    rows, means = _score_chunks(run, by_type, sides, distributions, chunk_conditions, progress)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["method", "condition"])
    else:
        table = _add_cross_condition(table, means, by_type, truth_side, genes)
    table.attrs["coverage"] = {n: c.as_dict() for n, c in coverage.items()}
    table.attrs["n_genes"] = len(genes)
    table.attrs["top_de_deltas"] = run.top_deltas
    return table


def _score_chunks(run: _Run, by_type: dict, sides: Mapping[str, _Side], distributions: bool,
                  chunk_conditions: int, progress: bool) -> tuple[list[dict], dict]:  # fmt: skip
    """Rows of every method and condition, ``chunk_conditions`` conditions at a time."""
    rows: list[dict] = []
    means: dict[str, dict] = {n: {} for n in sides}
    bar, total = _progress(progress, sum(len(v) for v in by_type.values()))
    with bar:
        task = bar.add_task("scoring", total=total)
        for cell_type, type_keys in by_type.items():
            for start in range(0, len(type_keys), chunk_conditions):
                chunk = type_keys[start : start + chunk_conditions]
                new_rows, new_means = run.chunk(chunk, cell_type, sides, distributions)
                rows += new_rows
                for n in sides:
                    means[n] |= new_means[n]
                bar.advance(task, len(chunk))
    return rows, means


def _add_cross_condition(table, means, by_type, truth_side: _Side, genes) -> pd.DataFrame:
    perts = {k: c.perturbations for k, c in truth_side.conditions.items()}
    extra = {}
    for name, per_key in means.items():
        for type_keys in by_type.values():
            mine = [k for k in type_keys if k in per_key]
            if mine:
                for k, vals in _cross_condition_metrics(mine, per_key, perts, genes).items():
                    extra[(name, k)] = vals
    pairs = zip(table["method"], table["condition"], strict=True)
    cross = pd.DataFrame([extra[pair] for pair in pairs])
    return pd.concat([table.reset_index(drop=True), cross], axis=1)


#: Baselines that ``--baselines`` adds (cheap, no training loop).
DEFAULT_BASELINES = ("identity", "mean_shift", "additive")


def baseline_predictions(
    train: ad.AnnData,
    query: ad.AnnData,
    cfg: DataConfig,
    names: Sequence[str] = DEFAULT_BASELINES,
) -> dict[str, ad.AnnData]:
    """Fit baselines on ``train`` and predict the conditions of ``query`` from its controls.

    A condition a baseline cannot place (e.g. an additive combination of an unseen
    perturbation) is left out of that baseline's prediction, so it is reported as missing.
    """
    conditions = label_cells(query, cfg.spec).conditions
    out = {}
    for name in names:
        model = make_baseline(name).fit(train, cfg.spec)
        try:
            out[name] = model.predict(query, conditions)
            continue
        except UnknownConditionError:
            pass
        parts = []
        for cond in conditions:
            try:
                parts.append(model.predict(query, [cond]))
            except UnknownConditionError:
                continue
        if parts:
            out[name] = ad.concat(parts, index_unique="-")
    return out
