"""Baselines with the model's prediction shape: control cells in, predicted cells out."""

from __future__ import annotations

import numpy as np

from condmonge.conditions.spec import Condition

__all__ = ["additive_shift", "identity"]


def identity(control: np.ndarray) -> np.ndarray:
    """Predict no effect: the control cells themselves."""
    return np.array(control, copy=True)


def additive_shift(
    control: np.ndarray, condition: Condition, shifts: dict[tuple[str, str | None], np.ndarray]
) -> np.ndarray:
    r"""Control cells shifted by the sum of each perturbation's observed mean shift.

    .. math:: \hat y = x + \sum_{j \in c} (\bar y_j - \bar x)

    ``shifts[(perturbation, cell_type)]`` holds the single-perturbation mean shifts measured on
    training data. A perturbation without a measured shift contributes nothing.
    """
    total = np.zeros(control.shape[1], np.float32)
    for name in condition.perturbations:
        total += shifts.get((name, condition.cell_type), 0.0)
    return control + total
