"""Run many ``condmonge`` command lines through the real entry point in one process.

``python tests/cli_batch.py < commands.json`` reads a JSON list of argument lists and prints a
JSON list of ``{"code", "stdout", "stderr"}``, one per command. Each command goes through
:func:`condmonge.cli.main` exactly as the console script does (argument parsing, the lazy
start-up, the error handlers, ``sys.exit``); only the interpreter and its imports are shared,
which is what makes a catalogue of a few dozen wrong command lines cheap (JAX is imported once).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings

from condmonge import cli

FILTERS = list(warnings.filters)


def run_one(args: list[str]) -> dict[str, object]:
    """Exit code and output of ``condmonge *args``."""
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["condmonge", *args]
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        # The filters of a fresh process, and "once" registries forgotten (the version bump
        # invalidates them), so every command shows its warnings as the console script would.
        warnings.filters[:] = FILTERS
        warnings._filters_mutated()
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
    return {"code": code if isinstance(code, int) else 0, "stdout": out.getvalue(),
            "stderr": err.getvalue()}  # fmt: skip


if __name__ == "__main__":
    commands = json.load(sys.stdin)
    results = [run_one(args) for args in commands]
    sys.stdout.write(json.dumps(results))
