"""Checks and plumbing of the command line that need only the standard library.

Everything here runs before the model and its dependencies are imported (see
:func:`condmonge.cli.start`), so that a wrong output path or list fails in well under a second,
before any work starts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condmonge.errors import DataError

__all__ = [
    "check_output_file",
    "check_run_dir",
    "install_interrupt_handler",
    "interrupted",
    "parse_items",
    "show_warnings_plainly",
    "write_crash_log",
]


_log = logging.getLogger("condmonge")

# Warnings that are notes about the numerics rather than about the user's input: they go to
# the debug log (CONDMONGE_DEBUG=1 shows them), not to every run's stderr.
_INTERNAL_NOTES = ("scaling-domain Sinkhorn",)


def show_warnings_plainly() -> None:
    """Print warnings as ``warning: <message>`` (no file paths or source lines).

    Internal solver notes are logged at debug level instead.
    """

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if any(note in text for note in _INTERNAL_NOTES):
            _log.debug(text)
            return
        print(f"warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show


# Cell files `train`, `predict` and `split` read and write (the suffix names the format);
# the same list as condmonge.data.tables.CELL_SUFFIXES, kept here so that the CLI starts fast.
CELL_SUFFIXES = (".h5ad", ".zarr", ".csv", ".tsv", ".parquet")


def _nearest_existing(path: Path) -> Path:
    """The first of ``path``, its parent, ... that exists (the directory a write creates in)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path, option: str) -> None:
    """``path`` (absent, or to be replaced) can be created: no file in the way, writable."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise DataError(
            f"{option} '{path}': '{base}' is a file, not a directory; choose a path outside it"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise DataError(
            f"{option} '{path}': directory '{base}' is not writable; choose a writable location"
        )


def check_output_file(
    path: Path, option: str, suffixes: Sequence[str], example: str = "predictions"
) -> None:
    """Fail now, before any work, if ``path`` cannot be written as a file of ``suffixes``.

    Args:
      path: the output file (it may exist: it is then replaced).
      option: the flag that named it, for the message (``"--out"``).
      suffixes: accepted suffixes, e.g. ``(".h5ad",)``.
      example: a file name (without suffix) for the message's example.
    """
    if path.suffix.lower() not in suffixes:
        wanted = " or ".join(suffixes)
        raise DataError(
            f"{option} '{path}' must end in {wanted}: the suffix names the format written "
            f"(e.g. {option} {path.with_suffix(suffixes[0])})"
        )
    if path.is_dir() and path.suffix.lower() != ".zarr":  # a .zarr store is a directory
        raise DataError(
            f"{option} '{path}' is a directory; give a file name inside it, e.g. "
            f"{option} {path / (example + suffixes[0])}"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise DataError(f"{option} '{path}' exists and is not writable; choose another path")
    _check_creatable(path, option)


def check_run_dir(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Fail now, before training, if the run directory ``path`` cannot hold the run.

    Raises:
      DataError: ``path`` is a file, lies under a file, is not writable, or already holds a
        run and neither ``resume`` nor ``overwrite`` is set.
    """
    if path.exists() and not path.is_dir():
        raise DataError(
            f"--out '{path}' is a file; give a directory (it is created if absent), e.g. "
            f"--out {path.with_suffix('')}_run"
        )
    if (path / "model.safetensors").exists() and not (resume or overwrite):
        raise DataError(
            f"'{path}' already holds a run (model.safetensors); pass --resume to continue it, "
            "--overwrite to start over, or choose another --out"
        )
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise DataError(f"--out '{path}' is not writable; choose a writable directory")
        return
    _check_creatable(path, "--out")


def parse_items(values: str | Sequence[str] | None, option: str) -> list[str] | None:
    """``"A,B+C"`` or repeated options -> ``["A", "B+C"]``; ``None`` when not given.

    Raises:
      DataError: the option was given but names nothing (``""``, ``",,"``), or names an item
        twice.
    """
    if values is None:
        return None
    raw = [values] if isinstance(values, str) else list(values)
    items = [v.strip() for value in raw for v in value.split(",") if v.strip()]
    if not items:
        raise DataError(f"{option} {', '.join(map(repr, raw))} names nothing; e.g. {option} A,B+C")
    seen: set[str] = set()
    twice = [i for i in items if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if twice:
        raise DataError(f"{option} lists {twice[0]!r} twice; give each once")
    return items


# ----------------------------------------------------------------------------- Ctrl-C

_interrupts: list[int] = []


def _on_sigint(signum: int, frame: Any) -> None:
    _interrupts.append(signum)
    raise KeyboardInterrupt


def _unraisable(hook: Any, args: Any) -> None:
    # A Ctrl-C that lands in a callback Python runs "unraisably" (e.g. JAX's gc callback) is
    # printed and dropped there; deliver it again from outside that callback, so that it stops
    # the command instead of being swallowed.
    if isinstance(args.exc_value, KeyboardInterrupt):
        threading.Timer(0.05, signal.raise_signal, (signal.SIGINT,)).start()
        return
    hook(args)


def install_interrupt_handler() -> None:
    """Make Ctrl-C (SIGINT) raise :class:`KeyboardInterrupt` wherever it arrives.

    A shell that started the command in the background may have set SIGINT to "ignore"; a
    command that is interrupted must still stop, so Python's handler is put back.
    """
    signal.signal(signal.SIGINT, _on_sigint)
    previous = sys.unraisablehook
    sys.unraisablehook = lambda args: _unraisable(previous, args)


def interrupted() -> bool:
    """Whether a Ctrl-C arrived since :func:`install_interrupt_handler`."""
    return bool(_interrupts)


def raise_if_interrupted() -> None:
    """Raise :class:`KeyboardInterrupt` if a Ctrl-C arrived and was swallowed on the way.

    An import or a library call that catches every exception (``except BaseException``) can
    drop the ``KeyboardInterrupt`` of a Ctrl-C in start-up; the handler has recorded it, so the
    command checks here before it starts its long work (seen once in the suite: an interrupt
    1.5 s into ``train`` was lost and the run trained on).
    """
    if _interrupts:
        raise KeyboardInterrupt


# ----------------------------------------------------------------------------- bugs


def write_crash_log(command: str) -> Path:
    """Write the traceback of the exception being handled to a new log file; return its path."""
    fd, name = tempfile.mkstemp(prefix="condmonge-crash-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        log.write(f"condmonge {command}\nargv: {sys.argv!r}\n\n")
        traceback.print_exc(file=log)
    return Path(name)
