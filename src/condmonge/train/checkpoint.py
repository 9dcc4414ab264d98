"""Checkpoints as one safetensors file: named arrays plus a JSON header, never pickle.

A checkpoint is written to a temporary file in the same directory, read back, and renamed over
the old one, so a crash at any moment leaves either the previous or the new checkpoint, never half
of one. The checkpoint it replaces is kept beside it as ``model.prev.safetensors`` (the last good
one, should the newest ever be damaged by something outside condmonge, e.g. a bad copy).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from condmonge._version import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, __version__
from condmonge.errors import CheckpointError
from condmonge.files import replace_atomically

__all__ = [
    "CHECKPOINT_NAME",
    "PREVIOUS_NAME",
    "flatten_tree",
    "previous_checkpoint",
    "read_checkpoint",
    "replace_atomically",
    "restore_leaves",
    "tree_leaves_arrays",
    "unflatten_tree",
    "write_checkpoint",
]

CHECKPOINT_NAME = "model.safetensors"
PREVIOUS_NAME = "model.prev.safetensors"


def previous_checkpoint(path: str | Path) -> Path:
    """Where the checkpoint replaced by the latest write of ``path`` is kept."""
    path = Path(path)
    if path.is_dir():
        return path / PREVIOUS_NAME
    stem = path.name.removesuffix(".safetensors")
    return path.with_name(f"{stem.removesuffix('.prev')}.prev.safetensors")


_SAME_CONFIG = "resume with the config of that run, or write to a new --out directory"


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
            f"it was written with another model configuration: {_SAME_CONFIG}"
        )
    restored = []
    for name, leaf in zip(names, leaves, strict=True):
        value = arrays[name]
        if np.shape(value) != np.shape(leaf):
            raise CheckpointError(
                f"checkpoint array '{name}' has shape {value.shape}, expected {np.shape(leaf)}; "
                f"it was written with another model configuration: {_SAME_CONFIG}"
            )
        restored.append(value.astype(np.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(treedef, restored)


def write_checkpoint(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write ``arrays`` and ``meta`` (JSON) to ``path``, keeping the one it replaces.

    Steps: write a temporary file beside ``path``, flush it to disk, read its header back, link
    the current checkpoint to :func:`previous_checkpoint` (atomically), rename the temporary
    file over ``path``. A kill at any moment leaves ``path`` either old or new and complete.
    """
    path = Path(path)
    header = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "condmonge_version": __version__,
        "meta": json.dumps(meta),
    }

    def write(tmp: Path) -> None:
        # np.ascontiguousarray would turn 0-d arrays into 1-d ones; copy keeps the shape.
        save_file({k: np.array(v, order="C") for k, v in arrays.items()}, str(tmp), metadata=header)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _verify(tmp, header, len(arrays))
        if path.is_file():
            _keep_previous(path)

    replace_atomically(path, write)
    _fsync_dir(path.parent)
    return path


def _verify(tmp: Path, header: dict[str, str], n_arrays: int) -> None:
    """Read the written file back before it may replace a good checkpoint."""
    try:
        with safe_open(str(tmp), framework="numpy") as handle:
            ok = handle.metadata() == header and len(list(handle.keys())) == n_arrays
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"writing the checkpoint failed: {exc}") from None
    if not ok:
        raise CheckpointError("writing the checkpoint failed: the file read back differs")


def _keep_previous(path: Path) -> None:
    """Make ``path``'s current file the previous checkpoint, without a moment without ``path``."""

    def link(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(path, tmp)  # a second name for the same bytes: instant and atomic
        except OSError:  # file systems without hard links
            shutil.copyfile(path, tmp)

    replace_atomically(previous_checkpoint(path), link)


def _fsync_dir(directory: Path) -> None:
    """Persist the renames (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate a checkpoint written by :func:`write_checkpoint`.

    ``path`` is a run directory (its ``model.safetensors`` is read) or a checkpoint file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    previous = previous_checkpoint(path)
    fallback = (
        f"; the previous checkpoint is kept at '{previous}': load that file, or rename it to "
        f"{CHECKPOINT_NAME} to resume from it"
        if previous.is_file() and previous != path
        else ""
    )
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at '{path}'; pass the run directory written by `condmonge train` or "
            f"`model.save`{fallback}"
        )
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"'{path}' is not a readable condmonge checkpoint (truncated or foreign file: "
            f"{reason}){fallback}"
        ) from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"'{path}' is not a condmonge checkpoint (format header missing); pass a file "
            "written by `condmonge train` or `model.save`"
        )
    found = header.get("format_version")
    if found != str(CHECKPOINT_VERSION):
        raise CheckpointError(
            f"'{path}' has checkpoint format version {found} (condmonge "
            f"{header.get('condmonge_version')}); this condmonge {__version__} reads version "
            f"{CHECKPOINT_VERSION}: load it with the condmonge version that wrote it"
        )
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"'{path}' has a damaged metadata header{fallback}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}' has a damaged metadata header{fallback}")
    return meta, arrays
