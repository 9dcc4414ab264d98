"""Speed and scale: data parallelism, the scaling-domain fast path, mixed precision, backed data."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import condmonge as cm
from condmonge.config import LossConfig
from condmonge.data.backed import fit_backed_projection
from condmonge.data.pca import fit_pca
from condmonge.errors import DataError
from condmonge.models.losses import make_conditional_loss, solves_are_sound
from condmonge.train import sharding
from condmonge.train.trainer import make_value_and_grad
from conftest import make_adata, tiny_config

SRC = os.path.join(os.path.dirname(__file__), "..", "src")
TESTS = os.path.dirname(__file__)

PARITY_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from conftest import make_adata, tiny_config
    import condmonge as cm

    assert len(jax.devices()) == 2, jax.devices()
    adata = make_adata(n_per_condition=40, d=5, conditions=("A", "B", "C", "A+B"))
    out = {}
    from condmonge.train.sharding import condition_mesh
    out["auto_mesh"] = [getattr(condition_mesh(k, required=None), "size", 1) for k in (3, 4)]
    for parallel in (False, True, None):
        # Log domain only: one loss branch to compile (the fast path is tested on its own).
        cfg = tiny_config(**{"train.steps": 8, "train.conditions_per_step": 4,
                             "train.data_parallel": parallel, "train.patience": None,
                             "loss.sinkhorn_scaling": False})
        model = cm.ConditionalMonge(cfg).fit(adata, "condition", "control")
        leaves = jax.tree.leaves(model.state.params)
        out[str(parallel)] = {
            "params": [np.asarray(a).ravel().tolist() for a in leaves],
            "loss": model.history["loss"].tolist(),
            "devices": len(leaves[0].sharding.device_set),
        }
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_two_devices_match_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", PARITY_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    one, two, auto = out["False"], out["True"], out["None"]
    assert one["devices"] == 1 and two["devices"] == 2
    # The default (None) shards over as many devices as divide conditions_per_step.
    assert out["auto_mesh"] == [1, 2] and auto["devices"] == 2
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4, atol=1e-5)
    for a, b in zip(one["params"], two["params"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert auto["loss"] == two["loss"] and auto["params"] == two["params"]


MULTI_PROCESS_WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from condmonge.train.sharding import initialize_distributed
    process, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    initialize_distributed(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process
    )
    from conftest import make_adata, tiny_config
    import condmonge as cm

    assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    adata = make_adata(n_per_condition=40, d=5, conditions=("A", "B", "C", "A+B"))
    cfg = tiny_config(**{"train.steps": 8, "train.conditions_per_step": 4,
                         "train.data_parallel": True, "train.patience": None,
                         "loss.sinkhorn_scaling": False})
    model = cm.ConditionalMonge(cfg).fit(adata, "condition", "control")
    params = [np.asarray(a).ravel().tolist() for a in jax.tree.leaves(model.params)]
    with open(out, "w") as f:
        json.dump({"loss": model.history["loss"].tolist(), "params": params}, f)
    """
)


@pytest.mark.slow
def test_two_processes_match_one_device(tmp_path):
    # Multi-host through jax.distributed: two CPU processes, one device each, gloo collectives.
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_PROCESS_WORKER, str(i), str(port), str(tmp_path / f"{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    adata = make_adata(n_per_condition=40, d=5, conditions=("A", "B", "C", "A+B"))
    cfg = tiny_config(**{"train.steps": 8, "train.conditions_per_step": 4,
                         "train.data_parallel": False, "train.patience": None,
                         "loss.sinkhorn_scaling": False})  # fmt: skip
    one = cm.ConditionalMonge(cfg).fit(adata, "condition", "control")
    for i in (0, 1):
        out = json.loads((tmp_path / f"{i}").read_text())
        np.testing.assert_allclose(out["loss"], one.history["loss"], rtol=1e-4, atol=1e-5)
        for a, b in zip(jax.tree.leaves(one.params), out["params"], strict=True):
            np.testing.assert_allclose(b, np.asarray(a).ravel(), rtol=1e-4, atol=1e-5)


def test_use_cpu_cores_sets_the_device_count_once(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    assert sharding.use_cpu_cores(3) == 3
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=3"
    # A count the user chose is kept.
    assert sharding.use_cpu_cores(5) == 0
    assert os.environ["XLA_FLAGS"].endswith("device_count=3")
    monkeypatch.delenv("XLA_FLAGS")
    assert sharding.use_cpu_cores() == len(os.sched_getaffinity(0))


def test_single_device_data_parallel_warns_once(monkeypatch):
    monkeypatch.setattr(sharding, "_warned", set())
    with pytest.warns(UserWarning, match="one cpu device"):
        assert sharding.condition_mesh(4) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sharding.condition_mesh(4) is None


def _apply(variables, x, condition):
    return x + variables["params"]["shift"]


def _batch(k=3, n=48, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(k, n, d)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(k, n, d)) * 1.5 + 1.0, jnp.float32)
    return x, y


@pytest.mark.slow
def test_scaling_domain_matches_log_domain():
    x, y = _batch(d=16)
    params = {"shift": jnp.full((16,), 0.3)}
    cfg = LossConfig(sinkhorn_max_iterations=300)
    fast = jax.value_and_grad(make_conditional_loss(_apply, cfg, lse_mode=False), has_aux=True)
    safe = jax.value_and_grad(make_conditional_loss(_apply, cfg, lse_mode=True), has_aux=True)
    (loss_f, aux_f), grad_f = jax.jit(fast)(params, None, x, y, None)
    (loss_s, _), grad_s = jax.jit(safe)(params, None, x, y, None)
    assert bool(solves_are_sound(aux_f, cfg))
    np.testing.assert_allclose(loss_f, loss_s, rtol=1e-4)
    np.testing.assert_allclose(grad_f["shift"], grad_s["shift"], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_truncated_scaling_solve_is_accepted_without_fallback():
    # Stopped by max_iterations before the threshold: both domains return the same truncated
    # solve, so redoing it in the log domain would only cost time.
    x, y = _batch(k=2, n=64, d=8)
    cfg = LossConfig(sinkhorn_max_iterations=10, sinkhorn_threshold=1e-5, fit_epsilon=0.05)
    params = {"shift": jnp.full((8,), 0.3)}
    fast = make_value_and_grad(_apply, cfg.model_copy(update={"sinkhorn_scaling": True}))
    (loss_f, aux_f), grad_f, fell_back = jax.jit(fast)(params, None, x, y, None)
    (loss_s, aux_s), _ = jax.jit(
        jax.value_and_grad(make_conditional_loss(_apply, cfg, lse_mode=True), has_aux=True)
    )(params, None, x, y, None)
    error = float(np.max(aux_f["marginal_error"]))
    assert 10 * cfg.sinkhorn_threshold < error < 0.1  # truncated, not underflowed
    assert not bool(fell_back)
    np.testing.assert_allclose(aux_f["marginal_error"], aux_s["marginal_error"], rtol=1e-3)
    np.testing.assert_allclose(loss_f, loss_s, rtol=1e-4)


@pytest.mark.slow
def test_scaling_domain_overflow_falls_back_to_log_domain():
    # An epsilon this small underflows exp(-C/eps) in float32: the scaling solve is not finite.
    x, y = _batch()
    cfg = {"fit_epsilon": 1e-4, "monge_gap_epsilon": 1e-4, "sinkhorn_max_iterations": 20}
    params = {"shift": jnp.full((4,), 0.3)}
    fast = make_value_and_grad(_apply, LossConfig(**cfg, sinkhorn_scaling=True))
    safe = make_value_and_grad(_apply, LossConfig(**cfg, sinkhorn_scaling=False))
    (loss_f, _), grad_f, fell_back = jax.jit(fast)(params, None, x, y, None)
    (loss_s, _), grad_s, _ = jax.jit(safe)(params, None, x, y, None)
    assert bool(fell_back)
    assert np.isfinite(float(loss_f))
    np.testing.assert_allclose(loss_f, loss_s, rtol=1e-6)
    np.testing.assert_allclose(grad_f["shift"], grad_s["shift"], rtol=1e-6)


@pytest.mark.slow
def test_bfloat16_matmuls_keep_float32_parameters(adata):
    cfg = tiny_config(**{"train.precision": "bfloat16"})
    model = cm.ConditionalMonge(cfg).fit(adata, "condition", "control")
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(model.params))
    pred = model.predict(adata, ["A"])
    assert pred.X.dtype == np.float32 and np.isfinite(pred.X).all()


def _write_backed(tmp_path, adata):
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@pytest.mark.parametrize("sparse", [True, False])
def test_streaming_pca_equals_in_memory_pca(tmp_path, sparse):
    adata = make_adata(n_per_condition=50, d=12, sparse=sparse)
    backed = _write_backed(tmp_path, adata)
    rows = np.arange(adata.n_obs) % 3 != 0
    projection, latent = fit_backed_projection(backed, 4, rows, chunk=17)
    dense = adata.X.toarray() if sparse else adata.X
    reference = fit_pca(dense[rows], 4)
    np.testing.assert_allclose(projection.mean, reference.mean, atol=1e-5)
    np.testing.assert_allclose(projection.components, reference.components, atol=1e-4)
    np.testing.assert_allclose(latent, reference.encode(dense), atol=1e-4)
    backed.file.close()


@pytest.mark.slow
def test_fit_from_backed_file_predicts_in_gene_space(tmp_path):
    adata = make_adata(n_per_condition=50, d=8, sparse=True)
    backed = _write_backed(tmp_path, adata)
    with pytest.raises(DataError, match="n_pca"):
        cm.ConditionalMonge(tiny_config()).fit(backed, "condition", "control")
    model = cm.ConditionalMonge(tiny_config(**{"data.n_pca": 3}))
    model.fit(backed, "condition", "control")
    in_memory = cm.ConditionalMonge(tiny_config(**{"data.n_pca": 3}))
    in_memory.fit(adata, "condition", "control")
    controls = backed[backed.obs["condition"] == "control"].to_memory()
    pred = model.predict(controls, ["A"])
    assert pred.shape == (controls.n_obs, 8)
    np.testing.assert_allclose(pred.X, in_memory.predict(controls, ["A"]).X, rtol=1e-4, atol=1e-4)
    backed.file.close()


@pytest.mark.slow
def test_training_switches_to_the_log_domain_after_repeated_underflow(adata):
    # An epsilon this small underflows every scaling-domain solve: after LOG_DOMAIN_AFTER
    # redone steps the trainer stops trying, says so once, and the losses stay finite.
    from condmonge.train.trainer import LOG_DOMAIN_AFTER

    cfg = tiny_config(
        **{
            "train.steps": LOG_DOMAIN_AFTER + 3,
            "train.patience": None,
            "loss.fit_epsilon": 1e-4,
            "loss.monge_gap_epsilon": 1e-4,
            "loss.sinkhorn_max_iterations": 20,
            "loss.sinkhorn_scaling": True,
        }
    )
    with pytest.warns(
        UserWarning, match=f"underflowed on {LOG_DOMAIN_AFTER} steps in a row"
    ) as rec:
        model = cm.ConditionalMonge(cfg).fit(adata, "condition", "control")
    assert sum("in a row" in str(w.message) for w in rec) == 1
    assert np.isfinite(model.history["loss"]).all()
