"""A study's page as blocks, written twice: Markdown (report.md, figures as links beside it) and
one self-contained HTML file (report.html: figures inline as base64 PNGs, no other file, no
script), which any browser opens from a copy of the file alone.

Blocks: ``Heading``, ``Para`` (inline ``code`` and **bold** only), ``Table`` (src/studies/tables.py
writes both forms), ``Items``, ``Code``, ``Figure`` (a PNG file of the sweep directory).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from src.studies.tables import html_table, markdown_table


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    right: list[str] = field(default_factory=list)


@dataclass
class Items:
    items: list[str]


@dataclass
class Code:
    text: str


@dataclass
class Figure:
    file: str  # relative to the page's directory
    caption: str = ""


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #111; max-width: 1800px; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #999; padding: 3px 7px; }
thead th { background: #dbe4f0; }
td.num, th.num { text-align: right; }
code { background: #f0f0f0; padding: 0 2px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #444; }
""".strip()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (bytes 16-24), so the page lays out before decoding."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def to_markdown(title: str, blocks: list) -> str:
    lines = [f"# {title}"]
    for b in blocks:
        lines.append("")
        if isinstance(b, Heading):
            lines.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            lines.append(b.text)
        elif isinstance(b, Table):
            lines += markdown_table(b.head, b.rows, b.right)
        elif isinstance(b, Items):
            lines += [f"- {i}" for i in b.items]
        elif isinstance(b, Code):
            lines += ["```", b.text.rstrip(), "```"]
        elif isinstance(b, Figure):
            lines.append(f"![{b.caption or b.file}]({b.file})")
    return "\n".join(lines) + "\n"


def to_html(title: str, blocks: list, base: Path) -> str:
    """The page as one HTML document; figures read from ``base`` and inlined."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            body.append(html_table(b.head, b.rows, b.right))
        elif isinstance(b, Items):
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            body.append(f"<pre>{html.escape(b.text.rstrip())}</pre>")
        elif isinstance(b, Figure):
            png = (Path(base) / b.file).read_bytes()
            width, height = png_size(png)
            body.append(f'<figure id="{html.escape(Path(b.file).stem)}"><img alt="{html.escape(b.caption or b.file)}" '
                        f'width="{width}" height="{height}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                        + (f"<figcaption>{_inline_html(b.caption)}</figcaption>" if b.caption else "") + "</figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>\n{STYLE}\n</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
