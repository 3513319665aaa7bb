"""Reports rebuilt from results files alone (results.json, and metrics.jsonl for training curves):
one self-contained HTML page, its Markdown twin, and the leaderboard as LaTeX and CSV."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from vitrobust.checkpoint import atomic_write_text
from vitrobust.errors import InputError
from vitrobust.figures.seeds import seed_bars
from vitrobust.report.controls import comparisons as control_comparisons
from vitrobust.report.controls import controls_notes, controls_table
from vitrobust.report.html import Page, render_html, render_markdown
from vitrobust.report.runs import Run, as_runs, load_runs
from vitrobust.report.sections import Section, build_sections
from vitrobust.report.seeds import aggregate, seed_notes, seeds_table
from vitrobust.report.tables import leaderboard, markdown_table, summary_rows, text_table


def failed_checks(runs: Iterable[str | Path | Run]) -> list[str]:
    """One line per self-check that failed in any run's results (shown as warnings in reports)."""
    lines = []
    for run in as_runs(runs):
        for name, entry in run.results.items():
            checks = entry.get("checks", {}) if isinstance(entry, dict) else {}
            for key, check in checks.items() if isinstance(checks, dict) else ():
                if isinstance(check, dict) and check.get("ok") is False:
                    lines.append(f"{run.name} / {name} / {key}: {check.get('detail', '')}")
    return lines


def report_files(out: str | Path) -> dict[str, Path]:
    """The files one report writes: the page, and beside it Markdown, LaTeX and CSV of the same name."""
    out = Path(out)
    return {"html": out, "markdown": out.with_suffix(".md"), "latex": out.with_suffix(".tex"),
            "csv": out.with_suffix(".csv")}


def build_report(run_dirs: Iterable[str | Path], out: str | Path | None = None,
                 title: str = "vitrobust report", sort: str | None = None,
                 extra_figures: Iterable[tuple[str, Path]] = (), extra_sections: Iterable[Section] = (),
                 controls: list | None = None) -> Path:
    """Write report.html (+ .md, .tex, .csv beside it) for the runs; returns the HTML path.

    `out` defaults to RUN/report.html for one run, else ./report.html. Plots the report draws go to
    figures/ beside it (the Markdown links them; the HTML embeds them). `sort` names a leaderboard
    column (see tables.leaderboard); `extra_figures` are (caption, PNG) drawn by the caller, `extra_sections`
    sections the caller built (shown first, after the matched controls); `controls` the comparisons with
    matched controls when the caller computed them already (report/controls.py). Runs that
    differ only by seed also get a Seeds section and seeds.json beside the page (report/seeds.py).
    """
    if out and Path(out).suffix.lower() not in ("", ".html", ".htm"):
        raise InputError(f"--out {out} should name the HTML page (e.g. report.html); the Markdown, LaTeX and "
                         "CSV versions are written beside it")
    runs = load_runs(run_dirs)
    out = Path(out).with_suffix(Path(out).suffix or ".html") if out else (
        runs[0].results_path.parent / "report.html" if len(runs) == 1 else Path("report.html"))
    files = report_files(out)
    board = leaderboard(runs, sort)
    atomic_write_text(files["latex"], board.latex())
    atomic_write_text(files["csv"], board.csv())

    sections = build_sections(board.runs, out.parent / "figures", list(extra_figures))
    if (paired := board.paired_table()) is not None:  # is a difference real? (report/tables.py comparisons)
        sections.insert(0, Section("paired", "Paired comparisons", [paired], notes=[
            "McNemar's exact test counts the images only one of the two runs got right (for seed groups: the "
            "two runs of each paired seed); a difference with p >= 0.05 may be chance. Runs evaluated on other "
            "images (another subset or data) are not paired. min. detectable: the smallest difference these "
            "images find with 80% power at the 0.05 level; a 'not significant' below it may be too few images."]))
    if groups := aggregate(board.runs, board.columns):  # runs repeated over seeds (report/seeds.py)
        atomic_write_text(out.parent / "seeds.json", json.dumps(groups, indent=2))
        bars = seed_bars(groups, out.parent / "figures" / "report_seeds.png")
        figure = [("Top-1 over seeds: mean, sample std (not a 95% interval), each seed", bars)] if bars else []
        sections.append(Section("seeds", "Runs repeated over seeds", [seeds_table(groups, board.columns)], figure,
                                seed_notes(groups)))
    sections[:0] = list(extra_sections)  # the caller's own sections (a study's claims) lead
    found = control_comparisons(board.runs, board.columns) if controls is None else controls
    if found:  # each method against its matched control
        sections.insert(0, Section("controls", "Methods against their matched controls", [controls_table(found)],
                                   notes=controls_notes(found)))
    page = Page(title, board.runs, board.table(), board.notes(), failed_checks(board.runs), sections,
                downloads=[files["latex"], files["csv"]])
    atomic_write_text(files["markdown"], render_markdown(page, out.parent))
    atomic_write_text(out, render_html(page))
    return out


__all__ = ["build_report", "failed_checks", "leaderboard", "load_runs", "markdown_table", "report_files",
           "summary_rows", "text_table"]
