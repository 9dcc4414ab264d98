"""What ``condmonge split`` does once its arguments are parsed.

Kept apart from :mod:`condmonge.cli_work` because a split needs only the data layer (pandas,
anndata): it does not import JAX or the model, so it runs in about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from condmonge.data.spec import ConditionSpec
from condmonge.data.splits import SplitPlan, make_split, split_summary
from condmonge.data.tables import read_cells, write_cells

__all__ = ["split"]


def split(  # noqa: PLR0913  the parsed flags of one command
    data: Path,
    out: Path,
    spec: dict[str, Any],
    plan: dict[str, Any],
    key: str,
    features: str | None = None,
) -> Any:
    """Add the split column ``key`` to ``data`` (``make_split``), write ``out``; return the summary.

    Args:
      data, out: input and output ``.h5ad``.
      spec: ``condition_key``, ``control``, ``dose_key``, ``cell_type_key``.
      plan: the fields of :class:`~condmonge.data.splits.SplitPlan`.
      key: the obs column to write.
      features: for tables, the ``--features`` columns (names or globs, comma-separated).
    """
    condition_spec = ConditionSpec(**spec)
    adata = read_cells(
        data, condition_spec.obs_keys, required=condition_spec.obs_keys, features=features
    )
    make_split(adata, SplitPlan(**plan), condition_spec, key_added=key)
    summary = split_summary(adata, key)
    write_cells(adata, out)
    return summary
