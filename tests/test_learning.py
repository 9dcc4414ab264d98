"""The conditional map recovers known optimal maps."""

import numpy as np
import pytest

import condmonge as cm
from condmonge.datasets import l2_uvp, spd_affine_task


@pytest.mark.slow
def test_recovers_five_spd_affine_maps_in_10d():
    task = spd_affine_task(n_conditions=5, n_features=10, n_cells=1000, seed=0)
    cfg = cm.Config().updated(
        {
            "train.steps": 250,
            "train.conditions_per_step": 5,
            "train.cells_per_condition": 256,
            "train.learning_rate": 3e-3,
            "train.progress": False,
            "train.patience": None,
            "loss.sinkhorn_max_iterations": 30,
        }
    )
    model = cm.ConditionalMonge(cfg).fit(task.adata, "condition", "control")
    controls = task.adata[task.adata.obs["condition"] == "control"]
    x = np.asarray(controls.X)
    pred = model.predict(controls, task.names)
    uvps = {}
    for name in task.names:
        mapped = np.asarray(pred[pred.obs["condition"] == name].X)
        uvps[name] = l2_uvp(mapped, task.true_map(name, x))
    identity = l2_uvp(x, task.true_map(task.names[0], x))
    print("L2-UVP %:", {k: round(v, 2) for k, v in uvps.items()}, "identity:", round(identity, 1))
    assert identity > 20  # the task is not trivial
    assert max(uvps.values()) < 5.0
