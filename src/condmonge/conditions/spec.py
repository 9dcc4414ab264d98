r"""Conditions as the network sees them: the dose feature.

:class:`Condition`, :func:`parse_perturbations` and :func:`parse_doses` describe the data and live
in :mod:`condmonge.data.spec`; they are also importable from here.
"""

from __future__ import annotations

import math

from condmonge.data.spec import Condition, parse_doses, parse_perturbations

__all__ = ["Condition", "log_dose", "parse_doses", "parse_perturbations"]


def log_dose(dose: float) -> float:
    r"""Dose feature :math:`\log_{10}(1 + \text{dose})`: 0 at dose 0, smooth and monotone."""
    return math.log10(1.0 + float(dose))
