"""The report's sections below the leaderboard: per-benchmark detail tables, the figures drawn from
the runs' numbers, and the figures each benchmark listed under "figures" in results.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitrobust.figures.adversarial import accuracy_vs_eps
from vitrobust.figures.corruptions import accuracy_vs_severity
from vitrobust.figures.shifts import shift_accuracy_bars
from vitrobust.figures.training import training_curves
from vitrobust.report.runs import SHIFTS, Run, number, shift_labels
from vitrobust.report.tables import MISSING, Table, eps_text

ADVERSARIAL = ("pgd", "autoattack", "eps_sweep")
RELEVANCE = ("relevance", "background")
# benchmarks whose own figures the report draws again from their numbers, overlaying every run
REDRAWN = {"eps_sweep", "corruptions"}


@dataclass
class Section:
    id: str
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, image file)
    notes: list[str] = field(default_factory=list)


def pct(value) -> str:
    return MISSING if number(value) is None else f"{100 * value:.2f}"


def fixed(value, digits: int = 2) -> str:
    return MISSING if number(value) is None else f"{value:.{digits}f}"


def count(value) -> str:
    return MISSING if number(value) is None else f"{value:g}"


def section_of(benchmark: str) -> str:
    if benchmark in ADVERSARIAL:
        return "adversarial"
    if benchmark in SHIFTS or benchmark in ("shift", "shifts"):
        return "shifts"
    if benchmark in RELEVANCE:
        return "relevance"
    if benchmark in ("corruptions", "tokenizer"):
        return benchmark
    return "figures"


def _attack(name: str, e: dict) -> str:
    if name == "pgd":
        restarts = e.get("restarts") or 1
        return f"PGD-{e.get('steps', '?')}" + (f", {restarts} restarts" if restarts > 1 else "")
    return f"AutoAttack {e.get('version', '')} ({', '.join(e.get('attacks') or [])})"


def adversarial(runs: list[Run], figures: Path) -> Section:
    sec = Section("adversarial", "Adversarial robustness")
    rows = [[run.name, _attack(name, e), f"{e.get('norm', '?')} {eps_text(e.get('eps'))}",
             str(e.get("gradient", MISSING)), count(e.get("n")), pct(e.get("clean_top1")),
             pct(e.get("robust_top1"))]
            for run in runs for name in ("pgd", "autoattack") if (e := run.entry(name)) is not None]
    if rows:
        header = ["run", "attack", "threat model", "gradient", "n", "clean top1 %", "robust top1 %"]
        caption = "Robust top-1 under each attack (gradient: exact or straight-through)"
        sec.tables.append(Table(header, rows, caption, text_columns=4))
    sweeps = {run.name: e for run in runs if (e := run.entry("eps_sweep")) and "eps_list" in e}
    if sweeps:
        path = accuracy_vs_eps(sweeps, figures / "report_accuracy_vs_eps.png")
        sec.figures.append(("Robust accuracy vs eps", path))
    return sec


def _severities(entry: dict) -> list[str]:
    listed = entry.get("severities")
    if isinstance(listed, list) and listed:
        return [str(s) for s in listed]
    keys = {k for per in entry["per_corruption"].values() if isinstance(per, dict) for k in per}
    return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))


def _corruption_table(name: str, e: dict) -> Table:
    sevs = _severities(e)
    ce, rel = (e.get(k) if isinstance(e.get(k), dict) else {} for k in ("ce", "relative_ce"))
    rows = []
    for corruption, per in e["per_corruption"].items():
        accs = [per.get(s) for s in sevs]
        shown = [a for a in accs if number(a) is not None]
        rows.append([corruption, *map(pct, accs), pct(sum(shown) / len(shown)) if shown else MISSING,
                     pct(ce.get(corruption)), pct(rel.get(corruption))])
    # mce and relative_mce are stored x100 already (100 x mean CE); CE per corruption is a ratio
    about = [f"n={e.get('n', '?')}", f"clean top1 {pct(e.get('clean_top1'))}%",
             f"mean corrupted top1 {pct(e.get('mean_top1'))}%", f"mCE {fixed(e.get('mce'))}",
             f"relative mCE {fixed(e.get('relative_mce'))}", f"reference: {e.get('reference') or 'none'}"]
    if e.get("source"):
        about.append(f"source: {e['source']}")
    return Table(["corruption", *(f"severity {s} %" for s in sevs), "mean %", "CE %", "relative CE %"], rows,
                 f"{name}: top-1 per corruption and severity ({', '.join(about)})")


def corruptions(runs: list[Run], figures: Path) -> Section:
    sec = Section("corruptions", "Common corruptions")
    entries = {run.name: e for run in runs
               if (e := run.entry("corruptions")) is not None and isinstance(e.get("per_corruption"), dict)}
    for name, e in entries.items():
        sec.tables.append(_corruption_table(name, e))
        sec.notes += [f"{name}: {note}" for note in e.get("notes") or []]
    if entries:
        path = accuracy_vs_severity(entries, figures / "report_accuracy_vs_severity.png", per_corruption=True)
        sec.figures.append(("Accuracy vs corruption severity", path))
    return sec


def _counts(values) -> str:
    distinct = list(dict.fromkeys(count(v) for v in values))
    return "/".join(distinct) if distinct else MISSING


def shifts(runs: list[Run], figures: Path) -> Section:
    sec = Section("shifts", "Distribution shifts")
    per_run = {run.name: run.shifts(parts=True) for run in runs}
    labels = shift_labels(runs, parts=True)
    if not labels:
        return sec
    shown = [run for run in runs if per_run[run.name]]
    # the run's own test split first, so the drop under each shift reads off the same table and chart
    rows: dict[str, dict[str, dict]] = {"clean": {r.name: e for r in shown
                                                  if (e := r.entry("clean")) is not None}}
    for key, label in labels.items():
        rows[label] = {r.name: per_run[r.name][key][1] for r in shown if key in per_run[r.name]}
    rows = {label: found for label, found in rows.items() if found}
    table = [[label, _counts(e.get("n") for e in found.values()),
              *(pct(found[r.name].get("top1")) if r.name in found else MISSING for r in shown)]
             for label, found in rows.items()]
    sec.tables.append(Table(["test set", "n", *(f"{r.name} top1 %" for r in shown)], table,
                            "Top-1 on each shifted test set (clean: the run's own test split)"))
    bars = {r.name: {label: found[r.name]["top1"] for label, found in rows.items()
                     if number(found.get(r.name, {}).get("top1")) is not None} for r in shown}
    path = shift_accuracy_bars(bars, figures / "report_shift_accuracy.png")
    sec.figures.append(("Accuracy per distribution shift", path))
    return sec


def relevance(runs: list[Run]) -> Section:
    sec = Section("relevance", "Relevance and background reliance")
    rel = [(run.name, e) for run in runs if (e := run.entry("relevance")) is not None]
    if rel:
        rows = [[name, str(e.get("method", MISSING)), pct(e.get("foreground_share")),
                 pct(e.get("pointing_game")), pct(e.get("iou")), count(e.get("n"))] for name, e in rel]
        header = ["run", "method", "foreground share %", "pointing game %", "IoU %", "n"]
        sec.tables.append(Table(header, rows,
                                "Where relevance falls: share inside the foreground mask, pointing game, IoU",
                                text_columns=2))
        sec.notes += [f"{name}: relevance skipped: {e['skipped']}" for name, e in rel if e.get("skipped")]
    bg = [(run.name, e) for run in runs if (e := run.entry("background")) is not None]
    if bg:
        keys = ("original", "only_fg", "mixed_same", "mixed_rand", "bg_gap")
        header = ["run", "original %", "only FG %", "mixed-same %", "mixed-rand %", "BG-gap %", "n"]
        sec.tables.append(Table(header, [[name, *(pct(e.get(k)) for k in keys), count(e.get("n"))]
                                         for name, e in bg],
                                "Background swaps: BG-gap = mixed-same - mixed-rand "
                                "(smaller: less reliance on the background)"))
    return sec


def tokenizer(runs: list[Run]) -> Section:
    sec = Section("tokenizer", "Tokenizer")
    tok = [(run.name, e) for run in runs if (e := run.entry("tokenizer")) is not None]
    if tok:
        rows = [[name, fixed(e.get("psnr")), fixed(e.get("perplexity"), 1), count(e.get("used_codes")),
                 count(e.get("dead_codes")), count(e.get("n_embed")), count(e.get("n"))] for name, e in tok]
        header = ["run", "PSNR dB", "perplexity", "used codes", "dead codes", "codebook size", "n"]
        sec.tables.append(Table(header, rows, "Reconstruction quality and codebook usage"))
    return sec


def published(runs: list[Run]) -> Section:
    """Zoo models: each published number beside the measured one (results.json's `published` fields)."""
    sec = Section("published", "Published numbers")
    rows = []
    for run in runs:
        for bench, entry in run.results.items():
            pub = entry.get("published") if isinstance(entry, dict) else None
            if not isinstance(pub, dict):
                continue
            ci, inside, diff = pub.get("ci95"), pub.get("inside_ci95"), number(pub.get("difference"))
            rows.append([run.name, str(pub.get("label", bench)), fixed(pub.get("published")), fixed(pub.get("measured")),
                         MISSING if diff is None else f"{diff:+.2f}",
                         f"[{ci[0]:.2f}, {ci[1]:.2f}]" if isinstance(ci, list) else MISSING,
                         MISSING if inside is None else ("yes" if inside else "no"), count(pub.get("n"))])
            if pub.get("source"):
                note = f"{run.name}: published numbers from {pub['source']} (zoo entry {pub.get('zoo')})"
                if note not in sec.notes:
                    sec.notes.append(note)
    if rows:
        header = ["run", "number", "published", "measured", "difference", "measured 95% CI", "published inside", "n"]
        sec.tables.append(Table(header, rows, "Released models: the published number beside the measured one "
                                              "(accuracies in %, mCE x100; the measured number's 95% interval)",
                                text_columns=2))
    return sec


def listed_figures(runs: list[Run], sections: dict[str, Section]) -> None:
    """Add every figure a benchmark listed to its section; a listed file that is gone becomes a note."""
    for run in runs:
        for bench, entry in run.results.items():
            if not isinstance(entry, dict) or bench in REDRAWN:
                continue
            for fig in entry.get("figures") or []:
                path, sec = run.figures_dir / str(fig), sections[section_of(bench)]
                if path.is_file():
                    caption = f"{run.name}: {bench} ({Path(str(fig)).stem.replace('_', ' ')})"
                    sec.figures.append((caption, path))
                else:
                    sec.notes.append(f"{run.name}: {bench} lists figure {fig}, but {path} is missing")


def build_sections(runs: list[Run], figures: Path, extra_figures: list[tuple[str, Path]] = ()
                   ) -> list[Section]:
    """Sections in reading order; those left empty are dropped."""
    training = Section("training", "Training")
    curves = training_curves({run.name: run.metrics for run in runs}, figures / "report_training_curves.png")
    if curves:
        training.figures.append(("Training curves", curves))
    secs = [published(runs), training, adversarial(runs, figures), corruptions(runs, figures), shifts(runs, figures),
            relevance(runs), tokenizer(runs),
            Section("figures", "Other figures", figures=list(extra_figures))]
    listed_figures(runs, {s.id: s for s in secs})
    return [s for s in secs if s.tables or s.figures or s.notes]


__all__ = ["REDRAWN", "Section", "build_sections", "section_of"]
