"""One self-contained HTML page: tables, figures embedded as PNG data, the matrix spec and the
environment. No scripts, no external files, no network: it opens offline in any browser."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import pandas as pd

from experiments.report.tables import to_html

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       max-width: 1320px; margin: 24px auto; padding: 0 24px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; margin: 0 0 8px 0; }
.note { color: #444; margin: 6px 0 10px 0; }
table { border-collapse: collapse; margin: 8px 0 4px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d6d6; padding: 4px 10px; text-align: right; white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; }
td:first-child, th:first-child, td.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
td.failed { background: #fde8e8; color: #9b1c1c; font-weight: 600; }
td.missing { background: #fff4d6; color: #8a5a00; font-weight: 600; }
figure { margin: 16px 0 24px 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; margin-top: 4px; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 10px; overflow-x: auto; }
dt { font-weight: 600; margin-top: 6px; }
.counts span { display: inline-block; margin-right: 14px; }
.counts .bad { color: #9b1c1c; font-weight: 600; }
"""


@dataclass(frozen=True)
class Section:
    """A titled table with an optional note under the title."""

    title: str
    table: pd.DataFrame
    note: str = ""


@dataclass(frozen=True)
class Plot:
    """A figure as PNG bytes with its caption."""

    stem: str
    caption: str
    png: bytes


def _paragraph(text: str, css: str) -> str:
    return f'<p class="{css}">{html.escape(text)}</p>' if text else ""


def _section(section: Section) -> str:
    body = (
        to_html(section.table)
        if len(section.table)
        else '<p class="note">None: every cell has a measurement.</p>'
    )
    return f"<h2>{html.escape(section.title)}</h2>{_paragraph(section.note, 'note')}{body}"


def _plot(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    alt = html.escape(plot.caption)
    return (
        f'<figure id="{html.escape(plot.stem)}"><img alt="{alt}" '
        f'src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
    )


def _count_class(name: str, n: int) -> str:
    return "bad" if n and not name.startswith("ok") else ""


def render_html(
    title: str,
    meta: list[str],
    counts: dict[str, int],
    sections: list[Section],
    plots: list[Plot],
    definitions: dict[str, str],
    spec_text: str,
    environment: pd.DataFrame,
) -> str:
    """The whole page as one string."""
    count_spans = "".join(
        f'<span class="{_count_class(name, n)}">{n} {html.escape(name)}</span>'
        for name, n in counts.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(_paragraph(line, "meta") for line in meta),
        f'<p class="meta counts">cells: {count_spans}</p>',
        *(_section(s) for s in sections),
    ]
    if plots:
        parts.append("<h2>Figures</h2>")
        parts += [_plot(p) for p in plots]
    parts.append("<h2>How to read this report</h2><dl>")
    parts += [
        f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>"
        for term, text in definitions.items()
    ]
    parts.append("</dl>")
    if spec_text:
        parts.append(f"<h2>Matrix spec</h2><pre>{html.escape(spec_text)}</pre>")
    if len(environment):
        parts.append(f"<h2>Environment</h2>{to_html(environment)}")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
