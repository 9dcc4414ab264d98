"""Exception hierarchy of condmonge.

Every error a user can cause by their input derives from :class:`CondMongeError`, carries a
one-line message that names what is wrong, where, and how to fix it, and is turned by the CLI
into exit code 2 with that line on stderr.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "CondMongeError",
    "ConfigError",
    "DataError",
    "DataWarning",
    "UnknownConditionError",
    "NotFittedError",
    "TrainingError",
    "TrainingInterrupted",
    "one_line",
    "suggest",
]


class CondMongeError(ValueError):
    r"""Base class of every error caused by user input.

    The message is kept on one line whatever it quotes: newlines, tabs and other control
    characters of user values (labels, doses, file names) are escaped as ``\n`` etc.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    r"""``text`` with every non-printable character (``\n``, ``\t``, ...) escaped.

    Args:
      text: any text (a message that quotes user values).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DataError(CondMongeError):
    """The AnnData (or a table) does not have the expected content."""


class DataWarning(UserWarning):
    """The data can be used but probably not as meant (raw counts, conditions with few cells)."""


class UnknownConditionError(CondMongeError):
    """A condition cannot be encoded: unknown perturbation, cell type or malformed label."""


class ConfigError(CondMongeError):
    """A configuration file or value is invalid."""


class CheckpointError(CondMongeError):
    """A checkpoint is missing, truncated, foreign or from an incompatible version."""


class TrainingError(CondMongeError):
    """Training cannot go on (e.g. a non-finite loss)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C (SIGINT); the last completed step was checkpointed."""


class NotFittedError(CondMongeError):
    """A method that needs a trained model was called before ``fit`` or ``load``."""


def suggest(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""`` when none is close.

    Args:
      name: what the user wrote.
      candidates: the valid names.
    """
    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
