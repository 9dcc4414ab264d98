"""The command line: train -> predict round trip, and bad input -> exit 2 with one line."""

import re
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import yaml

from conftest import make_adata, run_cli_batch

CONFIG = {
    "train": {
        "steps": 4,
        "conditions_per_step": 2,
        "cells_per_condition": 16,
        "validate_every": 2,
        "progress": False,
    },
    "model": {"hidden_dim": 16, "n_layers": 2, "condition_dim": 8, "perturbation_hidden_dim": 8},
    # Log-domain solves only, as tests/conftest.py tiny_config (one trace, not two).
    "loss": {"sinkhorn_max_iterations": 20, "sinkhorn_scaling": False},
}


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "condmonge.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_adata(cell_types=["k1", "k2"], doses=[1.0, 10.0])
    data.write_h5ad(root / "data.h5ad")
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = run_cli(
        "train",
        root / "data.h5ad",
        "--out",
        root / "run",
        "--condition-key",
        "condition",
        "--control",
        "control",
        "--dose-key",
        "dose",
        "--cell-type-key",
        "cell_type",
        "--holdout",
        "A+B",
        "--steps",
        6,
        "--seed",
        1,
        "--config",
        root / "config.yaml",
    )
    assert result.returncode == 0, result.stderr
    assert "trained 8 conditions for 6 steps" in result.stdout
    return root


@pytest.mark.slow  # the CLI training subprocess (workspace)
def test_train_writes_checkpoint_and_config(workspace):
    assert (workspace / "run" / "model.safetensors").is_file()
    saved = yaml.safe_load((workspace / "run" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 6 and saved["train"]["seed"] == 1  # flags override YAML
    assert saved["train"]["cells_per_condition"] == 16  # YAML overrides defaults


@pytest.mark.slow
def test_predict_conditions_and_query(workspace):
    out, query = workspace / "pred.h5ad", workspace / "pred_query.h5ad"
    (workspace / "q.csv").write_text("condition,dose,cell_type\nA,1,k1\nA+B,1+10,k2\nB,5,k1\n")
    predict = ["predict", workspace / "run", workspace / "data.h5ad", "--out"]
    results = run_cli_batch(
        [*predict, out, "--conditions", "A+B,B", "--dose", 10, "--cell-type", "k2"],
        [*predict, query, "--query", workspace / "q.csv"],
    )
    assert [r["code"] for r in results] == [0, 0], [r["stderr"] for r in results]
    pred = ad.read_h5ad(out)
    assert pred.n_obs == 2 * 60 and pred.n_vars == 6
    assert set(pred.obs["condition"]) == {"A+B", "B"}
    assert set(pred.obs["cell_type"]) == {"k2"} and set(pred.obs["dose"]) == {"10+10", "10"}
    assert np.isfinite(pred.X).all()
    assert ad.read_h5ad(query).obs["condition_id"].nunique() == 3


TRAIN = "train {data} --out {tmp}/r --condition-key"

BAD_INPUT = [
    (f"{TRAIN} drug --control control", "adata.obs has no column 'drug'"),
    (f"{TRAIN} condition --control ctrl", "control label 'ctrl' not found"),
    (
        "train {tmp}/missing.h5ad --out {tmp}/r --condition-key condition --control control",
        "does not exist",
    ),
    (f"{TRAIN} condition --control control --embedding nonsense", "must be KEY=TABLE.csv"),
    (
        "predict {run} {data} --out {tmp}/p.h5ad --conditions Z --dose 1",
        "perturbation 'Z' was not seen in training",
    ),
    ("predict {tmp} {data} --out {tmp}/p.h5ad", "no checkpoint at"),
    (
        "train {data} --out {run} --condition-key condition --control control",
        "already holds a run (model.safetensors); pass --resume to continue it, --overwrite",
    ),
]


@pytest.fixture(scope="module")
def bad_input_outcomes(workspace, tmp_path_factory):
    """``{command: (result, tmp dir)}``: every bad command line through the CLI's entry point
    in one subprocess (``tests/cli_batch.py``; JAX is imported once, not once per case)."""
    tmps = [tmp_path_factory.mktemp("bad") for _ in BAD_INPUT]
    commands = [
        command.format(data=workspace / "data.h5ad", tmp=tmp, run=workspace / "run").split()
        for (command, _), tmp in zip(BAD_INPUT, tmps, strict=True)
    ]
    results = run_cli_batch(*commands)
    return {c: (r, t) for (c, _), r, t in zip(BAD_INPUT, results, tmps, strict=True)}


@pytest.mark.slow  # the CLI training subprocess (workspace); fast cases: test_cli_catalogue
@pytest.mark.parametrize(("command", "message"), BAD_INPUT)
def test_bad_input_exits_2_with_one_line(bad_input_outcomes, command, message):
    result, tmp_path = bad_input_outcomes[command]
    assert result["code"] == 2
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result["stderr"]
    assert not (tmp_path / "p.h5ad").exists()


@pytest.mark.slow  # new Python processes (JAX start-up each)
def test_usage_errors_are_one_line(tmp_path):
    result = run_cli("train", tmp_path / "x.h5ad", "--condition-key", "c")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Missing option '--out'" in lines[0]
    assert "condmonge train --help" in lines[0]
    result = run_cli("--help")
    assert result.returncode == 0 and "train" in result.stdout and "predict" in result.stdout


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues(workspace, tmp_path):
    import signal
    import time

    config = dict(
        CONFIG, train=dict(CONFIG["train"], checkpoint_every=5, steps=100000, patience=None)
    )
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    args = [
        "train",
        workspace / "data.h5ad",
        "--out",
        tmp_path / "run",
        "--condition-key",
        "condition",
        "--control",
        "control",
        "--config",
        tmp_path / "long.yaml",
    ]
    # A shell that started this run in the background may have set SIGINT to "ignore", which
    # children inherit; the child restores Python's Ctrl-C handler before running the CLI
    # (no preexec_fn: forking a process that runs JAX threads is unsafe).
    child = (
        "import signal, runpy, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['condmonge', *sys.argv[1:]]; "
        "runpy.run_module('condmonge.cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / "run" / "model.safetensors"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted at step" in stderr and "continue with --resume" in stderr
    assert "Traceback" not in stderr
    import condmonge as cm

    # The checkpoint holds the last completed step; the history logs every validate_every (2)
    # steps, after the step: an interrupt between a step and its log leaves it 2 behind.
    saved_step = int(re.search(r"interrupted at step (\d+)", stderr).group(1))
    assert saved_step >= 5
    saved = cm.ConditionalMonge.load(tmp_path / "run")
    assert saved_step - 2 <= saved.loop.history[-1]["step"] <= saved_step
    config["train"]["steps"] = saved_step + 3
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    assert f"for {saved_step + 3} steps" in result.stdout
