"""Which conditions a holdout selector names; one grammar for ``train`` and ``split``.

A selector is written in one of these forms (combinations in any order, ``B+A`` = ``A+B``):

- ``A`` or ``A+B``: the condition at every dose and in every cell type;
- ``A@NK``: the condition in cell type ``NK`` only (every dose);
- ``A|cell_type=NK``, ``A|dose=10``, ``A|dose=10|cell_type=NK``: any of the fields of a
  condition key, in any order; the full key ``A|dose=10|cell_type=NK`` is one condition.

A selector that matches nothing raises :class:`~condmonge.errors.UnknownConditionError`
listing the closest existing forms; the control label cannot be held out.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np

from condmonge.errors import UnknownConditionError

__all__ = ["match_selectors", "parse_selector"]


def parse_selector(selector: str, sep: str = "+") -> dict[str, Any]:
    """``"B+A@NK"`` -> ``{"perturbations": ("A", "B"), "cell_type": "NK"}`` (given fields only).

    Raises:
      UnknownConditionError: a field other than ``dose`` / ``cell_type`` / ``covariates``, or
        an empty part.
    """
    label, *fields = selector.split("|")
    if "@" in label:
        label, cell_type = label.rsplit("@", 1)
        fields.append(f"cell_type={cell_type}")
    parts = [p.strip() for p in label.split(sep)]
    order = sorted(range(len(parts)), key=parts.__getitem__)  # doses follow their names
    names = tuple(parts[i] for i in order)
    if not all(names):
        raise UnknownConditionError(
            f"holdout '{selector}' has an empty perturbation name; write e.g. 'A+B' or 'A@NK'"
        )
    out: dict[str, Any] = {"perturbations": names}
    for field in fields:
        key, eq, value = field.partition("=")
        if not eq or key not in ("dose", "cell_type", "covariates") or not value:
            raise UnknownConditionError(
                f"holdout '{selector}': '{field}' is not dose=..., cell_type=... or "
                "covariates=...; write e.g. 'A+B', 'A@NK' or 'A|dose=10|cell_type=NK'"
            )
        out[key] = value
    if "dose" in out:
        doses = _doses(out["dose"], sep, selector)
        out["dose"] = tuple(doses[i] for i in order) if len(doses) == len(order) else doses
    return out


def _doses(value: str, sep: str, selector: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(sep))
    except ValueError:
        raise UnknownConditionError(
            f"holdout '{selector}': dose '{value}' is not a number (combinations: '1+10')"
        ) from None


def _fields(condition: Any, sep: str) -> dict[str, Any]:
    key_fields = dict(part.split("=", 1) for part in condition.key(sep).split("|")[1:])
    key_fields["dose"] = tuple(float(d) for d in condition.doses)
    return {"perturbations": tuple(condition.perturbations), **key_fields}


def match_selectors(
    conditions: Sequence[Any],
    selectors: Sequence[str],
    *,
    sep: str = "+",
    control: str | None = None,
    where: str = "the data",
) -> np.ndarray:
    """``[len(conditions)]`` mask of the conditions any selector names.

    Args:
      conditions: :class:`~condmonge.data.spec.Condition` objects (treated ones).
      selectors: holdout selectors in the forms of the module docstring.
      sep: the combination separator.
      control: the control label, refused with a message saying why.
      where: where the conditions come from, for the message (``"adata.obs['condition']"``).
    """
    fields = [_fields(c, sep) for c in conditions]
    chosen = np.zeros(len(conditions), bool)
    for selector in selectors:
        selector = str(selector)
        if control is not None and selector.split("@")[0].split("|")[0] == control:
            raise UnknownConditionError(
                f"'{selector}' names the control label: control cells are the source of every "
                "map and cannot be held out; hold out treated conditions (e.g. 'A' or 'A@NK')"
            )
        wanted = parse_selector(selector, sep)
        hit = np.array([all(f.get(k) == v for k, v in wanted.items()) for f in fields], bool)
        if not hit.any():
            raise UnknownConditionError(
                f"held-out condition(s) '{selector}' do not occur in {where}"
                f"{_closest(selector, conditions, sep)}"
            )
        chosen |= hit
    return chosen


def _closest(selector: str, conditions: Sequence[Any], sep: str) -> str:
    """``" (did you mean 'A@NK'?); closest: ..."``: the forms a user could have meant."""
    forms = {c.label(sep) for c in conditions}
    forms |= {f"{c.label(sep)}@{c.cell_type}" for c in conditions if c.cell_type is not None}
    forms |= {c.key(sep) for c in conditions}
    lower = {f.lower(): f for f in sorted(forms)}  # case slips ('nk' for 'NK') rank first
    close = [lower[m] for m in difflib.get_close_matches(selector.lower(), lower, n=3, cutoff=0.3)]
    if not close:
        close = sorted(forms, key=lambda f: (len(f), f))[:3]  # ties: by name, not set order
    return (
        f" (did you mean '{close[0]}'?); closest: "
        + ", ".join(repr(c) for c in close)
        + "; write a label ('A+B'), a label in one cell type ('A@NK') or a key"
    )
