"""The report page: its parts (Table, Plot, Section) and their rendering as one self-contained
HTML page, as Markdown, and as the files of the report folder.

Knows nothing of experiments: the section builders (bnexp.report.sections) fill the parts in.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field

import pandas as pd

# Image resolution: sharp on screen and in a PDF appendix, small enough to embed.
DPI = 110


@dataclass
class Table:
    """A report table: `raw` goes to tables/<name>.csv, `display` onto the page (none if empty)."""

    name: str
    title: str
    raw: pd.DataFrame
    display: pd.DataFrame


@dataclass
class Plot:
    """A figure rendered to PNG bytes, saved as plots/<name>.png."""

    name: str
    caption: str
    png: bytes

    @classmethod
    def of(cls, figure, name: str, caption: str) -> Plot:
        """A matplotlib figure rendered to PNG."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        return cls(name, caption, buffer.getvalue())


@dataclass
class Section:
    """One part of the page: an explanation, then tables, figures and notes."""

    anchor: str
    title: str
    explanation: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    collapsed: bool = False


def slug(text: str) -> str:
    """`text` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_")[:60]


CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #222; max-width: 1180px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1em; color: #444; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
nav a { margin-right: 1em; }
p.explain { color: #444; max-width: 60em; }
.table-wrap { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f4f5f7; border-bottom: 2px solid #ccc; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; }
tbody tr:hover { background: #fafbfc; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13.5px; }
ul.notes { color: #8a5a00; }
ul.summary li { margin: 0.3em 0; }
"""

_NUMERIC_CELL = re.compile(r"^[-+−]?[\d,]*\.?\d+(×|%)?$|^\[.*\]$|^[–-]$|^< ?0\.\d+$")


def _html_table(display: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in display.columns)
    body = []
    for row in display.itertuples(index=False):
        cells = []
        for value in row:
            text = str(value)
            css = ' class="num"' if _NUMERIC_CELL.match(text) else ""
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _md_table(display: pd.DataFrame) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in display.columns) + " |",
             "| " + " | ".join("---" for _ in display.columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in display.itertuples(index=False)]
    return "\n".join(lines)


def render_html(title: str, facts: list[tuple[str, str]], sections: list[Section]) -> str:
    """The report page: tables inline, figures as base64 PNG data URIs, no external resources."""
    facts_html = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>bnexp report: {html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{html.escape(title)}</h1><dl class=\"facts\">{facts_html}</dl></header>",
        f"<nav>{nav}</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        parts.append(f'<p class="explain">{html.escape(section.explanation)}</p>')
        if section.bullets:
            parts.append('<ul class="summary">' + "".join(f"<li>{html.escape(b)}</li>" for b in section.bullets)
                         + "</ul>")
        if section.collapsed:
            parts.append(f"<details><summary>Show {len(section.tables[0].display)} rows</summary>")
        shown = [table for table in section.tables if not table.display.empty]
        for table in shown:
            if len(shown) > 1:
                parts.append(f"<h3>{html.escape(table.title)}</h3>")
            parts.append(_html_table(table.display))
        if section.collapsed:
            parts.append("</details>")
        for plot in section.figures:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(plot.caption)}">'
                         f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")
        if section.notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
                         + "</ul>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(title: str, facts: list[tuple[str, str]], sections: list[Section]) -> str:
    """report.md: the page's content with tables in Markdown and links to plots/*.png."""
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.explanation, ""]
        lines += [f"- {bullet}" for bullet in section.bullets] + ([""] if section.bullets else [])
        shown = [table for table in section.tables if not table.display.empty]
        for table in shown:
            if len(shown) > 1:
                lines += [f"### {table.title}", ""]
            lines += [_md_table(table.display), ""]
        lines += [f"![{plot.caption}](plots/{plot.name}.png)\n" for plot in section.figures]
        lines += [f"- {note}" for note in section.notes]
    return "\n".join(lines).rstrip() + "\n"


def report_files(title: str, facts: list[tuple[str, str]], sections: list[Section]) -> dict[str, bytes | str]:
    """The report folder's files, {path inside it: content}: index.html, report.md,
    tables/<name>.csv (full precision) and plots/<name>.png."""
    files: dict[str, bytes | str] = {}
    for section in sections:
        for table in section.tables:
            files[f"tables/{table.name}.csv"] = table.raw.to_csv(index=False)
        for plot in section.figures:
            files[f"plots/{plot.name}.png"] = plot.png
    files["index.html"] = render_html(title, facts, sections)
    files["report.md"] = render_markdown(title, facts, sections)
    return files
