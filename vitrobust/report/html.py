"""Page assembly: one self-contained HTML file (inline CSS, images as data: URIs, no script, no
external resource) and its Markdown twin (images linked relative to the Markdown file)."""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vitrobust.report.runs import Run
from vitrobust.report.sections import Section
from vitrobust.report.tables import Table, html_table, markdown_table

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,.t{text-align:left}caption{text-align:left;color:#555;padding:4px 0}
.wide{overflow-x:auto;max-width:100%}
img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#555}
nav a{margin-right:1em}.warn{color:#a40}.note{color:#555}pre{white-space:pre-wrap;font-size:12px}"""

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".webp": "image/webp", ".svg": "image/svg+xml"}


@dataclass
class Page:
    title: str
    runs: list[Run]
    leaderboard: Table
    notes: list[str]  # under the leaderboard
    checks: list[str]  # failed self-checks
    sections: list[Section]
    downloads: list[Path]  # files written beside the page (LaTeX, CSV)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _image(caption: str, path: Path) -> str:
    data = path.read_bytes()
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    size = _png_size(data)
    dims = f" width='{size[0]}' height='{size[1]}'" if size else ""
    src = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return (f"<figure><img alt='{html.escape(caption)}'{dims} src='{src}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_html(page: Page) -> str:
    esc = html.escape
    nav = [("leaderboard", "Leaderboard"), ("checks", "Self-checks"),
           *((s.id, s.title) for s in page.sections), ("raw", "Raw results")]
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{esc(page.title)}</title><style>{CSS}</style></head><body>",
             f"<header><h1>{esc(page.title)}</h1>",
             f"<p class='note'>{len(page.runs)} run(s), rebuilt from: "
             + ", ".join(f"<code>{esc(str(r.results_path))}</code>" for r in page.runs) + "</p>",
             "<nav>" + "".join(f"<a href='#{i}'>{esc(t)}</a>" for i, t in nav) + "</nav></header><main>",
             "<section id='leaderboard'><h2>Leaderboard</h2>",
             html_table(page.leaderboard, "leaderboard-table")]
    parts += [f"<p class='note'>{esc(n)}</p>" for n in page.notes]
    if page.downloads:
        parts.append("<p class='note'>Also as " + ", ".join(f"<a href='{esc(p.name)}'>{esc(p.name)}</a>"
                                                              for p in page.downloads) + "</p>")
    parts.append("</section><section id='checks'><h2>Self-checks</h2>")
    parts += [f"<p class='warn'>&#9888; failed check: {esc(w)}</p>" for w in page.checks] or \
             ["<p>all self-checks passed</p>"]
    parts.append("</section>")
    for sec in page.sections:
        parts.append(f"<section id='{esc(sec.id)}'><h2>{esc(sec.title)}</h2>")
        parts += [html_table(t) for t in sec.tables]
        parts += [f"<p class='note'>{esc(n)}</p>" for n in sec.notes]
        parts += [_image(caption, path) for caption, path in sec.figures]
        parts.append("</section>")
    parts.append("<section id='raw'><h2>Raw results</h2>")
    for run in page.runs:
        raw = json.dumps(run.results, indent=1)
        parts.append(f"<details><summary>{esc(run.name)}</summary><pre>{esc(raw)}</pre></details>")
    parts.append("</section></main></body></html>")
    return "\n".join(parts) + "\n"


def _md_table(table: Table) -> str:
    caption = f"*{table.caption}*\n\n" if table.caption else ""
    return caption + markdown_table(table.header, table.rows, table.bold) + "\n"


def render_markdown(page: Page, folder: Path) -> str:
    """Markdown with image links relative to `folder` (where the .md file lies)."""
    md = [f"# {page.title}", "", "## Leaderboard", "", _md_table(page.leaderboard)]
    md += [f"> {n}\n" for n in page.notes]
    md += ["## Self-checks", ""]
    md += [f"> **warning** failed check: {w}\n" for w in page.checks] or ["all self-checks passed\n"]
    for sec in page.sections:
        md += [f"## {sec.title}", ""]
        md += [_md_table(t) for t in sec.tables]
        md += [f"> {n}\n" for n in sec.notes]
        md += [f"![{caption}]({Path(os.path.relpath(path, folder)).as_posix()})\n"
               for caption, path in sec.figures]
    return "\n".join(md)


__all__ = ["CSS", "Page", "render_html", "render_markdown"]
