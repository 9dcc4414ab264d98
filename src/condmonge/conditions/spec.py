r"""Conditions as the network sees them: the dose feature and covariate transforms.

:class:`Condition`, :func:`parse_perturbations` and :func:`parse_doses` describe the data and live
in :mod:`condmonge.data.spec`; they are also importable from here.
"""

from __future__ import annotations

import math

from condmonge.data.spec import Condition, parse_doses, parse_perturbations
from condmonge.errors import ConfigError, UnknownConditionError

__all__ = [
    "COVARIATE_TRANSFORMS",
    "Condition",
    "log_dose",
    "parse_covariate",
    "parse_doses",
    "parse_perturbations",
    "transform_covariate",
]

#: How a numeric covariate (e.g. time) can enter the condition.
COVARIATE_TRANSFORMS = ("linear", "log1p")


def log_dose(dose: float) -> float:
    r"""Dose feature :math:`\log_{10}(1 + \text{dose})`: 0 at dose 0, smooth and monotone."""
    return math.log10(1.0 + float(dose))


def transform_covariate(value: float, transform: str = "linear", key: str = "covariate") -> float:
    r"""The covariate feature: ``value`` (``linear``) or :math:`\log(1 + \text{value})` (``log1p``).

    Raises :class:`UnknownConditionError` for a non-finite value, or one <= -1 under ``log1p``.
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UnknownConditionError(
            f"covariate '{key}' value {value!r} is not a number; give numbers (e.g. 24 for 24 h)"
        ) from None
    if not math.isfinite(value):
        raise UnknownConditionError(f"covariate '{key}' value {value!r} must be finite")
    if transform == "log1p":
        if value <= -1:
            raise UnknownConditionError(
                f"covariate '{key}' value {value:g} is <= -1, outside the log1p transform; use "
                "the linear transform or shift the values"
            )
        return math.log1p(value)
    return value


def parse_covariate(value: str) -> tuple[str, str | None, float | None]:
    """Parse ``KEY[:TRANSFORM[:NEUTRAL]]`` (``time``, ``time:log1p``, ``time:log1p:0``).

    Returns ``(key, transform or None, neutral value or None)``.
    """
    key, *rest = [part.strip() for part in str(value).split(":")]
    transform = rest[0] if rest and rest[0] else None
    if (
        not key
        or len(rest) > 2
        or (transform is not None and transform not in COVARIATE_TRANSFORMS)
    ):
        raise ConfigError(
            f"covariate '{value}' must be KEY[:TRANSFORM[:NEUTRAL]] with TRANSFORM one of "
            f"{', '.join(COVARIATE_TRANSFORMS)} (e.g. time:log1p:0)"
        )
    neutral = None
    if len(rest) == 2:
        try:
            neutral = float(rest[1])
        except ValueError:
            raise ConfigError(
                f"covariate '{value}': the neutral value '{rest[1]}' must be a number"
            ) from None
    return key, transform, neutral
