"""Griffe extension for the API reference: render the docstrings' reST math as MathJax.

The docstrings write math the Sphinx way (``:math:`x``` inline, ``.. math::`` blocks), which
mkdocstrings' Markdown would show literally. This rewrites them into the ``$...$`` / ``$$``
delimiters of ``pymdownx.arithmatex`` when the docs are built; the sources stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_INLINE = re.compile(r":math:`([^`]+)`")
_BLOCK = re.compile(r"^(\s*)\.\. math::\s*(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_math_to_markdown(text: str) -> str:
    """``:math:`a``` -> ``$a$``; a ``.. math::`` directive and its indented body -> ``$$`` block."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _BLOCK.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        pad, body = match.group(1), [match.group(2)] if match.group(2) else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(pad)):
            body.append(lines[i].strip())
            i += 1
        out += ["", f"{pad}$$", *(f"{pad}{b}" for b in body if b), f"{pad}$$", ""]
    return _INLINE.sub(r"$\1$", "\n".join(out))  # inline math may span lines


class RstMath(griffe.Extension):
    """Rewrite the math of every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for each module, class, function and attribute."""
        if obj.docstring is not None:
            obj.docstring.value = rst_math_to_markdown(obj.docstring.value)
