"""The one table writer: every Markdown table of a study (and its HTML twin for report.html),
and a study's ``benchmarks/<name>`` pair (``.json``, the numbers, and ``.md``, the same numbers for people, with the command).

A study computes rows; this module turns them into text. ``tests/test_architecture.py`` checks
that no other file of ``src/`` or ``scripts/`` writes a Markdown table rule (``|---``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from src.fileio import atomic_write, to_json


def fmt(x, spec: str = ".4g") -> str:
    """A table cell: blank for None, numbers by ``spec``, anything else as text."""
    if x is None:
        return ""
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence], right: Sequence[str] = ()) -> list[str]:
    """A Markdown table as lines: ``head`` the column names, ``rows`` the cells (already text, or
    values ``fmt`` writes), columns named in ``right`` right-aligned (numbers)."""
    rule = "|" + "".join("---:|" if h in right else "---|" for h in head)
    lines = ["| " + " | ".join(head) + " |", rule]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return lines


def html_table(head: Sequence[str], rows: Sequence[Sequence], right: Sequence[str] = ()) -> str:
    """The same table as HTML (cells escaped; ``right`` columns right-aligned)."""
    def cell(tag: str, text, col: str) -> str:
        align = ' class="num"' if col in right else ""
        return f"<{tag}{align}>{html.escape(text if isinstance(text, str) else fmt(text))}</{tag}>"

    lines = ["<table>", "<thead><tr>" + "".join(cell("th", h, h) for h in head) + "</tr></thead>", "<tbody>"]
    lines += ["<tr>" + "".join(cell("td", c, h) for c, h in zip(row, head)) + "</tr>" for row in rows]
    return "\n".join([*lines, "</tbody>", "</table>"])


def write_json(path: Path, data: dict) -> Path:
    """Strict JSON (a non-finite number is written null), written atomically."""
    return atomic_write(Path(path), lambda f: f.write(to_json(data, indent=1).encode()))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(Path(path), lambda f: f.write(text.encode()))


def write_study(out: Path, data: dict, markdown: str) -> tuple[Path, Path]:
    """A study's result: ``<out>.json`` (``data``) and ``<out>.md`` (``markdown``)."""
    out = Path(out)
    return write_json(out.with_suffix(".json"), data), write_text(out.with_suffix(".md"), markdown)
