"""condmonge against the reference implementation cmonge 0.1.3, on the same synthetic task.

    python benchmarks/vs_cmonge.py [--conditions 10] [--features 50] [--batch 256] [--steps 300]
                                   [--budget 120] [--venv ~/.cache/condmonge-bench/cmonge-venv]
                                   [--one-device]

cmonge pins other versions of JAX, flax and ott-jax, so it is installed (``pip install
cmonge==0.1.3``, once) into its own virtual environment and driven by a small script run with that
environment's Python; condmonge runs in this interpreter's environment. Each side runs in its own
process, one after the other, on the same task (``spd_affine_task``: K SPD-affine maps with known
optimal maps) with the same cells per condition-batch:

1. throughput: ``--steps`` training steps; cells/s = cells mapped per step x steps/s, timed from
   the end of the first (compiling) step; condmonge maps ``conditions_per_step`` (default 8)
   conditions x ``--batch`` cells per step, cmonge one condition x ``--batch``;
2. accuracy at equal wall-clock: a fresh model trained for ``--budget`` seconds (start-up and
   compilation included; each side's schedule sized to the steps it fits in the budget), then the
   L2-UVP (% of target variance) of every condition's map on the control cells.

Peak memory is each process's peak RSS over both phases. Prints one JSON line with both sides and
the ratios; if cmonge cannot be installed or run, the line says why.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_VENV = Path.home() / ".cache" / "condmonge-bench" / "cmonge-venv"

CMONGE_DRIVER = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import anndata as ad
import jax, jax.numpy as jnp
from dotmap import DotMap
from jax.tree_util import tree_map
from cmonge.datasets.conditional_loader import ConditionalDataModule
from cmonge.trainers.conditional_monge_trainer import ConditionalMongeTrainer

args = json.loads(sys.argv[1])
task = np.load(args["task"])
work = Path(args["workdir"])
x, labels = task["x"], task["labels"].astype(str)
names = sorted({l for l in labels if l != "control"}, key=lambda s: int(s.split("_")[1]))
K, d, batch = len(names), x.shape[1], args["batch"]
obs = pd.DataFrame({"drug-dose": [("control-0" if l == "control" else f"{l}-1") for l in labels]},
                   index=[f"c{i}" for i in range(len(labels))])
adata = ad.AnnData(X=x.astype(np.float32), obs=obs,
                   var=pd.DataFrame(index=[f"f{j}" for j in range(d)]))
genes = list(adata.var_names[: min(50, d)])
adata.uns["rank_genes_groups"] = {"names": pd.DataFrame({n: genes for n in names})}
emb = pd.DataFrame(np.eye(K), columns=[f"latent_{i}" for i in range(K)])
emb.insert(0, "drug", names)
emb.to_csv(work / "rdkit", index=False)  # RDKitEmbedding reads model_dir / name

def datamodule():
    data = DotMap({"name": "sciplex", "file_path": None, "parent": adata, "batch_size": batch,
                   "split": [0.9, 0.1, 0.0], "drug_col": "drug-dose", "seed": 0,
                   "drug_condition": f"{names[0]}-1", "control_condition": "control-0",
                   "ae": False, "reduction": None})
    cond = DotMap({"mode": "homogeneous", "conditions": [f"{n}-1" for n in names],
                   "split": [0.9, 0.1, 0.0]})
    return ConditionalDataModule(data, cond, None)

def trainer(dm, iters):
    # The paper's defaults (Harsanyi et al. 2025): MLP 4x64 GELU, AdamW 1e-4 / 1e-5, cosine,
    # Sinkhorn fitting loss eps = 1, Monge gap eps = 0.01 (absolute), Euclidean cost.
    cfg = DotMap({
        "seed": 0, "num_train_iters": iters,
        "optim": {"name": "adamw", "lr": 1e-4, "kwargs": {"weight_decay": 1e-5}},
        "fitting_loss": {"name": "sinkhorn", "kwargs": {"epsilon_fitting": 1}},
        "regularizer": {"name": "monge",
                        "kwargs": {"epsilon_regularizer": 1e-2, "cost": "euclidean"}},
        "mlp": {"dim_hidden": [64, 64, 64, 64], "dim_data": d, "dim_cond": K + 1,
                "dim_cond_map": [50, 1], "context_entity_bonds": [[0, K], [K, K + 1]]},
        "embedding": {"name": "rdkit", "checkpoint": True, "smile_path": "",
                      "drug_to_smile_path": "",
                      "model_dir": str(work), "dose_split": True},
    })
    return ConditionalMongeTrainer(1, work / "log.yml", cfg, dm)

def train(tr, dm, steps=None, budget=None, start=None):
    grads = tree_map(jnp.zeros_like, tr.state_neural_net.params)
    done, t_first = 0, None
    while True:
        b, _ = tr.generate_batch(dm, "train")
        tr.key, key = jax.random.split(tr.key)
        tr.state_neural_net, grads, _ = tr.step_fn(
            tr.state_neural_net, grads=grads, train_batch=b, dropout_key=key,
            valid_batch={"num_contexts": None}, is_logging_step=False,
            is_gradient_acc_step=True, n_train_contexts=b["num_contexts"],
            n_valid_contexts=None)
        jax.block_until_ready(tr.state_neural_net.params)
        done += 1
        if t_first is None:
            t_first = time.perf_counter()
        if steps is not None and done >= steps:
            break
        if budget is not None and time.perf_counter() - start >= budget:
            break
    return done, time.perf_counter() - t_first

def l2_uvp(tr):
    ctrl = x[labels == "control"]
    out = {}
    for i, n in enumerate(names):
        c, nc = tr.embedding_module(f"{n}-1")
        pred = []
        for s in range(0, len(ctrl), batch):
            xb = ctrl[s:s + batch]
            pad = np.zeros((batch, d), np.float32); pad[:len(xb)] = xb
            pred.append(np.asarray(tr.transport(jnp.asarray(pad), c, nc))[:len(xb)])
        pred = np.concatenate(pred)
        true = ctrl @ task["matrices"][i].T + task["offsets"][i]
        out[n] = float(100 * np.mean(np.sum((pred - true) ** 2, 1)) / np.sum(np.var(true, 0)))
    return out

t0 = time.perf_counter()
dm = datamodule()
setup_s = time.perf_counter() - t0
tr = trainer(dm, args["steps"])
steps, seconds = train(tr, dm, steps=args["steps"])
rate = (steps - 1) / seconds
uvp_steps = l2_uvp(tr)
start = time.perf_counter()
dm2 = datamodule()
tr2 = trainer(dm2, max(int(rate * args["budget"]), 10))
steps2, _ = train(tr2, dm2, budget=args["budget"], start=start)
budget_s = time.perf_counter() - start
uvp_budget = l2_uvp(tr2)
print(json.dumps({
    "version": "cmonge 0.1.3", "jax": jax.__version__, "device": jax.devices()[0].platform,
    "setup_s": round(setup_s, 2), "steps": steps, "steps_per_s": round(rate, 3),
    "cells_per_step": batch, "cells_per_s": round(rate * batch, 1),
    "l2_uvp_after_steps": float(np.mean(list(uvp_steps.values()))),
    "budget_steps": steps2, "budget_s": round(budget_s, 1),
    "l2_uvp_at_budget": float(np.mean(list(uvp_budget.values()))),
    "l2_uvp_at_budget_per_condition": uvp_budget,
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
"""


def ensure_cmonge(venv: Path) -> tuple[Path | None, str]:
    """The venv's python with cmonge 0.1.3 installed (installing once), or ``None`` and why."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import cmonge.trainers.conditional_monge_trainer"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, "cached"
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = os.environ.get("CMONGE_PYTHON", "python3.11")
    steps = [
        [base, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "cmonge==0.1.3"],
    ]
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            return None, f"`{' '.join(cmd)}` failed: {out.stderr.strip()[-300:]}"
    out = subprocess.run(check, capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"cmonge installed but does not import: {out.stderr.strip()[-300:]}"
    return python, "installed"


def run_condmonge(args: argparse.Namespace, task_path: Path) -> dict:
    """Same phases as the cmonge driver, with condmonge's public API (one process)."""
    import jax

    import condmonge as cm

    if not args.one_device:
        cm.use_cpu_cores()  # as the command line does: one JAX CPU device per core
    from condmonge.datasets import l2_uvp, spd_affine_task

    task = spd_affine_task(args.conditions, args.features, n_cells=args.cells, seed=args.seed)
    controls = task.adata[task.adata.obs["condition"] == "control"]
    x = np.asarray(controls.X)

    def config(steps: int) -> cm.Config:
        return cm.Config().updated(
            {
                "train.steps": steps,
                "train.cells_per_condition": args.batch,
                "train.conditions_per_step": min(args.conditions, 8),
                "train.progress": False,
                "train.patience": None,
                "train.seed": args.seed,
            }
        )

    def uvp(model) -> float:
        pred = model.predict(controls, task.names)
        return float(
            np.mean(
                [
                    l2_uvp(np.asarray(pred[pred.obs["condition"] == n].X), task.true_map(n, x))
                    for n in task.names
                ]
            )
        )

    model = cm.ConditionalMonge(config(args.steps)).fit(task.adata, "condition", "control")
    hist = model.history
    later = hist[hist["step"] > 10]  # rates logged every 10 steps; the first holds the compile
    rate = float(len(later) * 10 / np.sum(10 / later["steps_per_s"]))
    k = model.config.train.conditions_per_step
    uvp_steps = uvp(model)
    start = time.perf_counter()
    # Steps that fit the budget at the measured rate, less one compile (about the first step).
    first = float(10 / hist["steps_per_s"].iloc[0]) - 9 / rate
    budget_steps = max(int((args.budget - first) * rate), 10)
    model2 = cm.ConditionalMonge(config(budget_steps)).fit(task.adata, "condition", "control")
    budget_s = time.perf_counter() - start
    return {
        "version": f"condmonge {cm.__version__}",
        "jax": jax.__version__,
        "device": jax.devices()[0].platform,
        "devices": len(jax.devices()),
        "steps": args.steps,
        "steps_per_s": round(rate, 3),
        "cells_per_step": k * args.batch,
        "cells_per_s": round(rate * k * args.batch, 1),
        "l2_uvp_after_steps": uvp_steps,
        "budget_steps": budget_steps,
        "budget_s": round(budget_s, 1),
        "l2_uvp_at_budget": uvp(model2),
        "identity_l2_uvp": float(np.mean([l2_uvp(x, task.true_map(n, x)) for n in task.names])),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, default=10)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--cells", type=int, default=1000, help="cells per condition in the data")
    parser.add_argument("--batch", type=int, default=256, help="cells per condition-batch")
    parser.add_argument("--steps", type=int, default=300, help="steps of the throughput phase")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of the UVP phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--side", choices=("both", "condmonge"), default="both")
    parser.add_argument(
        "--one-device",
        action="store_true",
        help="condmonge on one JAX CPU device (default: one per core, as the command line)",
    )
    args = parser.parse_args()
    if args.side == "condmonge":  # child process: condmonge alone (own peak RSS)
        print(json.dumps(run_condmonge(args, Path())))
        return

    from condmonge.datasets import spd_affine_task

    result: dict = {
        "benchmark": "vs_cmonge",
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "task": {
            "conditions": args.conditions,
            "features": args.features,
            "cells_per_condition": args.cells,
            "batch": args.batch,
            "steps": args.steps,
            "budget_s": args.budget,
        },
    }
    own = subprocess.run(
        [sys.executable, __file__, "--side", "condmonge"] + sys.argv[1:],
        capture_output=True,
        text=True,
    )
    if own.returncode != 0:
        result["error"] = f"condmonge failed: {own.stderr.strip()[-500:]}"
        print(json.dumps(result))
        return
    result["condmonge"] = json.loads(own.stdout.strip().splitlines()[-1])
    python, how = ensure_cmonge(args.venv)
    result["cmonge_install"] = how
    if python is None:
        result["cmonge"] = {"error": how}
        print(json.dumps(result))
        return
    task = spd_affine_task(args.conditions, args.features, n_cells=args.cells, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.npz"
        np.savez(
            path,
            x=np.asarray(task.adata.X),
            labels=task.adata.obs["condition"].astype(str).to_numpy().astype("U"),
            matrices=task.matrices,
            offsets=task.offsets,
        )
        payload = json.dumps(
            {
                "task": str(path),
                "workdir": tmp,
                "batch": args.batch,
                "steps": args.steps,
                "budget": args.budget,
            }
        )
        ref = subprocess.run(
            [str(python), "-c", CMONGE_DRIVER, payload],
            capture_output=True,
            text=True,
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": ""},
        )
    if ref.returncode != 0:
        result["cmonge"] = {"error": f"cmonge run failed: {ref.stderr.strip()[-800:]}"}
        print(json.dumps(result))
        return
    result["cmonge"] = json.loads(ref.stdout.strip().splitlines()[-1])
    ours, theirs = result["condmonge"], result["cmonge"]
    result["cells_per_s_ratio"] = round(ours["cells_per_s"] / theirs["cells_per_s"], 2)
    result["peak_rss_ratio"] = round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3)
    result["l2_uvp_at_budget"] = {
        "condmonge": round(ours["l2_uvp_at_budget"], 2),
        "cmonge": round(theirs["l2_uvp_at_budget"], 2),
        "identity": round(ours["identity_l2_uvp"], 2),
    }
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
