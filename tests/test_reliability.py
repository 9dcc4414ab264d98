"""Interrupted and repeated runs: kill -9 and resume, atomic checkpoints, determinism, safety."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import yaml
from safetensors import safe_open
from safetensors.numpy import load_file

import condmonge as cm
from conftest import make_adata, tiny_config

KILL_CONFIG = {
    "train": {
        "steps": 150,
        "conditions_per_step": 2,
        "cells_per_condition": 16,
        "validate_every": 5,
        "checkpoint_every": 4,
        "patience": 4,
        "progress": False,
    },
    "model": {"hidden_dim": 16, "n_layers": 2, "condition_dim": 8, "perturbation_hidden_dim": 8},
    # Log-domain solves only, as tests/conftest.py tiny_config (one trace, not two).
    "loss": {"sinkhorn_max_iterations": 20, "sinkhorn_scaling": False},
}


def _train_command(data, out, config, *extra):
    return [
        sys.executable,
        "-m",
        "condmonge.cli",
        "train",
        str(data),
        "--out",
        str(out),
        "--condition-key",
        "condition",
        "--control",
        "control",
        "--config",
        str(config),
        *extra,
    ]


def _one_device_env():
    """The environment of a training subprocess with one CPU device (no data parallelism).

    The kill-and-resume test runs two trainings side by side on 2 cores; with the CLI's one
    device per core each would run 2 devices' collectives on an oversubscribed machine, and
    XLA aborts a process whose collective waits more than 60 s (seen once under load).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    return {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=1"}


def _saved(run):
    """Every array of the final checkpoint and the training header (timings dropped)."""
    path = run / "model.safetensors"
    with safe_open(str(path), framework="numpy") as handle:
        meta = json.loads(handle.metadata()["meta"])
    training = meta["training"]
    history = [{k: v for k, v in h.items() if k != "steps_per_s"} for h in training["history"]]
    training = {k: v for k, v in training.items() if k != "history"}
    return load_file(str(path)), training, history


def _step_on_disk(run):
    path = run / "model.safetensors"
    if not path.exists():
        return 0
    with safe_open(str(path), framework="numpy") as handle:
        return json.loads(handle.metadata()["meta"])["training"]["step"]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(tmp_path):
    """SIGKILL a `condmonge train` at 3 seeded-random moments, `--resume` each time: the final
    checkpoint (best and last parameters, optimizer state, RNG key, early-stopping state) equals
    the one of an uninterrupted run bit for bit."""
    make_adata(n_per_condition=40).write_h5ad(tmp_path / "data.h5ad")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(KILL_CONFIG))
    # The uninterrupted reference runs alongside the interrupted chain (2 cores).
    reference = subprocess.Popen(
        _train_command(tmp_path / "data.h5ad", tmp_path / "ref", config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_one_device_env(),
    )
    rng = random.Random(20261126)
    out = tmp_path / "killed"
    log = []
    for attempt in range(3):
        proc = subprocess.Popen(
            _train_command(tmp_path / "data.h5ad", out, config, "--resume"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_one_device_env(),
        )
        start_step = _step_on_disk(out)
        if attempt == 0:
            # Early, before any checkpoint (start-up or tracing): resume must start afresh.
            moment = rng.uniform(0.5, 4.0)
            deadline = time.monotonic() + moment
        else:
            # Once this process writes its first checkpoint: mid-training or mid-write.
            moment = rng.uniform(0.0, 0.6)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if _step_on_disk(out) > start_step:
                    break
                time.sleep(0.02)
            deadline = time.monotonic() + moment
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.append((attempt, round(moment, 2), start_step, _step_on_disk(out), finished))
    final = subprocess.run(
        _train_command(tmp_path / "data.h5ad", out, config, "--resume"),
        capture_output=True,
        text=True,
        env=_one_device_env(),
    )
    assert final.returncode == 0, final.stderr
    _, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err
    ref_step = _step_on_disk(tmp_path / "ref")
    print(
        f"reference ran to step {ref_step}; kills",
        "(attempt, delay s, step before, after, ended by itself):",
        log,
    )
    # At least one kill landed after training had checkpointed, so a resume really resumed.
    assert any(after > 0 for *_, after, _ in log), log
    assert any(not finished for *_, finished in log), log

    ref_arrays, ref_training, ref_history = _saved(tmp_path / "ref")
    got_arrays, got_training, got_history = _saved(out)
    assert got_training == ref_training
    assert got_history == ref_history
    assert sorted(got_arrays) == sorted(ref_arrays)
    for name, value in ref_arrays.items():
        assert got_arrays[name].dtype == value.dtype, name
        assert got_arrays[name].tobytes() == value.tobytes(), name  # bitwise


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained here, and (concurrently) the same training in a fresh process."""
    root = tmp_path_factory.mktemp("seed")
    data = make_adata(n_per_condition=30, d=4)
    data.write_h5ad(root / "data.h5ad")
    script = textwrap.dedent("""
        import sys
        import anndata as ad, numpy as np, condmonge as cm
        sys.path.insert(0, {tests!r})
        from conftest import tiny_config
        data = ad.read_h5ad({data!r})
        model = cm.ConditionalMonge(tiny_config()).fit(data, "condition", "control", seed=11)
        np.save(sys.argv[1], model.predict(data, ["A+B", "B"]).X)
    """).format(tests=os.path.dirname(__file__), data=str(root / "data.h5ad"))
    other = subprocess.Popen([sys.executable, "-c", script, str(root / "pred.npy")])
    model = cm.ConditionalMonge(tiny_config()).fit(data, "condition", "control", seed=11)
    yield model, data, other
    if other.poll() is None:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_same_seed_gives_identical_predictions_across_processes(trained):
    """A fresh process that trains with the same seed predicts the same bits as this one."""
    model, data, other = trained
    assert other.wait(timeout=300) == 0
    here = model.predict(data, ["A+B", "B"]).X
    assert here.shape == (2 * 30, 4)
    assert np.load(other.args[-1]).tobytes() == here.tobytes()


def test_overwriting_keeps_the_previous_checkpoint(trained, tmp_path):
    model, *_ = trained
    model.save(tmp_path)
    assert not (tmp_path / "model.prev.safetensors").exists()
    first = (tmp_path / "model.safetensors").read_bytes()
    model.save(tmp_path)
    assert (tmp_path / "model.prev.safetensors").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "model.prev.safetensors",
        "model.safetensors",
    ]  # no temporary file left behind


def test_truncated_checkpoint_names_the_previous_one(trained, tmp_path):
    model, data, _ = trained
    model.save(tmp_path)
    path = model.save(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(cm.errors.CheckpointError) as exc:
        cm.ConditionalMonge.load(tmp_path)
    message = str(exc.value)
    assert "\n" not in message
    assert f"'{path}' is not a readable condmonge checkpoint (truncated" in message
    assert f"the previous checkpoint is kept at '{tmp_path / 'model.prev.safetensors'}'" in message
    previous = cm.ConditionalMonge.load(tmp_path / "model.prev.safetensors")
    np.testing.assert_array_equal(previous.predict(data, ["A"]).X, model.predict(data, ["A"]).X)


def test_failed_write_leaves_the_old_checkpoint(trained, tmp_path, monkeypatch):
    model, *_ = trained
    path = model.save(tmp_path)
    before = path.read_bytes()
    import safetensors.numpy

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 10)
        raise OSError("No space left on device")

    monkeypatch.setattr("condmonge.train.checkpoint.save_file", half_write)
    with pytest.raises(OSError, match="No space left"):
        model.save(tmp_path)
    monkeypatch.setattr("condmonge.train.checkpoint.save_file", safetensors.numpy.save_file)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.safetensors"]


def test_resume_after_early_stop_does_not_train_on(trained, tmp_path):
    """A run killed after it stopped early (its last checkpoint records the stop) stays stopped."""
    model, data, _ = trained
    cfg = model.config
    original = model.loop
    model.loop = original.replace(evals_since_best=cfg.train.patience)  # as saved when stopping
    try:
        model.save(tmp_path)
    finally:
        model.loop = original
    resumed = cm.ConditionalMonge(cfg).fit(
        data,
        "condition",
        "control",
        steps=cfg.train.steps + 20,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert int(resumed.state.step) == int(model.state.step)
    assert resumed.n_traces == 0  # not a single training step
    assert resumed.loop.best_step == model.loop.best_step


# ---------------------------------------------------------------------------- safety


def test_checkpoint_and_config_hold_no_code_and_no_paths(trained, tmp_path):
    model, *_ = trained
    path = model.save(tmp_path / "run")
    raw = path.read_bytes()
    assert str(tmp_path).encode() not in raw  # nothing refers outside the run directory
    assert b"\x80\x04\x95" not in raw and b"\x80\x05\x95" not in raw  # no pickle frames
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "!!python" not in text and str(tmp_path) not in text
    assert cm.load_config(tmp_path / "run" / "config.yaml") == model.config


def test_yaml_with_python_tags_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(cm.errors.ConfigError, match="not valid YAML"):
        cm.load_config(bad)
    assert not marker.exists()
