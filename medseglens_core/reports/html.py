"""Self-contained HTML reports: inline CSS, figures embedded as base64 PNG, no external links.

A report is a title plus :class:`Section` s; each section holds paragraphs, tables and figures.
All text is HTML-escaped, so ids and cohort names coming from users cannot inject markup.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.4em;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto}figcaption{font-size:.8em;color:#555;max-width:32em}
p.note{color:#555;font-size:.9em}
"""


@dataclass
class Figure:
    png: bytes
    caption: str = ""


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    alt = html.escape(f.caption or "figure")
    cap = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>'


def render_html(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """The whole page as one string (UTF-8, no external resources)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f'<p class="note">{html.escape(intro)}</p>')
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.heading)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        parts += [_table(t) for t in s.tables]
        parts += [_figure(f) for f in s.figures]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path | str, title: str, sections: Sequence[Section], intro: str = "") -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title, sections, intro), encoding="utf-8")
    return path
