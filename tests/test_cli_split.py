"""`condmonge split`: writes the split column atomically; bad input exits 2 with one line."""

import sys

import anndata as ad
import pytest
from typer.testing import CliRunner

from condmonge.cli import app, main
from conftest import make_adata


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "data.h5ad"
    make_adata(
        n_per_condition=8, d=3, conditions=("A", "B", "C", "A+B", "A+C"), cell_types=["k1", "k2"],
        doses=[1.0, 10.0],
    ).write_h5ad(path)  # fmt: skip
    return path


def invoke(*args):
    return CliRunner().invoke(app, ["split", *map(str, args)])


def test_combination_split_round_trip(data_file, tmp_path):
    out = tmp_path / "out.h5ad"
    result = invoke(
        data_file, "--kind", "combination", "--out", out, "--dose-key", "dose",
        "--cell-type-key", "cell_type", "--holdout", "B+A", "--holdout", "A+C", "--seed", "3",
        "--key-added", "fold",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test: 68 cells (4 control), 2 conditions, 2 unseen in train" in result.output
    assert f"wrote obs['fold'] (combination) to {out}" in result.output
    adata = ad.read_h5ad(out)
    treated = adata.obs[adata.obs.condition != "control"]
    assert set(treated.condition[treated.fold == "test"]) == {"A+B", "A+C"}
    assert list(adata.obs.fold.cat.categories) == ["train", "test"]
    assert adata.uns["fold"]["holdout"].tolist() == ["B+A", "A+C"]
    assert adata.uns["fold"]["kind"] == "combination"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]  # no temporary file left over


def test_kfold_and_random_defaults(data_file, tmp_path):
    out = tmp_path / "k.h5ad"
    result = invoke(data_file, "--kind", "kfold", "--n-folds", 3, "--fold", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).obs["split"].nunique() == 2
    result = invoke(data_file, "--out", out, "--fraction", 0.5)
    assert result.exit_code == 0 and "0 unseen in train" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "combination", "--holdout", "B+C"], "combination 'B+C' does not occur"),
        (["--kind", "condition", "--holdout", "A+D"], "(did you mean 'A+C'?)"),
        (["--kind", "dose"], "needs the dose column"),
        (["--kind", "combo"], "unknown split kind 'combo'"),
        (["--condition-key", "drug"], "adata.obs has no column 'drug'"),
    ],
)
def test_bad_input_exits_2_with_one_line(data_file, tmp_path, args, message):
    result = invoke(data_file, "--out", tmp_path / "o.h5ad", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "o.h5ad").exists()


def test_usage_error_through_main(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["condmonge", "split", str(tmp_path / "x.h5ad")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Missing option '--out'" in err[0] and "condmonge split" in err[0]
