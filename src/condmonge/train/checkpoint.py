"""Checkpoints as one safetensors file: named arrays plus a JSON header, never pickle.

A checkpoint is written to a temporary file in the same directory and renamed over the old one,
so a crash at any moment leaves either the previous or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from condmonge._version import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, __version__
from condmonge.errors import CheckpointError

__all__ = [
    "CHECKPOINT_NAME",
    "flatten_tree",
    "read_checkpoint",
    "restore_leaves",
    "tree_leaves_arrays",
    "unflatten_tree",
    "write_checkpoint",
]

CHECKPOINT_NAME = "model.safetensors"


def flatten_tree(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """``{"prefix/a/b": array}`` for a nested dict of arrays (Flax params)."""
    flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
    return {f"{prefix}/{k}": np.asarray(v) for k, v in flat.items()}


def unflatten_tree(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """Inverse of :func:`flatten_tree` for one prefix."""
    start = f"{prefix}/"
    own = {k[len(start) :]: v for k, v in arrays.items() if k.startswith(start)}
    return traverse_util.unflatten_dict(own, sep="/")


def tree_leaves_arrays(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """Leaves of any pytree (e.g. an optax state) as ``prefix/00000`` arrays."""
    leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
    return {f"{prefix}/{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def restore_leaves(template: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """Fill the leaves of ``template`` (same structure as saved) from ``prefix/00000`` arrays."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    names = sorted(k for k in arrays if k.startswith(f"{prefix}/"))
    if len(names) != len(leaves):
        raise CheckpointError(
            f"checkpoint holds {len(names)} arrays of '{prefix}', this model needs {len(leaves)}; "
            "it was written with another model configuration"
        )
    restored = []
    for name, leaf in zip(names, leaves, strict=True):
        value = arrays[name]
        if np.shape(value) != np.shape(leaf):
            raise CheckpointError(
                f"checkpoint array '{name}' has shape {value.shape}, expected {np.shape(leaf)}"
            )
        restored.append(value.astype(np.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(treedef, restored)


def write_checkpoint(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write ``arrays`` and ``meta`` (JSON) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "condmonge_version": __version__,
        "meta": json.dumps(meta),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # np.ascontiguousarray would turn 0-d arrays into 1-d ones; copy keeps the shape.
        save_file({k: np.array(v, order="C") for k, v in arrays.items()}, tmp, metadata=header)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate a checkpoint written by :func:`write_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at '{path}'; pass the run directory written by `condmonge train` or "
            "`model.save`"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"'{path}' is not a readable condmonge checkpoint (truncated or foreign file: {exc})"
        ) from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a condmonge checkpoint (format header missing)")
    found = header.get("format_version")
    if found != str(CHECKPOINT_VERSION):
        raise CheckpointError(
            f"'{path}' has checkpoint format version {found} (condmonge "
            f"{header.get('condmonge_version')}); this condmonge {__version__} reads version "
            f"{CHECKPOINT_VERSION}"
        )
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"'{path}' has a damaged metadata header") from None
    return meta, arrays
