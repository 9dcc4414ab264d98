"""What a condition is: a set of perturbations with doses, in a cell type, with covariates."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True, order=True)
class Condition:
    """One treatment condition.

    Attributes:
      perturbations: perturbation names, sorted so that ``A+B`` and ``B+A`` are one condition.
        Empty for the control.
      doses: one dose per perturbation (same order); ``1.0`` when the data carry no dose.
      cell_type: the cell type (or line) whose control cells are the source, or ``None``.
      covariates: optional numeric covariates, in the order of ``DataConfig.covariate_keys``.
    """

    perturbations: tuple[str, ...]
    doses: tuple[float, ...]
    cell_type: str | None = None
    covariates: tuple[float, ...] = ()

    def label(self, sep: str = "+") -> str:
        """The perturbation part as written in ``obs``, e.g. ``"A+B"``."""
        return sep.join(self.perturbations)

    def dose_label(self, sep: str = "+") -> str:
        """The doses as written in ``obs``, e.g. ``"1+1"`` (integers without decimals)."""
        return sep.join(_format_number(d) for d in self.doses)

    def key(self, sep: str = "+") -> str:
        """A readable unique name, e.g. ``"A+B|dose=1+1|cell_type=k562"``."""
        parts = [self.label(sep), f"dose={self.dose_label(sep)}"]
        if self.cell_type is not None:
            parts.append(f"cell_type={self.cell_type}")
        if self.covariates:
            parts.append("covariates=" + ",".join(_format_number(c) for c in self.covariates))
        return "|".join(parts)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_perturbations(label: str, sep: str = "+") -> tuple[str, ...]:
    """Split ``"A+B"`` into ``("A", "B")``; names are stripped, empty names are errors."""
    names = tuple(part.strip() for part in str(label).split(sep))
    if any(not name for name in names):
        raise UnknownConditionError(
            f"condition label '{label}' has an empty perturbation name; write combinations as "
            f"'A{sep}B'"
        )
    return names


def parse_doses(value: object, n_perturbations: int, sep: str = "+") -> tuple[float, ...]:
    """Parse a dose cell (``10``, ``"10"``, ``"1+1"``) into one non-negative dose per perturbation.

    A single dose applies to every perturbation of a combination.
    """
    parts = str(value).split(sep) if isinstance(value, str) else [value]
    doses = []
    for part in parts:
        try:
            dose = float(part)
        except (TypeError, ValueError):
            raise UnknownConditionError(
                f"dose '{value}' is not a number; doses must be numeric (combinations as '1{sep}1')"
            ) from None
        if not math.isfinite(dose) or dose < 0:
            raise UnknownConditionError(f"dose '{value}' must be a finite number >= 0")
        doses.append(dose)
    if len(doses) == 1:
        return tuple(doses) * n_perturbations
    if len(doses) != n_perturbations:
        raise UnknownConditionError(
            f"dose '{value}' gives {len(doses)} doses for {n_perturbations} perturbations; "
            f"give one dose, or one per perturbation joined by '{sep}'"
        )
    return tuple(doses)


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
