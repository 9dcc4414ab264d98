"""Published benchmark metrics (hand-computed values) and scoring any model's predictions."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from condmonge.cli import app
from condmonge.config import DataConfig
from condmonge.errors import CondMongeError, DataError
from condmonge.evaluate import published as pub
from condmonge.evaluate.de import DECache, DETable, rank_genes
from condmonge.evaluate.scoring import score_predictions

# ----------------------------------------------------------------------------- hand-computed


def test_pearson_and_cosine_by_hand():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])
    # centred: [-1, 0, 1] and [-1, 1, 0] -> 1 / (sqrt 2 * sqrt 2)
    assert pub.pearson(x, y) == pytest.approx(0.5)
    assert pub.cosine(x, y) == pytest.approx(13 / 14)
    assert np.isnan(pub.pearson(x, np.ones(3)))
    assert np.isnan(pub.cosine(x, np.zeros(3)))


def test_cosine_logfc_by_hand():
    ctrl = np.array([0.9, 0.1, 1.9])
    true = np.array([1.9, 0.1, 0.9])  # log2(2/1) = 1, 0, log2(1/2) = -1
    pred = np.array([3.9, 0.3, 1.9])  # log2(4/1) = 2, log2(0.4/0.2) = 1, 0
    assert pub.log2_fold_change(true, ctrl) == pytest.approx([1.0, 0.0, -1.0])
    assert pub.log2_fold_change(pred, ctrl) == pytest.approx([2.0, 1.0, 0.0])
    assert pub.cosine_logfc(pred, true, ctrl) == pytest.approx(2 / (np.sqrt(2) * np.sqrt(5)))
    # Undefined log (mean <= -0.1) is set to 0, as PerturBench does.
    assert pub.log2_fold_change(np.array([-1.0]), np.array([0.9]))[0] == 0.0


def test_rank_metric_by_hand():
    true = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Prediction 0 is closer to truth 2 than to truth 0's own (cos 1/sqrt2 vs ...): build so
    # that for truth 0 one other prediction is more similar than its own.
    pred = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # sim[i, q] = cos(pred q, true i):
    # true0: [0.707, 0, 1] -> own 0.707, one better -> rank 1/3
    # true1: [0.707, 1, 0] -> own 1, best -> 0
    # true2: [1, 0.707, 0.707] -> own 0.707 tied with pred1 (0.707), pred0 better -> 1.5/3
    assert pub.rank_metric(pred, true) == pytest.approx([1 / 3, 0.0, 1.5 / 3])


def test_discrimination_score_by_hand():
    true = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    pred = np.array([[1.9, 0.0], [2.0, 0.1], [0.0, 2.0]])
    # pred0: L1 to truths [1.9, 0.1, 4.9] -> own truth is 2nd -> rank 1 -> 1 - 1/3
    # pred1: [2.1, 0.1, 4.9] -> own 1st -> 1; pred2: [2, 4, 1] -> own 1st -> 1
    assert pub.discrimination_scores(pred, true) == pytest.approx([2 / 3, 1.0, 1.0])
    # Leaving gene 0 out of pred0's comparison: distances [0, 0, 3] -> tie of 2 -> rank 0.5.
    exclude = [np.array([True, False]), None, None]
    assert pub.discrimination_scores(pred, true, exclude)[0] == pytest.approx(1 - 0.5 / 3)


def test_de_overlap_precision_direction_by_hand():
    true, pred = ["a", "b", "c", "d"], ["b", "x", "a"]
    assert pub.de_overlap(true, pred, None, "overlap") == pytest.approx(2 / 4)
    assert pub.de_overlap(true, pred, None, "precision") == pytest.approx(2 / 3)
    assert pub.de_overlap(true, pred, 2, "overlap") == pytest.approx(1 / 2)  # {a,b} & {b,x}
    assert pub.de_overlap(true, pred, 50, "overlap") == pytest.approx(2 / 4)  # k' = 4
    assert pub.de_overlap([], pred, None, "overlap") == 0.0
    lfc_t, lfc_p = np.array([1.0, -2.0, 0.5, 3.0]), np.array([2.0, 1.0, -1.0, 0.1])
    sig = np.array([True, True, False, True])
    assert pub.de_direction_match(lfc_t, lfc_p, sig) == pytest.approx(2 / 3)
    assert np.isnan(pub.de_direction_match(lfc_t, lfc_p, np.zeros(4, bool)))


def test_de_table_ranking_and_significant_genes():
    t = DETable(np.array(["a", "b", "c"]), np.array([1.0, -5.0, 2.0]),
                np.array([0.5, -1.0, 2.0]), np.array([0.01, 0.2, 0.04]))  # fmt: skip
    assert list(t.top(2)) == [1, 2]
    assert t.ranked_significant() == ["c", "a"]


def test_rank_genes_finds_the_shifted_genes_and_caches():
    rng = np.random.default_rng(0)
    ctrl = rng.normal(size=(80, 6)).astype(np.float32)
    treated = rng.normal(size=(80, 6)).astype(np.float32)
    treated[:, 2] += 3.0
    treated[:, 4] -= 2.0
    genes = [f"g{i}" for i in range(6)]
    table = rank_genes({"t": treated}, ctrl, genes)["t"]
    assert set(table.top(2)) == {2, 4}
    assert table.fdr[2] < 1e-6 and table.fdr[4] < 1e-6
    assert np.sign(table.lfc[2]) == 1 and np.sign(table.lfc[4]) == -1
    cache = DECache()
    cache.rank({"t": treated}, ctrl, genes)
    again = cache.rank({"t": treated}, ctrl, genes)["t"]
    assert cache.computed == 1
    np.testing.assert_array_equal(again.score, table.score)


# ----------------------------------------------------------------------------- any prediction


def _truth(seed=0, conditions=("A", "B", "C", "D"), n=80, g=40):
    rng = np.random.default_rng(seed)
    genes = [f"gene{i}" for i in range(g)]
    x = [rng.gamma(2.0, 0.5, size=(n, g))]
    labels = ["ctrl"] * n
    for i, _ in enumerate(conditions):
        effect = np.zeros(g)
        effect[rng.choice(g, 8, replace=False)] = rng.choice([-0.8, 1.5], 8)
        x.append(np.maximum(rng.gamma(2.0, 0.5, size=(n, g)) + effect, 0.0))
        labels += [conditions[i]] * n
    obs = pd.DataFrame({"drug": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(np.concatenate(x).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))


def _plain_prediction(truth, keep, noise=0.0, seed=1, shuffle_genes=False):
    """A prediction with only a condition column and genes (as another tool might write)."""
    rng = np.random.default_rng(seed)
    rows = truth.obs["drug"].isin(keep).to_numpy()
    x = truth.X[rows] + noise * rng.normal(size=(rows.sum(), truth.n_vars)).astype(np.float32)
    genes = list(truth.var_names)
    order = rng.permutation(len(genes)) if shuffle_genes else np.arange(len(genes))
    obs = pd.DataFrame({"drug": truth.obs["drug"].to_numpy()[rows]},
                       index=[f"p{i}" for i in range(rows.sum())])  # fmt: skip
    return ad.AnnData(x[:, order], obs=obs, var=pd.DataFrame(index=[genes[i] for i in order]))


CFG = DataConfig(condition_key="drug", control="ctrl")


def test_plain_prediction_with_only_a_condition_column_is_scored():
    truth = _truth()
    pred = _plain_prediction(truth, ["A", "B", "C", "D"], shuffle_genes=True)
    assert list(pred.obs.columns) == ["drug"]
    table = score_predictions({"tool": pred}, truth, CFG, distributions=False)
    assert len(table) == 4 and set(table["label"]) == {"A", "B", "C", "D"}
    # Genes were shuffled: matched by name, the perfect prediction scores perfectly.
    for m in ("pearson_delta", "pearson_delta_de20", "cmonge_r2_mean_de50", "cosine_logfc",
              "de_overlap_at_N", "de_precision_at_N", "de_direction_match",
              "discrimination_score_l1"):  # fmt: skip
        assert table[m].to_numpy() == pytest.approx(1.0), m
    assert table["rank_cosine_logfc"].to_numpy() == pytest.approx(0.0)


def test_noisy_prediction_scores_below_a_perfect_one_and_coverage_is_reported():
    truth = _truth()
    good = _plain_prediction(truth, ["A", "B", "C", "D"])
    noisy = _plain_prediction(truth, ["A", "B", "C"], noise=1.5)
    noisy.obs["drug"] = noisy.obs["drug"].replace({"C": "E"})  # E: not in the truth
    table = score_predictions({"good": good, "noisy": noisy}, truth, CFG)
    cov = table.attrs["coverage"]["noisy"]
    assert cov["only_in_truth"] == ["C|dose=1", "D|dose=1"]
    assert cov["only_in_prediction"] == ["E|dose=1"]
    assert cov["n_scored"] == 2
    by = table.groupby("method")["pearson_delta"].mean()
    assert by["good"] == pytest.approx(1.0) and by["noisy"] < 0.99
    assert "mmd_rbf" in table.columns  # distribution metrics too


def test_missing_gene_is_reported_and_bad_inputs_are_one_line_errors():
    truth = _truth()
    pred = _plain_prediction(truth, ["A", "B"])[:, 1:].copy()
    table = score_predictions({"p": pred}, truth, CFG, distributions=False)
    assert table.attrs["coverage"]["p"]["genes_missing"] == ["gene0"]
    assert table.attrs["n_genes"] == truth.n_vars - 1
    with pytest.raises(CondMongeError, match="max_cells"):
        score_predictions({"p": pred}, truth, CFG, max_cells=0)
    with pytest.raises(DataError, match="obs column 'dose'"):
        score_predictions({"p": pred}, truth, DataConfig(condition_key="drug", control="ctrl",
                                                          dose_key="dose"))  # fmt: skip


def test_backed_files_are_streamed_like_in_memory(tmp_path):
    truth = _truth()
    pred = _plain_prediction(truth, ["A", "B", "C", "D"], noise=0.5)
    truth.write_h5ad(tmp_path / "t.h5ad")
    pred.write_h5ad(tmp_path / "p.h5ad")
    mem = score_predictions({"p": pred}, truth, CFG, distributions=False)
    disk = score_predictions(
        {"p": ad.read_h5ad(tmp_path / "p.h5ad", backed="r")},
        ad.read_h5ad(tmp_path / "t.h5ad", backed="r"), CFG, distributions=False,
        chunk_conditions=3,
    )  # fmt: skip
    cols = ["pearson_delta", "cosine_logfc", "de_overlap_at_N", "rank_cosine_logfc"]
    np.testing.assert_allclose(disk[cols].to_numpy(), mem[cols].to_numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- CLI


def test_cli_scores_three_predictions_side_by_side_with_baselines(tmp_path):
    truth = _truth(conditions=("A", "B", "A+B"))
    train = truth[truth.obs["drug"] != "A+B"].copy()
    test = truth
    test.write_h5ad(tmp_path / "truth.h5ad")
    train.write_h5ad(tmp_path / "train.h5ad")
    for i, (keep, noise) in enumerate([(["A", "B", "A+B"], 0.0), (["A", "B", "A+B"], 1.0),
                                       (["A", "B"], 0.3)]):  # fmt: skip
        _plain_prediction(test, keep, noise=noise, seed=i).write_h5ad(tmp_path / f"p{i}.h5ad")
    out = tmp_path / "m.json"
    args = ["evaluate", str(tmp_path / "truth.h5ad"), "--out", str(out),
            "--condition-key", "drug", "--control", "ctrl",
            "--figure", str(tmp_path / "lb.png"), "--scatter", str(tmp_path / "sc.png"),
            "--baselines", "--train", str(tmp_path / "train.h5ad"),
            "--no-distributions"]  # fmt: skip
    for i, name in enumerate(["exact", "noisy", "partial"]):
        args += ["--pred", f"{name}={tmp_path / f'p{i}.h5ad'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    methods = record["methods"]
    assert list(methods)[:3] == ["exact", "noisy", "partial"]
    assert {"identity", "mean_shift", "additive"} <= set(methods)
    assert methods["exact"]["aggregate"]["pearson_delta"]["mean"] == pytest.approx(1.0)
    assert methods["noisy"]["aggregate"]["pearson_delta"]["mean"] < 1.0
    assert methods["partial"]["coverage"]["only_in_truth"] == ["A+B|dose=1+1"]
    assert "partial: 1 condition(s) not predicted" in result.output
    assert "| exact |" in result.output and "| additive |" in result.output
    assert (tmp_path / "lb.png").stat().st_size > 0 and (tmp_path / "sc.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-cells", "0"], "--max-cells"),
        (["--baselines"], "--train"),
        (["--pred", "nofile"], "NAME=FILE"),
        (["--pred", "a=missing.h5ad"], "does not exist"),
        (["--baselines", "--train", "t.h5ad", "--de-method", "wilcox"], "unknown DE method"),
    ],
)
def test_cli_bad_evaluate_inputs_are_one_line_errors(tmp_path, extra, message):
    truth = _truth(conditions=("A",), n=20, g=10)
    truth.write_h5ad(tmp_path / "truth.h5ad")
    args = ["evaluate", str(tmp_path / "truth.h5ad"), "--out", str(tmp_path / "m.json"),
            "--condition-key", "drug", "--control", "ctrl", *extra]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_vectorised_wilcoxon_equals_scanpy_rank_genes_groups():
    rng = np.random.default_rng(3)
    g = 25
    genes = [f"g{i}" for i in range(g)]
    # Sparse-like log1p data: many exact zeros (ties) plus shifted genes.
    ctrl = np.log1p(rng.poisson(0.6, size=(70, g))).astype(np.float32)
    groups = {}
    for i in range(4):
        lam = np.full(g, 0.6)
        lam[rng.choice(g, 5, replace=False)] = rng.choice([0.1, 2.5], 5)
        groups[f"d{i}"] = np.log1p(rng.poisson(lam, size=(40 + 10 * i, g))).astype(np.float32)
    fast = rank_genes(groups, ctrl, genes, "wilcoxon")
    slow = rank_genes(groups, ctrl, genes, "scanpy-wilcoxon")
    for k in groups:
        np.testing.assert_allclose(fast[k].score, slow[k].score, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fast[k].fdr, slow[k].fdr, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(fast[k].lfc, slow[k].lfc, rtol=1e-4, atol=1e-5)
        assert fast[k].ranked_significant() == slow[k].ranked_significant()
