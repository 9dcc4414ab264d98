"""The held-out tasks of the leaderboard (``benchmarks/leaderboard.py``), as experiment configs.

Each task is a set of experiment trees (the dicts :func:`condmonge.evaluate.experiment.
experiment_config_from_dict` validates) *without* the model's hyperparameters: the data's
meaning (obs keys, embeddings), the split and the baselines only. The leaderboard adds the
model section (the library's defaults, a training budget, a seed; or a tuned config), so no
task carries a setting chosen on its test conditions. Which conditions are held out is fixed
here, before any result: the published choices (the 5 Norman pairs whose singles are
measured, every Kang cell type, the sci-Plex-like fold 0 and dose 1,000 nM, the synthetic
task's flagged unseen drugs) or a seeded draw (the 3 McFaline perturbations).

Data: ``norman_mcfaline`` is shipped; Kang (GPL-3) and the sci-Plex SMILES table are read from
the shared data directory, never copied; the McFaline subset is written into the run directory
(it is the BSD-3 PerturBench file restricted to its GBM cell lines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from condmonge.datasets import norman_mcfaline

KANG = "kang2018_pbmc_ifnb_scgen_valid.h5ad"
SMILES = "drug_metadata/trapnell_drugs_smiles.csv"
NORMAN_PAIRS = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
KANG_TYPES = ["CD4T", "FCGR3A+Mono", "CD14+Mono", "B", "NK", "CD8T", "Dendritic"]  # largest first
MCFALINE_LINE = "U87MG"
KEYS = {"condition_key": "condition", "control": "control"}
WITH_TYPE = {**KEYS, "cell_type_key": "cell_type"}
SCIPLEX_KEYS = {**WITH_TYPE, "dose_key": "dose"}


@dataclass(frozen=True)
class Task:
    """One leaderboard task: named experiment trees (pooled as the task's held-out conditions).

    Attributes:
      name: short id (table rows, file names).
      title: what is held out, in words.
      kind: the kind of question (what the condition-level validation should carve out of
        training: combination, cell_type, perturbation, dose).
      experiments: ``{tag: experiment tree without model.train}``; one per held-out unit
        when the task needs several trainings (Kang: one per cell type).
      real: measured cells (True) or a generator with known maps (False: L2-UVP reported).
      notes: what the task is, for the report.
    """

    name: str
    title: str
    kind: str
    experiments: dict[str, dict[str, Any]]
    real: bool = True
    notes: list[str] = field(default_factory=list)


def _tree(dataset: str, split: dict[str, Any], keys: dict[str, Any], **rest: Any) -> dict:
    """An experiment tree: dataset, split (seed 0), baselines, evaluation, model data keys."""
    tree = {
        "dataset": dataset,
        "split": {**split, "seed": 0},
        "baselines": rest.pop("baselines", ["identity", "mean_shift", "linear"]),
        "evaluation": {"max_cells": 500, "headline_metric": rest.pop("headline", "r2_delta_top20")},
        "model": {"data": dict(keys)},
    }
    return tree | rest


def norman_combination() -> Task:
    """Norman K562: the 5 gene pairs whose two singles are measured (additive can predict them)."""
    tree = _tree(
        "norman_mcfaline",
        {"kind": "combination", "holdout": NORMAN_PAIRS},
        WITH_TYPE,
        baselines=["identity", "mean_shift", "additive", "linear"],
    )
    return Task(
        "norman_combination", "Norman K562: 5 gene pairs out", "combination",
        {"pairs": tree}, notes=["held out: " + ", ".join(NORMAN_PAIRS)],
    )  # fmt: skip


def mcfaline_perturbations(seed: int = 0) -> list[str]:
    """The 3 perturbations held out in U87MG: a seeded draw from the sorted GBM perturbations."""
    adata = norman_mcfaline()
    obs = adata.obs[adata.obs["cell_type"].astype(str) == MCFALINE_LINE]
    names = sorted(set(obs["condition"].astype(str)) - {"control"})
    return sorted(np.random.default_rng(seed).choice(names, 3, replace=False).tolist())


def mcfaline_data(run_dir: Path) -> Path:
    """The McFaline-Figueroa 2023 GBM lines (A172, T98G, U87MG) of the shipped file (once)."""
    path = run_dir / "data" / "mcfaline23.h5ad"
    if not path.is_file():
        adata = norman_mcfaline()
        adata = adata[(adata.obs["dataset"] == "mcfaline23").to_numpy()].copy()
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
        path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(path)
    return path


def mcfaline_cell_type(run_dir: Path) -> Task:
    """McFaline GBM lines: 3 perturbations held out in U87MG only (seen in A172 and T98G)."""
    held = mcfaline_perturbations()
    tree = _tree(
        str(mcfaline_data(run_dir).resolve()),
        {"kind": "condition", "holdout": [f"{p}@{MCFALINE_LINE}" for p in held]},
        WITH_TYPE,
    )
    return Task(
        "mcfaline_cell_type", f"McFaline: 3 perturbations out in {MCFALINE_LINE}", "cell_type",
        {"u87mg": tree},
        notes=[f"held out in {MCFALINE_LINE} (seeded draw, seed 0): " + ", ".join(held)],
    )  # fmt: skip


def kang_cell_type(data_dir: Path, types: list[str]) -> Task:
    """Kang 2018 PBMC IFN-beta: each cell type's stimulated cells out in turn (one run each)."""
    trees = {
        t: _tree(
            str(data_dir / KANG),
            {"kind": "cell_type", "holdout": [t]},
            WITH_TYPE,
            embeddings={"cell_type": "controls"},
            effect={"n_components": 5},
        )
        for t in types
    }
    return Task(
        "kang_cell_type", "Kang PBMC: each cell type out", "cell_type", trees,
        notes=["the held-out type is placed by its mean control profile (embeddings: controls)"],
    )  # fmt: skip


def sciplex_settings(data_dir: Path, n_drugs: int, n_cells: int) -> dict[str, Any]:
    """The ``sciplex_like`` generator section (generator seed 0, 50 features)."""
    return {
        "smiles": str(data_dir / SMILES), "n_drugs": n_drugs, "n_cells": n_cells,
        "n_features": 50, "seed": 0,
    }  # fmt: skip


def sciplex_embedding(data_dir: Path, embedding: str) -> dict[str, str]:
    """The ``embeddings`` section for a drug representation (``onehot``: none)."""
    path = data_dir / SMILES
    specs = {
        "smiles": f"smiles:{path}",
        "effect": "effect",
        "effect+smiles": f"effect+smiles:{path}",
    }
    return {} if embedding == "onehot" else {"condition": specs[embedding]}


def sciplex_drug_out(data_dir: Path, n_drugs: int, n_cells: int, embedding="smiles") -> Task:
    """sci-Plex-like: the drugs of fold 0 of a 5-fold CV over drugs are never seen."""
    tree = _tree(
        "sciplex_like", {"kind": "kfold", "n_folds": 5, "fold": 0}, SCIPLEX_KEYS,
        embeddings=sciplex_embedding(data_dir, embedding), effect={"n_components": 10},
        sciplex_like=sciplex_settings(data_dir, n_drugs, n_cells),
    )  # fmt: skip
    return Task(
        "sciplex_drug_out", f"sci-Plex-like: unseen drugs ({n_drugs} drugs, fold 0 of 5)",
        "perturbation", {embedding: tree}, real=False,
        notes=[f"drugs placed by `{embedding}`; known maps (L2-UVP)"],
    )  # fmt: skip


def sciplex_dose_out(data_dir: Path, n_drugs: int, n_cells: int, embedding="smiles") -> Task:
    """sci-Plex-like: every drug at 1,000 nM held out (the other three doses seen)."""
    tree = _tree(
        "sciplex_like", {"kind": "dose", "holdout": [1000.0]}, SCIPLEX_KEYS,
        embeddings=sciplex_embedding(data_dir, embedding), effect={"n_components": 10},
        sciplex_like=sciplex_settings(data_dir, n_drugs, n_cells),
    )  # fmt: skip
    return Task(
        "sciplex_dose_out", f"sci-Plex-like: dose 1,000 nM out ({n_drugs} drugs)", "dose",
        {embedding: tree}, real=False, notes=[f"drugs placed by `{embedding}`; known maps"],
    )  # fmt: skip


def synthetic_unseen(n_cells: int, oracle: bool) -> Task:
    """Convex maps, d = 50: 40 drugs, the last 10 unseen, embedding table given."""
    tree = _tree(
        "synthetic", {"kind": "condition"}, KEYS,
        baselines=["identity", "mean_shift", "linear"] + (["monge_gap"] if oracle else []),
        synthetic={"n_conditions": 40, "n_features": 50, "n_cells": n_cells, "embedding_dim": 8,
                   "n_unseen": 10, "seed": 0},
        monge_gap={"steps": 500},
    )  # fmt: skip
    return Task(
        "synthetic_unseen", "Synthetic convex maps: 10 of 40 drugs unseen (d = 50)",
        "perturbation", {"unseen": tree}, real=False,
        notes=["monge_gap_oracle: one Monge gap map per unseen drug fitted on its test cells"],
    )  # fmt: skip


def in_distribution(n_cells: int, n_conditions: int) -> dict[str, Any]:
    """Held-out *cells* of seen conditions (random split): conditional vs per-condition maps.

    The synthetic convex task (d = 50, every drug seen); ``monge_gap`` is then a competitor
    (one Monge gap map per condition, trained on that condition's training cells).
    """
    return _tree(
        "synthetic", {"kind": "random", "fraction": 0.25}, KEYS,
        baselines=["identity", "mean_shift", "monge_gap"],
        synthetic={"n_conditions": n_conditions, "n_features": 50, "n_cells": n_cells,
                   "embedding_dim": 8, "n_unseen": 0, "seed": 1},
        monge_gap={"steps": 500}, headline="r2_delta_all",
    )  # fmt: skip
