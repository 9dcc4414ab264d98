"""Which condition-level validation ``data.validation: auto`` chooses on the real tasks.

    python benchmarks/validation_kinds.py [--data-dir ../shared/data] [--seed 0]

For each task (Norman combination-out, McFaline cell-type-out, Kang cell-type-out, sci-Plex-like
drug-out and dose-out) the split is made as the leaderboard makes it, the training and test
conditions are labelled as ``condmonge train --split-key`` labels them, and
:func:`condmonge.data.validation.choose_validation` is run with the default settings. No
training: it reports the inferred kind, how many training conditions are held back for
validation and which. The Kang file (GPL-3) is read from the shared directory, never copied.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad

from condmonge.data.prepare import label_cells
from condmonge.data.spec import ConditionSpec
from condmonge.data.splits import SplitPlan, make_split
from condmonge.data.validation import choose_validation
from condmonge.datasets.sciplex_like import sciplex_like

NAME = "validation_kinds"
NORMAN = "norman2019_mcfaline2023_perturbench_devel.h5ad"
KANG = "kang2018_pbmc_ifnb_scgen_valid.h5ad"
NORMAN_PAIRS = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]


def _choice(adata: ad.AnnData, spec: ConditionSpec, plan: SplitPlan, seed: int) -> dict:
    split = make_split(adata, plan, spec, key_added="split").to_numpy()
    train = label_cells(adata[split == "train"], spec).conditions
    test = label_cells(adata[split == "test"], spec).conditions
    start = time.perf_counter()
    choice = choose_validation(train, test, seed=seed)
    record = choice.record(train, spec.combination_sep)
    return {
        "split": plan.kind,
        "train_conditions": len(train),
        "test_conditions": len(test),
        "mode": record["mode"],
        "kind": record["kind"],
        "validation_conditions": len(record["conditions"]),
        "examples": record["conditions"][:4],
        "reason": record["reason"],
        "ms": round(1000 * (time.perf_counter() - start), 1),
    }


def _tasks(root: Path, seed: int):
    norman = ad.read_h5ad(root / NORMAN)
    spec = ConditionSpec(condition_key="condition", cell_type_key="cell_type")
    yield "norman_combination", norman, spec, SplitPlan("combination", NORMAN_PAIRS, seed=seed)
    mcfaline = norman[norman.obs["dataset"] == "mcfaline23"].copy()
    held = [f"{g}@U87MG" for g in ("MAP2K3", "MAPK1", "MAP4K3")]
    yield "mcfaline_cell_type", mcfaline, spec, SplitPlan("condition", held, seed=seed)
    if (root / KANG).is_file():
        kang = ad.read_h5ad(root / KANG)
        yield "kang_cd14_mono", kang, spec, SplitPlan("cell_type", ["CD14+Mono"], seed=seed)
    task = sciplex_like(n_cells=20, n_features=8, seed=seed)
    dosed = ConditionSpec(condition_key="condition", dose_key="dose", cell_type_key="cell_type")
    yield "sciplex_like_drug_out", task.adata, dosed, SplitPlan("perturbation", seed=seed)
    yield "sciplex_like_dose_out", task.adata, dosed, SplitPlan("dose", seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = (
        Path(args.data_dir)
        if args.data_dir
        else Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    tasks = {
        name: _choice(adata, spec, plan, args.seed)
        for name, adata, spec, plan in _tasks(root, args.seed)
    }
    print(json.dumps({"benchmark": NAME, "seed": args.seed, "tasks": tasks}))


if __name__ == "__main__":
    main()
