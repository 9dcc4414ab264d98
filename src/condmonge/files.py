"""Atomic file replacement, shared by checkpoints, AnnData outputs and reports."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["replace_atomically"]


def replace_atomically(
    path: str | Path, write: Callable[[Path], object], suffix: str = ".tmp"
) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Readers see the old file or the complete new one, never a half-written one. ``suffix``:
    the temporary file's suffix, for writers that look at it.

    Args:
      path: the final file (its folder is created).
      write: writes the content to the path it is given.
      suffix: the temporary file's suffix, for writers that look at it (``np.save`` adds
        ``.npy`` unless the name ends with it).

    Returns:
      ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
