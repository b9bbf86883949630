"""Griffe extension: render jhnas's reStructuredText-flavoured docstrings as Markdown.

The docstrings are written for ``help()`` and a terminal: Google-style sections (``Args:``,
``Returns:``, ``Raises:``) with a few reStructuredText constructs. This rewrites, for the API
pages only (the source is unchanged):

* roles ``:func:`x``` (``:class:``, ``:mod:``, ``:data:``, ``:attr:``, ``:meth:``, ``:exc:``,
  ``:obj:``) as inline code ``x``;
* ``:math:`x``` as inline maths ``\\(x\\)`` and ``.. math::`` blocks as display maths (rendered
  by pymdownx.arithmatex and MathJax);
* literal blocks introduced by ``::`` (``Example::`` and the indented lines after it) as fenced
  code blocks, ``pycon`` when they hold ``>>>`` prompts;
* reStructuredText section titles (a line underlined with ``---`` or ``===``) as bold
  paragraphs, so that they do not become headings of the API page.
"""
from __future__ import annotations

import re

from griffe import Extension, Object

_ROLE = re.compile(r":(?:func|class|mod|data|attr|meth|exc|obj):`~?([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_UNDERLINE = re.compile(r"^\s*(-{3,}|={3,})\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines of the indented block that starts at ``lines[start]`` (blank lines skipped
    first), indented deeper than ``base``; returns them dedented and the index after them."""
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    block: list[str] = []
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        block.append(lines[i])
        i += 1
    while block and not block[-1].strip():
        block.pop()
    depth = min((_indent(b) for b in block if b.strip()), default=0)
    return [b[depth:] for b in block], i


def to_markdown(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        pad = line[:_indent(line)]
        if stripped.startswith(".. math::"):
            first = stripped[len(".. math::"):].strip()
            rest, i = _block(lines, i + 1, _indent(line)) if i + 1 < len(lines) else ([], i + 1)
            body = [first] if first else []
            body += [r.strip() for r in rest if r.strip()]
            out += ["", f"{pad}\\[", *(pad + b for b in body), f"{pad}\\]", ""]
            continue
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            block, j = _block(lines, i + 1, _indent(line))
            if block:
                intro = line.rstrip()[:-2].rstrip()
                if intro.strip():
                    out.append(intro + (":" if intro[-1].isalnum() or intro[-1] == ")" else ""))
                lang = "pycon" if any(b.lstrip().startswith(">>>") for b in block) else "text"
                out += ["", f"{pad}```{lang}", *(pad + b if b else b for b in block),
                        f"{pad}```", ""]
                i = j
                continue
        if (_UNDERLINE.match(line) and out and out[-1].strip()
                and not _UNDERLINE.match(out[-1])):
            title = []
            while out and out[-1].strip():
                title.insert(0, out.pop().strip())
            out.append(f"{pad}**{' '.join(title)}**")
            i += 1
            continue
        out.append(line)
        i += 1
    text = "\n".join(out)
    text = _MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    return _ROLE.sub(lambda m: "`" + m.group(1) + "`", text)


class RstToMarkdown(Extension):
    """Rewrites every docstring with :func:`to_markdown` once it is loaded."""

    def on_instance(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
