"""Reports rebuilt from run directories (results.json, metrics.jsonl): HTML and Markdown."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from vitrobust.checkpoint import atomic_write_text
from vitrobust.evaluate.core import read_results
from vitrobust.report.adversarial_plots import accuracy_vs_eps
from vitrobust.report.plots import training_curves
from vitrobust.train.metrics import read_metrics

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.warn{color:#a40}"""


def _pct(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"


# (benchmark, key, column label): the headline numbers of the summary table, when present
HEADLINES = [
    ("clean", "top1", "clean top1 %"),
    ("pgd", "robust_top1", "PGD top1 %"),
    ("autoattack", "robust_top1", "AutoAttack top1 %"),
]


def _threat(entry: dict) -> str:
    eps = entry.get("eps")
    return f" ({entry.get('norm', '')} {eps:.3g})" if isinstance(eps, (int, float)) else ""


def summary_rows(runs: list[Path]) -> tuple[list[str], list[list[str]]]:
    """One row per run: name, model, params, training time, then each benchmark's headline number."""
    results = {run: read_results(run / "results.json") for run in runs}
    shown = [(b, k, label) for b, k, label in HEADLINES if any(k in r.get(b, {}) for r in results.values())]
    header = ["run", "model", "params (M)", "train s"]
    for b, _, label in shown:
        example = next(r[b] for r in results.values() if b in r)
        header.append(label + _threat(example))
    rows = []
    for run, res in results.items():
        meta = res.get("meta", {})
        params = meta.get("params")
        seconds = sum(r.get("seconds", 0.0) for r in read_metrics(run) if r.get("kind") == "epoch")
        row = [run.name, str(meta.get("model", "-")), f"{params / 1e6:.2f}" if params else "-",
               f"{seconds:.0f}" if seconds else "-"]
        rows.append(row + [_pct(res.get(b, {}).get(k)) for b, k, _ in shown])
    return header, rows


def failed_checks(runs: list[Path]) -> list[str]:
    """One line per self-check that failed in any run's results (shown as warnings in reports)."""
    lines = []
    for run in runs:
        for name, entry in read_results(run / "results.json").items():
            checks = entry.get("checks", {}) if isinstance(entry, dict) else {}
            for key, check in checks.items():
                if isinstance(check, dict) and check.get("ok") is False:
                    lines.append(f"{run.name} / {name} / {key}: {check.get('detail', '')}")
    return lines


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def build_report(run_dirs: list[str | Path], out: str | Path | None = None, title: str = "vitrobust report") -> Path:
    runs = [Path(r) for r in run_dirs]
    for run in runs:
        if not (run / "results.json").is_file():
            raise FileNotFoundError(f"{run} has no results.json: run `vitrobust evaluate {run}` first")
    out = Path(out) if out else (runs[0] / "report.html" if len(runs) == 1 else Path("report.html"))
    figures = out.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    header, rows = summary_rows(runs)

    images: list[tuple[str, Path]] = []
    curves = training_curves({run.name: read_metrics(run) for run in runs}, figures / "training_curves.png")
    if curves:
        images.append(("Training curves", curves))
    sweeps = {run.name: res["eps_sweep"] for run in runs if "eps_sweep" in (res := read_results(run / "results.json"))}
    if sweeps:
        images.append(("Robust accuracy vs eps", accuracy_vs_eps(sweeps, figures / "accuracy_vs_eps.png")))
    for run in runs:  # figures a benchmark drew (adversarial examples, ...), listed in results.json
        for name, entry in read_results(run / "results.json").items():
            for fig in entry.get("figures", []) if isinstance(entry, dict) else []:
                if (run / "figures" / fig).is_file():
                    images.append((f"{run.name}: {name} ({Path(fig).stem.replace('_', ' ')})", run / "figures" / fig))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2>Results</h2>", _html_table(header, rows)]
    warnings = failed_checks(runs)
    parts.append("<h2>Self-checks</h2>" + ("".join(f"<p class='warn'>&#9888; failed check: {html.escape(w)}</p>"
                                                   for w in warnings) or "<p>all self-checks passed</p>"))
    for caption, path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Raw results</h2>")
    for run in runs:
        raw = json.dumps(read_results(run / "results.json"), indent=1)
        parts.append(f"<details><summary>{html.escape(run.name)}</summary><pre>{html.escape(raw)}</pre></details>")
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts))

    md = [f"# {title}", "", markdown_table(header, rows), ""]
    md += [f"> **warning** failed check: {w}" for w in failed_checks(runs)]
    md += [f"## {caption}\n\n![{caption}]({os.path.relpath(path, out.parent)})\n" for caption, path in images]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md))
    return out


__all__ = ["build_report", "failed_checks", "markdown_table", "summary_rows", "text_table"]
