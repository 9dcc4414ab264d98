"""Train/test splits: exact expectations per kind, and properties over random obs tables."""

from itertools import combinations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condmonge.data.spec import ConditionSpec
from condmonge.data.splits import (
    SPLIT_KINDS,
    make_split,
    perturbation_folds,
    split_summary,
)
from condmonge.errors import ConfigError, DataError, UnknownConditionError
from conftest import make_adata

SPEC = ConditionSpec(dose_key="dose", cell_type_key="cell_type")


def obs_adata(rows, seed=0):
    """AnnData (obs only) from (condition, cell_type, dose, n_cells) rows, cells shuffled."""
    records = [r[:3] for r in rows for _ in range(r[3])]
    order = np.random.default_rng(seed).permutation(len(records))
    frame = pd.DataFrame([records[i] for i in order], columns=["condition", "cell_type", "dose"])
    frame.index = [f"cell{i}" for i in range(len(frame))]
    frame["condition"] = frame["condition"].astype("category")
    return ad.AnnData(obs=frame)


@pytest.fixture(scope="module")
def data():
    return make_adata(
        n_per_condition=10, d=2, conditions=("A", "B", "C", "A+B", "B+C"), cell_types=["k1", "k2"],
        doses=[1.0, 10.0],
    )  # fmt: skip


def sides(adata, split):
    obs = adata.obs.assign(side=split.astype(str).to_numpy())
    treated = obs[obs["condition"].astype(str) != "control"]
    return treated[treated.side == "train"], treated[treated.side == "test"]


def test_random_split_is_stratified_with_exact_counts(data):
    split = make_split(data, "random", SPEC, fraction=0.2, seed=3)
    assert isinstance(split.dtype, pd.CategoricalDtype)
    assert list(split.cat.categories) == ["train", "test"]
    assert split.index.equals(data.obs_names)
    assert data.obs["split"].equals(split)
    counts = (
        data.obs.assign(s=split)
        .groupby(["condition", "dose", "cell_type", "s"], observed=True)
        .size()
    )
    treated = counts.drop("control", level="condition")
    assert (treated.xs("test", level="s") == 2).all()  # 0.2 * 10 cells of every condition
    assert (treated.xs("train", level="s") == 8).all()
    controls = counts.loc["control"].groupby(["cell_type", "s"], observed=True).sum()
    assert controls.to_dict() == {
        ("k1", "train"): 7,
        ("k1", "test"): 3,
        ("k2", "train"): 7,
        ("k2", "test"): 3,
    }  # 0.25 * 10 = 2.5, rounded half up


def test_same_seed_same_split_other_seed_other_split(data):
    a = make_split(data, "random", SPEC, seed=1, key_added=None)
    b = make_split(data, "random", SPEC, seed=1, key_added=None)
    c = make_split(data, "random", SPEC, seed=2, key_added=None)
    assert a.equals(b) and not a.equals(c)


def test_condition_out_by_label_in_any_order_and_by_key(data):
    split = make_split(data, "condition", SPEC, holdout=["B+A"])
    train, test = sides(data, split)
    assert set(test.condition) == {"A+B"} and len(test) == 40  # 2 doses x 2 cell types x 10
    assert "A+B" not in set(train.condition)
    assert data.uns["split"]["holdout"] == ["B+A"] and data.uns["split"]["kind"] == "condition"
    split = make_split(data, "condition", SPEC, holdout=["A+B|dose=10+10|cell_type=k2"])
    _, test = sides(data, split)
    assert len(test) == 10 and set(test.cell_type) == {"k2"} and set(test.dose) == {10.0}


def test_perturbation_out_takes_every_dose_and_combination(data):
    split = make_split(data, "perturbation", SPEC, holdout=["A"])
    train, test = sides(data, split)
    assert set(test.condition) == {"A", "A+B"} and len(test) == 80
    assert set(train.condition) == {"B", "C", "B+C"}


def test_dose_out_default_is_highest_dose_and_per_drug(data):
    split = make_split(data, "dose", SPEC)
    train, test = sides(data, split)
    assert set(test.dose) == {10.0} and set(train.dose) == {1.0}
    split = make_split(data, "dose", SPEC, holdout=["A=10"])
    train, test = sides(data, split)
    assert set(test.condition) == {"A", "A+B"} and set(test.dose) == {10.0}
    assert set(train[train.dose == 10.0].condition) == {"B", "C", "B+C"}
    from_mapping = make_split(data, "dose", SPEC, holdout={"A": 10}, key_added=None)
    assert from_mapping.equals(split)


def test_combination_out_keeps_singles_in_training(data):
    split = make_split(data, "combination", SPEC, holdout=["C+B"])
    train, test = sides(data, split)
    assert set(test.condition) == {"B+C"}
    assert {"B", "C"} <= set(train.condition)
    random = make_split(data, "combination", SPEC, seed=0)
    _, test = sides(data, random)
    assert set(test.condition) in ({"A+B"}, {"B+C"})


def test_combination_with_unseen_single_is_refused():
    adata = obs_adata([("control", "k", 0, 4), ("A", "k", 1, 3), ("A+B", "k", 1, 3)])
    with pytest.raises(DataError, match="'B' never occur"):
        make_split(adata, "combination", holdout=["A+B"])
    with pytest.raises(DataError, match="not a combination"):
        make_split(adata, "combination", holdout=["A"])


def test_cell_type_out_keeps_its_controls_on_both_sides(data):
    split = make_split(data, "cell_type", SPEC, holdout=["k2"])
    train, test = sides(data, split)
    assert set(test.cell_type) == {"k2"} and set(train.cell_type) == {"k1"}
    controls = data.obs[data.obs.condition == "control"].assign(s=split)
    assert set(zip(controls.cell_type, controls.s, strict=True)) == {
        ("k1", "train"), ("k1", "test"), ("k2", "train"), ("k2", "test")
    }  # fmt: skip


def test_kfold_folds_partition_the_perturbations(data):
    folds = perturbation_folds(data, 3, seed=5)
    assert sorted(p for f in folds for p in f) == ["A", "B", "C"]
    assert all(len(f) == 1 for f in folds)
    for fold, held in enumerate(folds):
        split = make_split(data, "kfold", SPEC, n_folds=3, fold=fold, seed=5)
        train, test = sides(data, split)
        assert all(held[0] in c.split("+") for c in set(test.condition))
        assert not any(held[0] in c.split("+") for c in set(train.condition))


def test_split_summary_counts(data):
    make_split(data, "condition", SPEC, holdout=["A+B", "C"], key_added="fold0")
    summary = split_summary(data, "fold0")
    assert summary.loc["test"].to_dict() == {
        "cells": 86, "control_cells": 6, "treated_cells": 80, "conditions": 2,
        "perturbations": 3, "unseen": 2,
    }  # fmt: skip
    assert summary.loc["train", "unseen"] == 0 and summary.loc["train", "conditions"] == 3
    assert summary["cells"].sum() == data.n_obs


@pytest.mark.parametrize(
    ("kind", "kwargs", "error", "message"),
    [
        ("condition", {"holdout": ["A+D"]}, UnknownConditionError, "did you mean 'A+B'"),
        ("perturbation", {"holdout": ["Bb"]}, UnknownConditionError, "did you mean 'B'"),
        ("cell_type", {"holdout": ["k3"]}, UnknownConditionError, "did you mean 'k"),
        ("dose", {"holdout": [5]}, UnknownConditionError, "doses there: 1, 10"),
        ("dose", {"holdout": ["A=x"]}, ConfigError, "not a number"),
        ("combination", {"holdout": ["A+C"]}, UnknownConditionError, "combination 'A+C'"),
        ("randon", {}, ConfigError, "did you mean 'random'"),
        ("random", {"fraction": 1.5}, ConfigError, "strictly between 0 and 1"),
        ("random", {"holdout": ["A"]}, ConfigError, "takes no holdout"),
        ("kfold", {"n_folds": 4}, DataError, "3 perturbations, too few for 4 folds"),
        ("kfold", {"n_folds": 3, "fold": 3}, ConfigError, "fold must be"),
        ("perturbation", {"holdout": ["A", "B", "C"]}, DataError, "no treated cells in train"),
    ],
)
def test_bad_requests_raise_one_clear_error(data, kind, kwargs, error, message):
    with pytest.raises(error, match=message.replace("+", r"\+")):
        make_split(data, kind, SPEC, key_added=None, **kwargs)


def test_missing_columns_and_too_few_controls():
    adata = obs_adata([("control", "k", 0, 1), ("A", "k", 1, 3), ("B", "k", 1, 3)])
    with pytest.raises(DataError, match="1 control cell"):
        make_split(adata, "random")
    with pytest.raises(DataError, match="needs the dose column"):
        make_split(adata, "dose")
    with pytest.raises(DataError, match="no column 'cell_typ'.*did you mean 'cell_type'"):
        make_split(adata, "cell_type", ConditionSpec(cell_type_key="cell_typ"))
    with pytest.raises(DataError, match="control label 'ctrl' not found"):
        make_split(adata, "random", ConditionSpec(control="ctrl"))


# --- properties over random small obs tables -------------------------------------------------

PERTURBATIONS = ["A", "B", "C", "D"]


@st.composite
def obs_tables(draw):
    perts = PERTURBATIONS[: draw(st.integers(2, 4))]
    pairs = [f"{b}+{a}" for a, b in combinations(perts, 2)]  # written unsorted on purpose
    combos = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=3))
    cell_types = [f"t{i}" for i in range(draw(st.integers(1, 3)))]
    doses = draw(st.sampled_from([[1.0], [1.0, 10.0]]))
    rows = []
    for cell_type in cell_types:
        rows.append(("control", cell_type, 0.0, draw(st.integers(2, 6))))
        for cond in perts + combos:
            for dose in doses:
                rows.append((cond, cell_type, dose, draw(st.integers(2, 4))))
    return obs_adata(rows, seed=draw(st.integers(0, 100)))


def canonical(label):
    return "+".join(sorted(label.split("+")))


def check_partition_and_controls(adata, split):
    assert split.index.equals(adata.obs_names)
    assert split.notna().all() and set(split.astype(str)) <= {"train", "test"}
    obs = adata.obs.assign(s=split.astype(str).to_numpy())
    controls = obs[obs.condition == "control"]
    for cell_type in adata.obs.cell_type.unique():
        assert set(controls[controls.cell_type == cell_type].s) == {"train", "test"}
    treated = obs[obs.condition != "control"]
    assert set(treated.s) == {"train", "test"}
    labels = treated.condition.astype(str).map(canonical)
    return set(labels[treated.s == "train"]), set(labels[treated.s == "test"]), treated


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(adata=obs_tables(), seed=st.integers(0, 2**16), kind=st.sampled_from(SPLIT_KINDS))
def test_split_properties(adata, seed, kind):
    multi_dose = adata.obs.dose[adata.obs.condition != "control"].nunique() > 1
    n_types = adata.obs.cell_type.nunique()
    has_combo = adata.obs.condition.astype(str).str.contains(r"\+").any()
    if (
        (kind == "dose" and not multi_dose)
        or (kind == "cell_type" and n_types < 2)
        or (kind == "combination" and not has_combo)
    ):
        kind = "random"
    kw = dict(seed=seed, key_added=None)
    if kind == "kfold":
        kw.update(n_folds=2, fold=seed % 2)
    split = make_split(adata, kind, SPEC, **kw)
    assert make_split(adata, kind, SPEC, **kw).equals(split)  # determinism
    train, test, treated = check_partition_and_controls(adata, split)
    perts_in = lambda labels: {p for lab in labels for p in lab.split("+")}  # noqa: E731
    if kind == "random":
        assert test <= train
    elif kind in ("condition", "combination"):
        assert not train & test
        if kind == "combination":
            assert all("+" in lab and set(lab.split("+")) <= train for lab in test)
    elif kind in ("perturbation", "kfold"):
        held = perts_in(test) - perts_in(train)
        assert held and all(set(lab.split("+")) & held for lab in test)
        if kind == "kfold":
            folds = perturbation_folds(adata, 2, seed=seed)
            assert held == set(folds[seed % 2])
    elif kind == "dose":
        side = split[treated.index].astype(str)
        assert set(treated.dose[side == "test"]) == {10.0}
        assert set(treated.dose[side == "train"]) == {1.0}
    elif kind == "cell_type":
        side = split[treated.index].astype(str)
        assert not set(treated.cell_type[side == "train"]) & set(treated.cell_type[side == "test"])


@settings(max_examples=25, deadline=None, database=None)
@given(n=st.integers(2, 12), n_folds=st.integers(2, 6), seed=st.integers(0, 1000))
def test_kfold_folds_partition_any_perturbation_set(n, n_folds, seed):
    names = [f"P{i}" for i in range(n)]
    adata = obs_adata([("control", "k", 0.0, 2)] + [(p, "k", 1.0, 1) for p in names])
    if n_folds > n:
        with pytest.raises(DataError, match="too few"):
            perturbation_folds(adata, n_folds, seed=seed)
        return
    folds = perturbation_folds(adata, n_folds, seed=seed)
    assert sorted(p for f in folds for p in f) == sorted(names)
    sizes = [len(f) for f in folds]
    assert len(folds) == n_folds and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert perturbation_folds(adata, n_folds, seed=seed) == folds


def test_split_column_never_overwrites_an_input_column(data):
    with pytest.raises(ConfigError, match="would overwrite"):
        make_split(data, "random", SPEC, key_added="cell_type")
    assert "train" not in set(data.obs["cell_type"])


def test_duplicate_obs_names_are_written_positionally():
    adata = obs_adata([("control", "k", 0, 4), ("A", "k", 1, 3), ("B", "k", 1, 3)])
    adata.obs_names = ["x"] * adata.n_obs
    split = make_split(adata, "condition", holdout=["A"])
    assert (adata.obs["split"].to_numpy() == split.to_numpy()).all()
