import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
# One JAX compilation cache for the session, shared with the CLI subprocesses (they inherit
# the environment): many tests compile the same small programs, and a cached executable is
# the same program, so results do not change. Every compilation is cached (the default skips
# those under 1 s, most of ours); the directory goes when the session ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="condmonge-tests-jax-cache-")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_jax_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import condmonge as cm

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


# Scheduling over the pytest-xdist workers (``make test``: ``--dist loadfile``, every test file
# on one worker, so module fixtures are built once): files start longest first
# (``--no-loadscope-reorder`` keeps the order of the items below), so that the two workers
# finish together instead of one waiting on a long file picked last. Each tutorial has its own
# file (tests/tutorials.py) for the same reason.
# Seconds of a file in a full run (2 workers on a 2-core machine, `--durations` of the run at
# 0072c52, rounded up to 5 s); unlisted files are shorter.
FILE_SECONDS = {
    "test_scale.py": 190,
    "test_api.py": 140,
    "test_cli_catalogue.py": 115,
    "test_tune.py": 110,
    "test_tutorial_protein_time.py": 105,
    "test_cli.py": 105,
    "test_reliability.py": 90,
    "test_prior.py": 80,
    "test_tutorial_cell_type_transfer.py": 70,
    "test_covariates.py": 70,
    "test_predict.py": 65,
    "test_moments.py": 65,
    "test_ensemble.py": 65,
    "test_condition_validation.py": 65,
    "test_tutorial_unseen_combinations.py": 55,
    "test_losses.py": 55,
    "test_demo.py": 55,
    "test_tutorial_unseen_drugs_smiles.py": 50,
    "test_tables.py": 50,
    "test_generalisation_wiring.py": 50,
    "test_evaluation.py": 50,
    "test_trainer.py": 45,
    "test_sampler.py": 40,
    "test_metrics.py": 40,
    "test_learning.py": 40,
    "test_validation.py": 30,
    "test_dose.py": 30,
}


def pytest_collection_modifyitems(config, items):
    order = {name: i for i, name in enumerate(dict.fromkeys(item.path.name for item in items))}
    items.sort(key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), order[item.path.name]))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_adata(
    n_per_condition=60,
    d=6,
    conditions=("A", "B", "A+B"),
    cell_types=None,
    doses=None,
    seed=0,
    sparse=False,
):
    """Controls ~ N(0, I); condition c shifts by a fixed vector per perturbation (additive)."""
    rng = np.random.default_rng(seed)
    shifts = {}
    rows, obs = [], []
    for ct in cell_types or [None]:
        rows.append(rng.normal(size=(n_per_condition, d)))
        obs += [{"condition": "control", "cell_type": ct, "dose": 0.0}] * n_per_condition
        for cond in conditions:
            for dose in doses or [1.0]:
                delta = sum(
                    shifts.setdefault(p, rng.normal(scale=2.0, size=d)) for p in cond.split("+")
                )
                rows.append(rng.normal(size=(n_per_condition, d)) + delta * np.log10(1 + dose))
                obs += [{"condition": cond, "cell_type": ct, "dose": dose}] * n_per_condition
    x = np.concatenate(rows).astype(np.float32)
    frame = pd.DataFrame(obs, index=[f"c{i}" for i in range(len(obs))])
    if cell_types is None:
        frame = frame.drop(columns="cell_type")
    if doses is None:
        frame = frame.drop(columns="dose")
    frame["condition"] = frame["condition"].astype("category")
    var = pd.DataFrame(index=[f"g{j}" for j in range(d)])
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=frame, var=var)


def tiny_config(**overrides):
    base = {
        "train.steps": 4,
        "train.conditions_per_step": 2,
        "train.cells_per_condition": 16,
        "train.validate_every": 2,
        "train.progress": False,
        "model.hidden_dim": 16,
        "model.n_layers": 2,
        "model.condition_dim": 8,
        "model.perturbation_hidden_dim": 8,
        "loss.sinkhorn_max_iterations": 20,
        # Log-domain solves only: the scaling-domain attempt and its log-domain fallback trace
        # every Sinkhorn solve twice (a tiny fit: 8.0 s vs 3.7 s warm). The scaling path (the CPU
        # default) keeps its own tests, which set loss.sinkhorn_scaling: true (test_scale.py,
        # test_trainer.py), and every test whose config does not come from here runs it.
        "loss.sinkhorn_scaling": False,
    }
    base.update(overrides)
    return cm.Config().updated(base)


def run_cli_batch(*commands, **kwargs):
    """``[{"code", "stdout", "stderr"}]`` of ``condmonge`` command lines run one after the other
    through the CLI's entry point in one subprocess (``tests/cli_batch.py``: the console
    script's checks, warnings and exit codes, with JAX imported once instead of per command)."""
    done = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "cli_batch.py")],
        input=json.dumps([list(map(str, c)) for c in commands]), capture_output=True, text=True,
        check=True, **kwargs,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.fixture
def adata():
    return make_adata()


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
    """``cli.main()`` sets XLA_FLAGS (one CPU device per core, ``use_cpu_cores``); a test that
    calls it must not hand that setting to later tests' subprocesses."""
    if "XLA_FLAGS" in os.environ:
        monkeypatch.setenv("XLA_FLAGS", os.environ["XLA_FLAGS"])
    else:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
