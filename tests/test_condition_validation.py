"""Condition-level validation: the held-back conditions are of the right kind, never test ones.

Property tests (hypothesis) on random condition grids, then the wiring: ``fit`` trains without
the validation conditions, records the choice in the checkpoint, falls back with a warning, and
the CLI refuses a bad value in one line.
"""

import shutil
import subprocess
import sys
import warnings

import anndata as ad
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import condmonge as cm
from condmonge.data.pca import auto_components
from condmonge.data.spec import Condition
from condmonge.data.validation import KINDS, choose_validation, describe, infer_kind
from condmonge.errors import ConfigError, DataWarning
from condmonge.train import fit as fit_module
from condmonge.train.persistence import load_trained
from condmonge.train.trainer import clear_compiled_training
from conftest import make_adata, tiny_config

NAMES = [f"d{i}" for i in range(8)]


def C(perts, dose=1.0, cell_type=None, cov=()):  # noqa: N802  a short constructor
    perts = tuple(sorted(perts))
    return Condition(perts, (dose,) * len(perts), cell_type, tuple(cov))


@st.composite
def grids(draw):
    """Every condition of a random grid: singles, some combos, cell types and doses."""
    n_names = draw(st.integers(3, 7))
    names = NAMES[:n_names]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    combos = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=6))
    types = ["k1", "k2", "k3"][: draw(st.integers(1, 3))]
    doses = [1.0, 10.0, 100.0][: draw(st.integers(1, 3))]
    return sorted(
        {
            C(p, dose, t)
            for t in types
            for dose in doses
            for p in [(n,) for n in names] + combos
            if draw(st.floats(0, 1)) < 0.9 or len(p) > 1
        }
    )


def _split(conditions, kind, rng):
    """A test set of ``kind`` (and the training rest) from a full grid, or ``None``."""
    if kind == "combination":
        # A combination held out in every cell type, its singles measured.
        singles = {c.perturbations for c in conditions if len(c.perturbations) == 1}
        combos = sorted({c.perturbations for c in conditions if len(c.perturbations) > 1})
        held = [p for p in combos if all((n,) in singles for n in p)][:2]
        test = [c for c in conditions if c.perturbations in held]
    elif kind == "perturbation":
        name = NAMES[int(rng.integers(3))]
        test = [c for c in conditions if name in c.perturbations]
    elif kind == "cell_type":
        types = sorted({c.cell_type for c in conditions})
        if len(types) < 2:
            return None
        test = [c for c in conditions if c.cell_type == types[0] and c.perturbations == ("d0",)]
        if not any(c.perturbations == ("d0",) and c.cell_type != types[0] for c in conditions):
            return None  # d0 alone is measured nowhere else: a perturbation-out question
    elif kind == "dose":
        doses = sorted({c.doses[0] for c in conditions})
        if len(doses) < 2:
            return None
        lower = {
            c.cell_type for c in conditions if c.perturbations == ("d1",) and c.doses[0] < doses[-1]
        }
        test = [
            c
            for c in conditions
            if c.perturbations == ("d1",) and c.doses[0] == doses[-1] and c.cell_type in lower
        ]
    else:
        test = []
    train = [c for c in conditions if c not in set(test)]
    return (train, test) if (test or kind == "random") and train else None


def _check_kind(kind, train, val, rest):
    """The validation conditions ask the same question of ``rest`` as the test set of ``train``."""
    rest_perts = {c.perturbations for c in rest}
    if kind == "combination":
        singles = {(c.perturbations, c.cell_type) for c in rest}
        names = {p for c in rest for p in c.perturbations}
        measured = [  # training combinations whose singles are measured
            c
            for c in train
            if len(c.perturbations) > 1
            and all(((p,), c.cell_type) in singles for p in c.perturbations)
        ]
        for c in val:  # every single of a validation combination stays in training ...
            assert len(c.perturbations) > 1
            if measured:
                assert all(((p,), c.cell_type) in singles for p in c.perturbations)
            else:  # ... or, when no combination has them, every perturbation stays seen
                assert set(c.perturbations) <= names
    elif kind == "perturbation":
        names = {p for c in rest for p in c.perturbations}
        assert all(any(p not in names for p in c.perturbations) for c in val)
    elif kind == "cell_type":
        pairs = {(c.perturbations, c.cell_type) for c in rest}
        for c in val:  # a seen perturbation in a cell type where it is not trained
            assert (c.perturbations, c.cell_type) not in pairs
            assert c.perturbations in rest_perts
    elif kind == "dose":
        groups = {(c.perturbations, c.cell_type) for c in rest}
        assert all((c.perturbations, c.cell_type) in groups for c in val)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    conditions=grids(),
    kind=st.sampled_from(["combination", "perturbation", "cell_type", "dose", "random"]),
    seed=st.integers(0, 2**16),
    share=st.floats(0.05, 0.6),
)
def test_validation_is_training_conditions_of_the_test_kind(conditions, kind, seed, share):
    split = _split(conditions, kind, np.random.default_rng(seed))
    if split is None:
        return
    train, test = split
    plan = choose_validation(train, test, share=share, seed=seed)
    again = choose_validation(train, test, share=share, seed=seed)
    assert plan == again  # deterministic given the seed
    if plan.mode == "cells":
        assert plan.condition_ids == () and plan.reason
        assert plan.fallback or infer_kind(train, test)[0] is None
        return
    val = [train[i] for i in plan.condition_ids]
    rest = [c for i, c in enumerate(train) if i not in set(plan.condition_ids)]
    assert val and rest and len(rest) >= len(train) / 2
    assert set(plan.condition_ids) <= set(range(len(train)))  # validation ⊂ training
    assert not set(val) & set(test)  # validation ∩ test = ∅
    assert plan.kind == kind  # the kind of the question asked
    _check_kind(kind, train, val, rest)


def test_inferred_kinds_of_typical_holdouts():
    singles = [C([n], cell_type=t) for n in NAMES[:4] for t in ("a", "b")]
    combos = [C(["d0", "d1"], cell_type="a"), C(["d2", "d3"], cell_type="a")]
    assert infer_kind(singles + combos[:1], combos[1:])[0] == "combination"
    assert infer_kind(singles[2:], singles[:2])[0] == "perturbation"  # d0 unseen
    assert infer_kind(singles[1:], singles[:1])[0] == "cell_type"  # d0 seen in b only
    dosed = [C(["d0"], dose) for dose in (1.0, 10.0, 100.0)]
    assert infer_kind(dosed[:2], dosed[2:])[0] == "dose"
    timed = [C(["d0"], cov=(t,)) for t in (1.0, 2.0, 3.0)]
    assert infer_kind(timed[:2], timed[2:])[0] == "covariate"
    assert infer_kind(singles, [])[0] == "random"
    assert infer_kind(singles, singles[:2])[0] is None  # held-out cells of seen conditions


def test_few_conditions_fall_back_to_cells_and_say_how_to_choose():
    train = [C(["d0"]), C(["d1"]), C(["d0", "d1"])]
    plan = choose_validation(train, [C(["d2"])])
    assert (plan.mode, plan.fallback) == ("cells", True)
    assert "only 3 training condition(s)" in plan.reason
    assert "data.validation=cells" in plan.reason
    assert choose_validation(train, mode="cells").fallback is False
    singles = [C([n]) for n in NAMES]  # combination asked, but no training combination
    plan = choose_validation(singles, kind="combination")
    assert plan.fallback and "fewer than two training combinations" in plan.reason


def test_explicit_kind_and_share():
    train = [C([n], dose) for n in NAMES for dose in (1.0, 10.0, 100.0)]  # 24 conditions
    plan = choose_validation(train, kind="dose", share=0.25, seed=3)
    assert plan.kind == "dose" and len(plan.condition_ids) == 6
    # No test dose: non-extreme doses only, so every group keeps its lowest and highest.
    assert {train[i].doses for i in plan.condition_ids} == {(10.0,)}
    plan = choose_validation(train, kind="perturbation", share=0.25, seed=3)
    held = {train[i].perturbations for i in plan.condition_ids}
    assert len(plan.condition_ids) == 3 * len(held) >= 6  # all three doses of each drug
    record = plan.record(train)
    assert record["kind"] == "perturbation" and len(record["conditions"]) == 3 * len(held)
    assert "perturbation" in describe(record) and "never trained on" in describe(record)


ADATA_CONDITIONS = ("A", "B", "C", "D", "E", "A+B", "C+D", "B+E")


@pytest.fixture(scope="module")
def combo_data():
    return make_adata(n_per_condition=20, d=4, conditions=ADATA_CONDITIONS)


def test_fit_holds_back_combinations_and_records_it(combo_data, tmp_path):
    model = cm.ConditionalMonge(tiny_config()).fit(
        combo_data, "condition", "control", holdout=["A+B"], checkpoint_dir=tmp_path
    )
    v = model.validation
    assert (v["mode"], v["kind"], v["fallback"]) == ("conditions", "combination", False)
    assert v["conditions"] in (["B+E|dose=1+1"], ["C+D|dose=1+1"])
    trained = {c.key() for c in model.conditions}
    assert not set(v["conditions"]) & trained  # never trained on
    assert "A+B|dose=1+1" not in trained and len(trained) == len(ADATA_CONDITIONS) - 2
    history = model.history
    assert {"val_loss", "val_fit"} <= set(history.columns)
    val = history.dropna(subset=["val_fit"])
    assert model.loop.best_val_loss == pytest.approx(val["val_fit"].min())
    assert (val["val_loss"] >= val["val_fit"] - 1e-6).all()  # the loss adds the Monge gap
    assert load_trained(tmp_path).validation == v  # in the checkpoint
    assert model.projection is None  # 4 features: data.n_pca "auto" keeps them (no PCA)


@pytest.mark.slow  # three fits (a resume); resume in general: test_api, test_reliability
def test_resume_with_condition_validation_is_bitwise(combo_data, tmp_path, monkeypatch):
    cfg = tiny_config(**{"train.steps": 8, "train.checkpoint_every": 4})
    saved = fit_module.save_trained

    def save_and_snapshot(directory, trained):  # keep the step-4 checkpoint of the first run
        out = saved(directory, trained)
        if int(trained.state.step) == 4 and directory == tmp_path / "a":
            shutil.copytree(directory, tmp_path / "b")
        return out

    monkeypatch.setattr(fit_module, "save_trained", save_and_snapshot)
    fit = {"holdout": ["A+B"], "checkpoint_dir": tmp_path / "a"}
    whole = cm.ConditionalMonge(cfg).fit(combo_data, "condition", "control", **fit)
    fit = {"holdout": ["A+B"], "checkpoint_dir": tmp_path / "b", "resume": True}
    clear_compiled_training()  # resume as a new process would: trace the step anew
    resumed = cm.ConditionalMonge(cfg).fit(combo_data, "condition", "control", **fit)
    assert resumed.validation == whole.validation and whole.validation["mode"] == "conditions"
    assert resumed.n_traces == 1 and int(resumed.state.step) == 8
    for a, b in zip(
        jax.tree.leaves((whole.params, whole.state.params, whole.state.opt_state)),
        jax.tree.leaves((resumed.params, resumed.state.params, resumed.state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def timeless(history):  # steps/s is a clock reading
        return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in history]

    assert timeless(resumed.loop.history) == timeless(whole.loop.history)
    assert resumed.loop.best_val_loss == whole.loop.best_val_loss


def test_fit_falls_back_with_a_warning(tmp_path):
    few = make_adata(n_per_condition=20, d=4, conditions=("A", "B", "A+B"))
    with pytest.warns(DataWarning, match="only 2 training condition"):
        model = cm.ConditionalMonge(tiny_config()).fit(few, "condition", "control", holdout=["B"])
    assert model.validation["mode"] == "cells" and model.validation["fallback"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        explicit = tiny_config(**{"data.validation": "cells"})
        cm.ConditionalMonge(explicit).fit(few, "condition", "control", holdout=["B"])


@pytest.mark.slow  # a fallback fit; the fallback rule: test_fit_falls_back_with_a_warning
def test_one_hot_perturbation_out_falls_back(combo_data):
    # Unseen perturbations cannot be one-hot encoded: held-back cells, and the warning says so.
    with pytest.warns(DataWarning, match="give an embedding table"):
        model = cm.ConditionalMonge(tiny_config(**{"data.validation_kind": "perturbation"})).fit(
            combo_data, "condition", "control"
        )
    assert model.validation["mode"] == "cells"


def test_cli_rejects_a_bad_validation_in_one_line(tmp_path):
    path = tmp_path / "d.h5ad"
    make_adata(n_per_condition=10, d=3).write_h5ad(path)
    for flag in ("--validation", "--validation-kind", "--n-pca"):
        result = subprocess.run(
            [sys.executable, "-m", "condmonge.cli", "train", str(path), "--out",
             str(tmp_path / "run"), "--condition-key", "condition", "--control", "control",
             flag, "folds"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:")
        assert f"Invalid value for '{flag}'" in lines[0] and "auto" in lines[0]  # the choices


def test_kinds_are_documented():
    assert set(KINDS) == {"combination", "perturbation", "cell_type", "dose", "covariate", "random"}


def test_the_shapes_of_kang_and_norman():
    # Kang: one perturbation across cell types; a held-out type has only controls in training.
    kang = [C(["stim"], cell_type=t) for t in "abcdef"]
    plan = choose_validation(kang, [C(["stim"], cell_type="g")])
    assert (plan.kind, len(plan.condition_ids)) == ("cell_type", 1)
    # Norman: no training pair has both singles measured; the pairs of seen genes stand in.
    train = [
        C(["a"]),
        C(["b"]),
        C(["c"]),
        C(["a", "x"]),
        C(["b", "x"]),
        C(["c", "y"]),
        C(["x", "y"]),
    ]
    plan = choose_validation(train, [C(["a", "b"])], seed=1)
    assert plan.kind == "combination" and "singles measured" in plan.reason
    (i,) = plan.condition_ids
    rest = {p for j, c in enumerate(train) if j != i for p in c.perturbations}
    assert len(train[i].perturbations) == 2 and set(train[i].perturbations) <= rest


# ------------------------------------------------------------- the automatic latent space


def test_auto_components_rule():
    assert auto_components(np.array([5.0, 3.0, 1.0, 0.5, 0.5])) == 3  # 9 of 10 = 90 %
    assert auto_components(np.ones(100)) == 50  # a flat spectrum hits the cap
    assert auto_components(np.array([1.0, 0.0])) == 1


@pytest.mark.slow  # a fit on 250 genes; the rule itself: test_auto_components_rule
def test_auto_pca_for_wide_inputs_only():
    rng = np.random.default_rng(0)
    wide = make_adata(n_per_condition=30, d=4, conditions=("A", "B"))
    # 250 genes: 4 signal directions (the conditions' shifts) plus small noise.
    mixing = rng.normal(size=(4, 250))
    wide = ad.AnnData(
        (wide.X @ mixing + 0.05 * rng.normal(size=(wide.n_obs, 250))).astype(np.float32),
        obs=wide.obs,
    )
    model = cm.ConditionalMonge(tiny_config()).fit(wide, "condition", "control")
    k = model.projection.components.shape[1]
    assert 1 <= k <= 4  # the signal, not the 250 noisy genes
    assert model.predict(wide[wide.obs["condition"] == "control"], ["A"]).n_vars == 250
    # Narrow inputs keep their features: test_fit_holds_back_combinations_and_records_it.
    for text, value in (("auto", "auto"), ("none", None), ("12", 12)):
        assert tiny_config(**{"data.n_pca": text}).data.n_pca == value
    with pytest.raises(ConfigError, match="n_pca must be a number, 'auto' or 'none'"):
        tiny_config(**{"data.n_pca": "many"})
