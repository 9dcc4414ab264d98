"""Condition-level validation: which training conditions are held back to choose the model.

Held-back *cells* of training conditions cannot show over-fitting to those conditions; held-back
*conditions* of the same kind as the question asked can. The kind is read from what the test
set (the holdout, or the test side of a split column) holds out:

- ``combination``: combinations whose perturbations are all seen -> validate on training
  combinations whose singles all stay in training (when none has all its singles measured:
  on combinations whose perturbations all stay seen in training, alone or combined);
- ``perturbation``: an unseen perturbation -> validate on some training perturbations (every
  condition containing them);
- ``cell_type``: a seen perturbation in a cell type it was not seen in -> validate on some
  (perturbation, cell type) pairs whose perturbation stays seen in another cell type (the
  cell type keeps its controls, as a held-out one does);
- ``dose``: a seen (perturbation, cell type) at an unseen dose -> validate on training doses
  of the test dose levels; else, when the test doses lie above (below) every training dose, on
  each group's highest (lowest) training dose; else on non-extreme doses;
- ``covariate``: an unseen covariate value (e.g. a time point) -> validate on one value;
- ``random``: no test set -> random conditions whose perturbations and cell type stay seen.

Everything is deterministic given the seed; the functions are pure (no AnnData, no JAX).
Validation conditions are removed from training: the model never trains on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from condmonge.data.spec import Condition

__all__ = [
    "KINDS",
    "MIN_CONDITIONS",
    "ValidationPlan",
    "cells_plan",
    "choose_validation",
    "describe",
    "fallback_plan",
    "infer_kind",
]

#: The kinds of condition-level validation, in the order that breaks ties between them.
KINDS = ("combination", "perturbation", "cell_type", "dose", "covariate", "random")
#: Fewer training conditions than this are validated on held-back cells.
MIN_CONDITIONS = 4

_HOW = (
    "set data.validation=cells to validate on held-back cells without this warning, or "
    "data.validation_kind to choose another kind"
)


@dataclass(frozen=True)
class ValidationPlan:
    """How a run is validated.

    Attributes:
      mode: ``"conditions"`` (held-back training conditions) or ``"cells"`` (held-back cells
        of every training condition).
      kind: one of :data:`KINDS`, or ``"cells"``.
      condition_ids: indices into the training conditions given to
        :func:`choose_validation` of the validation conditions (empty for ``"cells"``).
      reason: why this plan (the inference, or why condition validation was not possible).
      fallback: whether condition validation was asked for (or inferred) and not possible.
    """

    mode: str
    kind: str
    condition_ids: tuple[int, ...]
    reason: str
    fallback: bool = False

    def record(self, conditions: Sequence[Condition], sep: str = "+") -> dict[str, Any]:
        """The plan as plain JSON, with the keys of the validation conditions.

        Args:
          conditions: the training conditions ``condition_ids`` index.
          sep: the combination separator of the keys.
        """
        return {
            "mode": self.mode,
            "kind": self.kind,
            "conditions": [conditions[i].key(sep) for i in self.condition_ids],
            "reason": self.reason,
            "fallback": self.fallback,
        }


def cells_plan(reason: str, fallback: bool = False) -> ValidationPlan:
    """The plan that validates on held-back cells of every training condition."""
    return ValidationPlan("cells", "cells", (), reason, fallback)


def fallback_plan(kind: str, why: str) -> ValidationPlan:
    """Held-back cells because ``kind`` condition validation is not possible (``why``)."""
    return cells_plan(
        f"{kind} condition validation is not possible ({why}); validating on held-back cells "
        f"of the training conditions instead; {_HOW}",
        fallback=True,
    )


def describe(record: dict[str, Any] | None) -> str:
    """One line for reports: ``validation: 3 held-back cell_type conditions (...)``."""
    if not record:
        return "validation: held-back cells of the training conditions (not recorded)"
    if record["mode"] == "cells":
        return f"validation: held-back cells of the training conditions ({record['reason']})"
    keys = record["conditions"]
    shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
    return (
        f"validation: {len(keys)} held-back training condition(s) of kind {record['kind']}, "
        f"never trained on ({record['reason']}): {shown}"
    )


def _seen(train: Sequence[Condition]) -> dict[str, set]:
    return {
        "perturbation": {p for c in train for p in c.perturbations},
        "combination": {c.perturbations for c in train},
        "cell_type": {(c.perturbations, c.cell_type) for c in train},
        "dose": {(c.perturbations, c.cell_type, c.doses) for c in train},
        "covariate": set(train),
    }


def _novelty(c: Condition, seen: dict[str, set]) -> str | None:
    """What is new about ``c`` relative to the training conditions (``None``: nothing)."""
    if any(p not in seen["perturbation"] for p in c.perturbations):
        return "perturbation"
    if c.perturbations not in seen["combination"]:
        return "combination" if len(c.perturbations) > 1 else "perturbation"
    if (c.perturbations, c.cell_type) not in seen["cell_type"]:
        return "cell_type"
    if (c.perturbations, c.cell_type, c.doses) not in seen["dose"]:
        return "dose"
    return None if c in seen["covariate"] else "covariate"


def infer_kind(train: Sequence[Condition], test: Sequence[Condition]) -> tuple[str | None, str]:
    """The kind of question the test conditions ask, and a sentence saying why.

    Each test condition is classified by what is new about it (an unseen perturbation, an
    unseen combination of seen ones, a seen perturbation in a new cell type, a new dose, a new
    covariate value); the most common class wins (ties in the order of :data:`KINDS`).

    Args:
      train: the training conditions.
      test: the held-out (test) conditions; empty means no test set (``"random"``).

    Returns:
      ``(kind, reason)``; ``kind`` is ``None`` when every test condition is also a training
      condition (held-out cells of seen conditions: validate on held-back cells).
    """
    if not test:
        return "random", "no held-out conditions: random training conditions"
    seen = _seen(train)
    counts = Counter(_novelty(c, seen) for c in test)
    new = {k: n for k, n in counts.items() if k is not None}
    if not new:
        return None, "the test conditions are training conditions (held-out cells)"
    kind = max(KINDS, key=lambda k: (new.get(k, 0), -KINDS.index(k)))
    return kind, f"inferred: {new[kind]} of {len(test)} test condition(s) are {kind}-out"


def choose_validation(
    train: Sequence[Condition],
    test: Sequence[Condition] = (),
    *,
    mode: str = "auto",
    kind: str = "auto",
    share: float = 0.2,
    seed: int = 0,
) -> ValidationPlan:
    """Choose the validation of a run (pure and deterministic given ``seed``).

    Args:
      train: the ``K`` training conditions (before validation is taken out of them).
      test: the held-out test conditions (never chosen: they are not in ``train``).
      mode: ``"auto"`` (conditions when possible), ``"conditions"`` or ``"cells"``.
      kind: ``"auto"`` (:func:`infer_kind`) or one of :data:`KINDS`.
      share: the share of the candidate conditions of that kind to validate on (at least one
        condition); candidates are the training combinations for ``combination`` and every
        training condition otherwise.
      seed: ``config.train.seed``.

    Returns:
      The plan; a fallback to cells has ``fallback=True`` and says why in ``reason``.
    """
    if mode == "cells":
        return cells_plan("data.validation=cells")
    reason = f"data.validation_kind={kind}"
    if kind == "auto":
        kind, reason = infer_kind(train, test)
        if kind is None:
            if mode == "auto":
                return cells_plan(reason)
            kind, reason = "random", reason + "; data.validation=conditions: random conditions"
    if len(train) < MIN_CONDITIONS:
        why = f"only {len(train)} training condition(s), fewer than {MIN_CONDITIONS}"
        return fallback_plan(kind, why)
    rng = np.random.default_rng(seed)
    picked = _PICKERS[kind](list(train), list(test), rng, share)
    if not picked:
        return fallback_plan(kind, _WHY_EMPTY[kind])
    if kind == "combination" and not all(_singles_measured(train, i) for i in picked):
        reason += "; no training combination has its singles measured: combinations of seen ones"
    return ValidationPlan("conditions", kind, tuple(sorted(picked)), reason)


def _singles_measured(train: Sequence[Condition], i: int) -> bool:
    singles = {(c.perturbations, c.cell_type) for c in train if len(c.perturbations) == 1}
    return all(((p,), train[i].cell_type) in singles for p in train[i].perturbations)


def _target(n_candidates: int, share: float) -> int:
    return max(1, int(round(share * n_candidates)))


def _greedy(
    groups: list[list[int]],
    n: int,
    keeps: Callable[[set[int]], bool],
    rng: np.random.Generator,
    n_train: int,
) -> list[int]:
    """Add whole groups in a seeded random order until ``n`` conditions are chosen.

    A group is skipped when the rest of training would no longer satisfy ``keeps(chosen)`` or
    would fall below half of the ``n_train`` training conditions.
    """
    chosen: set[int] = set()
    for g in rng.permutation(len(groups)):
        if len(chosen) >= n:
            break
        trial = chosen | set(groups[g])
        if n_train - len(trial) >= max(1, n_train / 2) and keeps(trial):
            chosen = trial
    return sorted(chosen)


def _pick_combination(train, test, rng, share) -> list[int]:
    combos = [i for i, c in enumerate(train) if len(c.perturbations) > 1]
    measured = [i for i in combos if _singles_measured(train, i)]
    # At least one combination stays in training (the encoder's set size comes from training).
    n = min(_target(len(combos), share), len(combos) - 1)
    if n < 1:
        return []
    chosen = _greedy([[i] for i in measured], n, lambda chosen: True, rng, len(train))
    if chosen:
        return chosen

    def seen(chosen: set[int]) -> bool:  # every perturbation stays seen (alone or combined)
        names = {p for i, c in enumerate(train) if i not in chosen for p in c.perturbations}
        return all(set(train[i].perturbations) <= names for i in chosen)

    # No combination has all its singles measured (e.g. Norman's training pairs): unseen
    # combinations of perturbations still seen in training ask the nearest question.
    return _greedy([[i] for i in combos], n, seen, rng, len(train))


def _pick_perturbation(train, test, rng, share) -> list[int]:
    names = sorted({p for c in train for p in c.perturbations})
    groups = [[i for i, c in enumerate(train) if p in c.perturbations] for p in names]
    if len(names) < 2:
        return []
    return _greedy(groups, _target(len(train), share), lambda chosen: True, rng, len(train))


def _pick_cell_type(train, test, rng, share) -> list[int]:
    pairs = sorted({(c.perturbations, str(c.cell_type)) for c in train})
    groups = [
        [i for i, c in enumerate(train) if (c.perturbations, str(c.cell_type)) == pair]
        for pair in pairs
    ]

    def keeps(chosen: set[int]) -> bool:  # the perturbation stays seen in another cell type
        kept = {c.perturbations for i, c in enumerate(train) if i not in chosen}
        return all(train[i].perturbations in kept for i in chosen)

    if len({str(c.cell_type) for c in train}) < 2:
        return []
    return _greedy(groups, _target(len(train), share), keeps, rng, len(train))


def _dose_group(c: Condition) -> tuple:
    return (c.perturbations, c.cell_type, c.covariates)


def _pick_dose(train, test, rng, share) -> list[int]:
    doses: dict[tuple, set] = {}
    for c in train:
        doses.setdefault(_dose_group(c), set()).add(c.doses)
    test_doses = {c.doses for c in test}
    multi = [i for i, c in enumerate(train) if len(doses[_dose_group(c)]) >= 2]
    at_test = [i for i in multi if train[i].doses in test_doses]
    # Extrapolation (every test dose above, or below, all training doses): the training
    # conditions at their group's highest (lowest) dose ask the same question.
    if test_doses and min(test_doses) > max(c.doses for c in train):
        edge = [i for i in multi if train[i].doses == max(doses[_dose_group(train[i])])]
    elif test_doses and max(test_doses) < min(c.doses for c in train):
        edge = [i for i in multi if train[i].doses == min(doses[_dose_group(train[i])])]
    else:
        edge = [
            i
            for i in multi
            if min(doses[_dose_group(train[i])])
            < train[i].doses
            < max(doses[_dose_group(train[i])])
        ]
    eligible = at_test or edge or multi

    def keeps(chosen: set[int]) -> bool:
        rest = {_dose_group(c) for i, c in enumerate(train) if i not in chosen}
        return all(_dose_group(train[i]) in rest for i in chosen)

    return _greedy([[i] for i in eligible], _target(len(train), share), keeps, rng, len(train))


def _pick_covariate(train, test, rng, share) -> list[int]:
    values = sorted({c.covariates for c in train})
    if len(values) < 2:
        return []
    inner = values[1:-1] or values  # interpolation first: an inner value when there is one
    value = inner[int(rng.integers(len(inner)))]
    chosen = [i for i, c in enumerate(train) if c.covariates == value]
    return chosen if len(chosen) <= len(train) / 2 else []


def _pick_random(train, test, rng, share) -> list[int]:
    def keeps(chosen: set[int]) -> bool:
        rest = [c for i, c in enumerate(train) if i not in chosen]
        names = {p for c in rest for p in c.perturbations}
        types = {c.cell_type for c in rest}
        return all(
            train[i].cell_type in types and set(train[i].perturbations) <= names for i in chosen
        )

    groups = [[i] for i in range(len(train))]
    return _greedy(groups, _target(len(train), share), keeps, rng, len(train))


_PICKERS = {
    "combination": _pick_combination,
    "perturbation": _pick_perturbation,
    "cell_type": _pick_cell_type,
    "dose": _pick_dose,
    "covariate": _pick_covariate,
    "random": _pick_random,
}
_WHY_EMPTY = {
    "combination": "fewer than two training combinations, or none whose perturbations stay "
    "seen in training",
    "perturbation": "fewer than two training perturbations",
    "cell_type": "no perturbation is measured in two cell types (or only one cell type)",
    "dose": "no (perturbation, cell type) is measured at two doses",
    "covariate": "fewer than two covariate values, or one value holds most conditions",
    "random": "no condition can be held back with its perturbations and cell type still seen",
}
