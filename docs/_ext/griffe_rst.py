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
  paragraphs, so that they do not become headings of the API page;
* reStructuredText simple tables (columns marked by ``=== ===`` borders, a header row between
  the first two borders) as Markdown tables;
* a ``<`` that would open an HTML tag in prose (``<g, dL/dW>``) as ``&lt;``.
"""
from __future__ import annotations

import re

from griffe import Extension, Object

_ROLE = re.compile(r":(?:func|class|mod|data|attr|meth|exc|obj):`~?([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_UNDERLINE = re.compile(r"^\s*(-{3,}|={3,})\s*$")
_CODE = re.compile(r"(``.*?``|`[^`]*`|\\\(.*?\\\))")
_TAG = re.compile(r"<(?=[A-Za-z/!?])")
_BORDER = re.compile(r"^\s*=+( +=+)+\s*$")


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


def _table(lines: list[str], start: int) -> tuple[list[str], int] | None:
    """The simple table whose top border is ``lines[start]``, as Markdown lines, and the index
    after its bottom border; None if it does not close. A border followed directly by another
    row ends the header; a row whose first cell is empty continues the row above."""
    starts = [m.start() for m in re.finditer(r"=+", lines[start])]
    ends = starts[1:] + [None]
    rows: list[list[str]] = []
    header = 0
    i = start + 1
    while i < len(lines):
        line = lines[i]
        i += 1
        if _BORDER.match(line):
            if i < len(lines) and lines[i].strip() and not header:
                header = len(rows)
                continue
            if not rows:
                return None
            head = rows[:header] or [[""] * len(starts)]
            body = rows[header:]
            md = [r for r in head[:1]] + [["---"] * len(starts)] + body
            cells = (" | ".join(c.replace("|", "\\|") for c in r) for r in md)
            return ["", *(f"| {c} |" for c in cells), ""], i
        if not line.strip():
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, ends)]
        if rows and not cells[0] and len(rows) > header:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    return None


def to_markdown(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        pad = line[:_indent(line)]
        if _BORDER.match(line):
            table = _table(lines, i)
            if table is not None:
                out += table[0]
                i = table[1]
                continue
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
    fenced = examples = False
    for k, line in enumerate(out):
        examples = examples or line.strip() in ("Examples:", "Example:")
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and not examples:
            parts = _CODE.split(line)
            out[k] = "".join(p if j % 2 else _TAG.sub("&lt;", p) for j, p in enumerate(parts))
    text = "\n".join(out)
    text = _MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    return _ROLE.sub(lambda m: "`" + m.group(1) + "`", text)


class RstToMarkdown(Extension):
    """Rewrites every docstring with :func:`to_markdown` once it is loaded."""

    def on_instance(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
