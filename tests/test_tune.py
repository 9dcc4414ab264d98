"""``condmonge tune``: the space file, the seeded sampler, resuming after SIGKILL, best.yaml."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy.exc
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

import condmonge as cm
from condmonge import tuning
from condmonge.cli import app
from condmonge.errors import ConfigError
from conftest import make_adata

# Tiny trials: only what the default space would change is drawn, on a tiny network.
CONFIG = {
    "train": {
        "conditions_per_step": 2,
        "cells_per_condition": 16,
        "validate_every": 2,
        "progress": False,
    },
    "model": {"hidden_dim": 16, "n_layers": 2, "condition_dim": 8, "perturbation_hidden_dim": 8},
    # Log-domain solves only, as tests/conftest.py tiny_config (one trace, not two).
    "loss": {"sinkhorn_max_iterations": 10, "sinkhorn_scaling": False},
}
# Two settings in all: a setting drawn again reuses the process's compiled step (a new setting
# traces and compiles one, ~10 s here), so the killed study and its resume stay short.
SPACE = {
    "train.steps": {"choices": [6]},
    "loss.monge_gap_weight": {"choices": [0.37, 2.9]},
    "train.learning_rate": None,
    "model.hidden_dim": None,
    "model.n_layers": None,
    "loss.monge_gap_epsilon": None,
    "loss.fit_epsilon": None,
    "train.weight_decay": None,
}
DATA_FLAGS = ["--condition-key", "condition", "--control", "control", "--holdout", "A+B"]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "condmonge.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    make_adata().write_h5ad(root / "data.h5ad")
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return root


def tune_args(files, out, trials):
    config, space = files / "config.yaml", files / "space.yaml"
    return ["tune", files / "data.h5ad", "--out", out, "--trials", trials,
            "--config", config, "--space", space, *DATA_FLAGS]  # fmt: skip


def finished(study_dir):
    study = optuna.load_study(study_name="condmonge", storage=f"sqlite:///{study_dir}/study.db")
    return {
        t.number: (t.state, t.value, t.params)
        for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    }, study


# ----------------------------------------------------------------------------- the space


def test_space_file_names_every_unknown_key(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump({"loss.fit_epsilom": {"low": 0.01, "high": 0.1}, "model": {"width": None}})
    )
    with pytest.raises(ConfigError) as info:
        tuning.load_space(path)
    message = str(info.value)
    assert "'loss.fit_epsilom'" in message and "'model.width'" in message
    assert "did you mean 'loss.fit_epsilon'" in message and "\n" not in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"model.n_layers": {"low": 0, "high": 3}}, "0 is not a valid value"),
        ({"loss.fit_epsilon": {"low": 0.0, "high": 0.1, "log": True}}, "'loss.fit_epsilon'"),
        ({"train.steps": {"low": 500}}, "needs both low and high"),
        ({"train.steps": {"choices": [500], "low": 1}}, "choices must be a list, alone"),
        ({"train.steps": {"min": 1, "max": 2}}, "unknown field(s) max, min"),
        ({"train.steps": [500, 1000]}, "must be {low: A, high: B"),
    ],
)
def test_space_file_rejects_bad_ranges(tmp_path, spec, expected):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="space file") as info:
        tuning.load_space(path)
    assert expected in str(info.value)


def test_cli_space_error_is_one_line_before_any_data_is_read(tmp_path):
    (tmp_path / "space.yaml").write_text("model.widht: {choices: [8, 16]}\n")
    result = CliRunner().invoke(
        app,
        ["tune", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "run"),
         "--space", str(tmp_path / "space.yaml"), "--condition-key", "c", "--control", "x"],
    )  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: space file")
    assert "'model.widht'" in lines[0]
    assert not (tmp_path / "run" / "study.db").exists()


def test_cli_wrong_condition_key_fails_before_the_study_opens(files, tmp_path):
    args = ["tune", str(files / "data.h5ad"), "--out", str(tmp_path / "run"),
            "--condition-key", "drug", "--control", "control"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: adata.obs has no column 'drug'; set condition_key (--condition-key) to one of: "
        "condition"
    ]
    assert not (tmp_path / "run").exists()


def test_space_defaults_overrides_and_pca_for_wide_inputs():
    base = cm.Config()
    narrow = tuning.build_space(base, n_features=50)
    assert set(narrow) == set(tuning.DEFAULT_SPACE)
    assert isinstance(narrow["model.n_layers"], optuna.distributions.IntDistribution)
    assert narrow["train.steps"].step == 500 and narrow["loss.fit_epsilon"].log
    wide = tuning.build_space(base, n_features=80 + tuning.WIDE_INPUT)
    assert wide["data.n_pca"].choices == (16, 32, 50, 100)
    fixed = tuning.build_space(base.updated({"data.n_pca": 20}), n_features=1000)
    assert "data.n_pca" not in fixed  # the user chose a latent size: it is not searched
    overrides = tuning.parse_space({"train": {"steps": {"choices": [7]}}, "model.n_layers": None})
    custom = tuning.build_space(base, 50, overrides)
    assert custom["train.steps"].choices == (7,) and "model.n_layers" not in custom


# ----------------------------------------------------------------------------- the sampler


def _objective(space):
    def objective(trial):
        p = tuning.suggest_params(trial, space)
        return (np.log10(p["loss.monge_gap_weight"]) - 0.3) ** 2 + p["model.n_layers"] / 10

    return objective


def _params(seed, n=14):
    """The settings of ``n`` trials over the default space with a cheap objective."""
    study = optuna.create_study(sampler=tuning.make_sampler(seed))  # in memory: fast
    study.optimize(_objective(tuning.build_space(cm.Config(), 500)), n_trials=n)
    return [t.params for t in study.trials]


def test_sampler_is_deterministic_for_a_seed():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = _params(seed=3)
    assert first == _params(seed=3)  # past the 10 random start-up trials too: TPE is seeded
    assert first != _params(seed=4)
    assert all(p["train.steps"] % 500 == 0 and p["data.n_pca"] in (16, 32, 50, 100) for p in first)


def test_resumed_study_does_not_redraw_the_first_settings(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = tuning.build_space(cm.Config(), 500)
    tuning.open_study(tmp_path, "condmonge", seed=3).optimize(_objective(space), n_trials=2)
    resumed = tuning.open_study(tmp_path, "condmonge", seed=3)
    resumed.optimize(_objective(space), n_trials=1)
    params = [t.params for t in resumed.trials]
    assert params[:2] == _params(seed=3, n=2)  # the stored study is the seeded one
    assert params[2] not in params[:2]


# Two processes opening a new study.db race to CREATE TABLE (the loser's fails) and to stamp
# the schema version (the loser's INSERT collides: seen in CI); the loser retries.
RACE_ERRORS = [
    sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("exists")),
    sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE")),
]


@pytest.mark.parametrize("error", RACE_ERRORS, ids=["create-table", "stamp-version"])
def test_opening_retries_while_another_process_creates_the_tables(tmp_path, monkeypatch, error):
    real, calls = tuning._open_storage, []

    def racing(url):
        calls.append(url)
        if len(calls) == 1:
            raise error
        return real(url)

    monkeypatch.setattr(tuning, "_open_storage", racing)
    study = tuning.open_study(tmp_path, "condmonge", 0)
    assert len(calls) == 2 and study.study_name == "condmonge"

    def always(url):
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception("locked"))

    calls.clear()
    monkeypatch.setattr(tuning, "_open_storage", always)
    monkeypatch.setattr(tuning.time, "sleep", lambda seconds: None)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        tuning.open_study(tmp_path / "other", "condmonge", 0)
    assert len(calls) == 5  # a lasting error still surfaces, after the retries


def test_outputs_of_a_study_without_a_complete_trial(tmp_path):
    study = tuning.open_study(tmp_path, "condmonge", 0)
    assert tuning.trials_table(study).empty
    tuning.plot_trials(tuning.trials_table(study), tmp_path / "empty.png")
    study.tell(study.ask(), state=TrialState.PRUNED)
    with pytest.raises(cm.errors.TrainingError, match="no trial of study 'condmonge' completed"):
        tuning.best_config(study, cm.Config())


def test_running_trial_of_a_dead_process_is_failed(tmp_path):
    study = tuning.open_study(tmp_path, "condmonge", 0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer exists
    orphan, live = study.ask(), study.ask()
    for trial, pid in ((orphan, dead.pid), (live, os.getpid())):
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
    assert tuning.fail_dead_trials(study) == [orphan.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {orphan.number: TrialState.FAIL, live.number: TrialState.RUNNING}


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """The exit codes of ``procs``; once one fails the others are killed (they may be waiting
    for it), and any still running after ``timeout`` seconds are killed too (code ``None``)."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    codes = [p.poll() for p in procs]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return codes


WORKER = """
import os, sys, time
import optuna
from condmonge import tuning
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = tuning.open_study(sys.argv[1], "shared", seed=int(sys.argv[2]))
open(os.path.join(sys.argv[1], f"ready{sys.argv[2]}"), "w").close()
while len([f for f in os.listdir(sys.argv[1]) if f.startswith("ready")]) < 2:
    time.sleep(0.05)  # start together, whatever the import times
def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    time.sleep(0.1)
    return trial.suggest_float("x", 0.0, 1.0)
tuning._search(study, objective, n_trials=8, timeout=None, progress=False)
"""


@pytest.mark.slow  # two processes import condmonge (JAX): slow on a loaded machine
def test_processes_share_one_study_and_its_budget(tmp_path):
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(seed)])
        for seed in (0, 1)
    ]
    # 300 s: on 2 cores shared with a full suite and benchmarks, two JAX imports took >120 s.
    assert wait_all(workers, timeout=300) == [0, 0]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path}/study.db")
    states = [t.state for t in study.trials]
    # Each worker stops once the study holds 8 finished trials (the other may finish a last one).
    assert 8 <= states.count(TrialState.COMPLETE) <= 9 and TrialState.FAIL not in states
    assert {t.user_attrs["pid"] for t in study.trials} == {w.pid for w in workers}


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def resumed(files, tmp_path_factory):
    """A ``condmonge tune`` killed by SIGKILL in the middle of a trial after finishing at least
    two, then resumed for one more finished trial: ``(out, before, running, result)`` with the
    trials finished before the kill, the trials the kill left running and the resume's result.
    The tests of the kill and resume and of best.yaml share this study (one tune run)."""
    out = tmp_path_factory.mktemp("tune_run") / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "condmonge.cli", *map(str, tune_args(files, out, 50))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    before: dict = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (out / "study.db").exists():
            try:
                before, study = finished(out)
            # The study is being created: no study yet, or the tune process and this reader
            # both creating its tables (the loser's CREATE TABLE fails; seen once in make test).
            except (KeyError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
                continue
            running = study.get_trials(states=(TrialState.RUNNING,))
            if len(before) >= 2 and any("pid" in t.user_attrs for t in running):
                break  # kill it in the middle of a trial
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before, study = finished(out)  # what the killed process had finished
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    result = run_cli(*tune_args(files, out, len(before) + 1))
    return out, before, running, result


@pytest.mark.slow
def test_tune_resumes_after_sigkill_with_finished_trials_intact(resumed):
    out, before, running, result = resumed
    assert len(before) >= 2
    assert running  # the killed trial
    assert result.returncode == 0, result.stderr
    after, study = finished(out)
    assert len(after) == len(before) + 1  # the budget counts finished trials only
    assert {n: after[n] for n in before} == before  # count, states, values, settings intact
    states = {t.number: t.state for t in study.get_trials()}
    assert all(states[n] == TrialState.FAIL for n in running)  # left running by the kill
    assert f"{len(before) + 1} trials finished" in result.stdout
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == len(study.trials) and set(table["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert (out / "tune.png").stat().st_size > 1000


@pytest.mark.slow
def test_best_yaml_reproduces_the_best_trial_through_train(files, resumed, tmp_path):
    # The resumed study of the kill test: its trials ran in two processes, one killed.
    out, _, _, result = resumed
    assert result.returncode == 0, result.stderr
    _, study = finished(out)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["steps"] == study.best_params["train.steps"]
    assert best["data"]["condition_key"] == "condition" and best["train"]["progress"] is False
    # Every validation of a finished trial was reported to the pruner (validate_every = 2), and
    # the objective is the best of them (the trial killed mid-run has a partial record).
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) >= 3
    for trial in complete:
        steps = trial.params["train.steps"]
        assert sorted(trial.intermediate_values) == list(range(2, steps + 1, 2))
        assert min(trial.intermediate_values.values()) == trial.value

    result = run_cli("train", files / "data.h5ad", "--out", tmp_path / "train",
                     "--config", out / "best.yaml", "--holdout", "A+B")  # fmt: skip
    assert result.returncode == 0, result.stderr
    trained = cm.ConditionalMonge.load(tmp_path / "train")
    # The same seed, data and device setup: the same validation value (float32 reductions).
    value = trained.loop.best_val_loss
    assert value == pytest.approx(study.best_value, rel=1e-6, abs=1e-9), (value, study.best_value)
