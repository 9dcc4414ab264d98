"""Dose enters the map so that dose 0 is exactly the identity."""

import numpy as np
import pytest

import condmonge as cm
from conftest import make_adata, tiny_config


@pytest.mark.slow
def test_dose_zero_is_the_identity_and_other_doses_move_cells():
    adata = make_adata(n_per_condition=40, d=5, conditions=("A", "B"), doses=[1.0, 10.0])
    model = cm.ConditionalMonge(tiny_config(**{"train.steps": 30})).fit(
        adata, "condition", "control", dose_key="dose"
    )
    controls = adata[(adata.obs["condition"] == "control").to_numpy()]
    x = np.asarray(controls.X)
    at_zero = model.predict(controls, ["A"], dose=0.0)
    assert "dose_gate" in model.params
    np.testing.assert_array_equal(np.asarray(at_zero.X), x)
    # An unseen intermediate dose interpolates: it moves cells, less than the top dose.
    moved = {
        dose: np.abs(np.asarray(model.predict(controls, ["A"], dose=dose).X) - x).mean()
        for dose in (3.0, 10.0)
    }
    assert 0 < moved[3.0] < moved[10.0]


@pytest.mark.slow
def test_without_a_dose_column_the_gate_is_off():
    adata = make_adata(n_per_condition=30, d=4, conditions=("A",))
    model = cm.ConditionalMonge(tiny_config()).fit(adata, "condition", "control")
    assert "dose_gate" not in model.params
