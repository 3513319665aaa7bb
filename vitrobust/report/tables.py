"""The leaderboard (one row per run, the headline number of every benchmark any run holds) and the
table formats reports use: HTML, Markdown, plain text, LaTeX (booktabs) and CSV.

results.json holds accuracies as fractions. Shown tables give percentages with 2 decimals; the CSV
keeps the plain values of the results files (fractions, parameter counts, seconds: each header says
which), so a spreadsheet or a paper script recomputes from the same numbers the report shows.
"""

from __future__ import annotations

import csv
import html
import io
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitrobust.errors import InputError, suggest
from vitrobust.report.groups import identity, seed_groups
from vitrobust.report.runs import Run, as_runs, number, shift_labels
from vitrobust.stats import ALPHA, mcnemar, min_detectable, wilson

MISSING = "-"
ACCURACIES = ("top1", "clean_top1", "robust_top1")  # fractions of n images correct: a Wilson interval applies

# unit -> (how a header shows it, what the CSV header says its plain values are, display formatter)
UNITS: dict[str, tuple[str, str, Callable[[float], str]]] = {
    "%": ("%", "fraction", lambda v: f"{100 * v:.2f}"),
    "x100": ("%", "percent", lambda v: f"{v:.2f}"),  # stored x100 already, as mCE is (100 x mean CE)
    "M": ("(M)", "count", lambda v: f"{v / 1e6:.2f}"),
    "G": ("(G)", "count", lambda v: f"{v / 1e9:.2f}"),
    "s": ("s", "seconds", lambda v: f"{v:.0f}"),
    "dB": ("dB", "dB", lambda v: f"{v:.2f}"),
}


def format_interval(value: float, lo: float, hi: float, show: Callable[[float], str]) -> str:
    """A number and its interval, `show` giving the digits of each: `1.00 [0.27, 3.57]`, or `40.00 ± 9.60`
    only where both half-widths show the same digits. Intervals of accuracies near 0 or 100% (robust
    accuracies live there) are lopsided: a ± would claim bounds they do not have, such as below 0."""
    below, above = show(value - lo), show(hi - value)
    if below == above:
        return f"{show(value)} ± {below}"
    return f"{show(value)} [{show(lo)}, {show(hi)}]"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise
    text_columns: int = 1  # leading columns of names (left-aligned); numbers follow


@dataclass(frozen=True)
class Column:
    """One number per run: `field` of the results entry `find(run)` returns."""

    key: str  # what `--sort` names
    name: str  # header without unit, e.g. "AutoAttack top1"
    find: Callable[[Run], dict | None]
    field: str
    unit: str = "%"
    better: int = 1  # +1 higher is better, -1 lower is better, 0 not a score (no best marked)
    qualifier: str = ""  # threat model or reference the number depends on, e.g. "(Linf 8/255)"

    @property
    def label(self) -> str:
        return " ".join(filter(None, [self.name, UNITS[self.unit][0], self.qualifier]))

    @property
    def csv_label(self) -> str:
        return " ".join(filter(None, [self.name, self.qualifier, f"[{UNITS[self.unit][1]}]"]))

    def value(self, run: Run) -> float | None:
        entry = self.find(run)
        return number(entry.get(self.field)) if isinstance(entry, dict) else None

    def n(self, run: Run) -> int | None:
        entry = self.find(run)
        return number(entry.get("n")) if isinstance(entry, dict) and self.unit in ("%", "x100") else None

    def show(self, value: float | None) -> str:
        return MISSING if value is None else UNITS[self.unit][2](value)

    def interval(self, run: Run) -> list[float] | None:
        """The entry's 95% interval of this number (results.json `ci95`, same unit as the value), or None."""
        entry = self.find(run)
        if not isinstance(entry, dict):
            return None
        ci = (entry.get("ci95") or {}).get(self.field)
        if isinstance(ci, list) and len(ci) == 2 and all(number(v) is not None for v in ci):
            return ci
        value, n = number(entry.get(self.field)), number(entry.get("n"))
        if self.field in ACCURACIES and value is not None and n:  # results written before intervals were
            return list(wilson(round(value * n), int(n)))
        return None

    def show_with(self, value: float | None, ci: list[float] | None) -> str:
        """The value and its 95% interval (format_interval), e.g. `1.00 [0.27, 3.57]`."""
        if value is None or ci is None or self.unit not in ("%", "x100"):
            return self.show(value)
        return format_interval(value, ci[0], ci[1], self.show)

    def paired(self, run: Run) -> tuple | None:
        """This number's per-image correctness (bool values, images digest) saved beside the run's results."""
        found = run.per_image(self.find(run), self.field)
        return found if found is not None and found[0].dtype == torch.bool else None


def eps_text(eps) -> str:
    """8/255 for eps on the 1/255 grid (how papers write Linf budgets), else 3 significant digits."""
    if number(eps) is None:
        return "?"
    steps = eps * 255
    return f"{round(steps)}/255" if eps > 0 and abs(steps - round(steps)) < 1e-6 else f"{eps:.3g}"


def _entry(name: str) -> Callable[[Run], dict | None]:
    return lambda run: run.entry(name)


def _matching(name: str, keys: tuple[str, ...], want: tuple) -> Callable[[Run], dict | None]:
    def find(run: Run) -> dict | None:
        entry = run.entry(name)
        return entry if entry is not None and tuple(entry.get(k) for k in keys) == want else None

    return find


def _variants(runs: list[Run], name: str, keys: tuple[str, ...]) -> list[tuple]:
    """Distinct values of `keys` (threat model, reference) over runs, in order of first appearance."""
    seen: list[tuple] = []
    for run in runs:
        entry = run.entry(name)
        if entry is not None and (v := tuple(entry.get(k) for k in keys)) not in seen:
            seen.append(v)
    return seen


def _attack_columns(runs: list[Run], name: str, title: str) -> list[Column]:
    # a number is only comparable under one threat model: one column per (norm, eps)
    return [Column(name, f"{title} top1", _matching(name, ("norm", "eps"), (norm, eps)), "robust_top1",
                   qualifier=f"({norm} {eps_text(eps)})")
            for norm, eps in _variants(runs, name, ("norm", "eps"))]


def _corruption_columns(runs: list[Run]) -> list[Column]:
    # mCE is relative to a reference model's errors: one column per reference
    cols = []
    for (ref,) in _variants(runs, "corruptions", ("reference",)):
        find = _matching("corruptions", ("reference",), (ref,))
        qual = f"(vs {ref})" if ref else ""
        cols += [Column("mce", "mCE", find, "mce", unit="x100", better=-1, qualifier=qual),
                 Column("relative_mce", "relative mCE", find, "relative_mce", unit="x100", better=-1,
                        qualifier=qual)]
    return cols + [Column("corrupted_top1", "corrupted top1", _entry("corruptions"), "mean_top1")]


def _shift_column(key: str, label: str) -> Column:
    def find(run: Run) -> dict | None:
        found = run.shifts().get(key)
        return found[1] if found else None

    return Column(key, f"{label} top1", find, "top1")


def leaderboard_columns(runs: list[Run]) -> list[Column]:
    """Every column some run has a number for: cost, then clean, adversarial, corruptions, shifts,
    relevance, background, tokenizer."""
    shifts = shift_labels(runs)
    cols = [Column("params", "params", lambda r: r.meta, "params", unit="M", better=0),
            Column("flops", "FLOPs", lambda r: r.meta, "flops", unit="G", better=0),
            Column("train_seconds", "train", lambda r: {"s": r.train_seconds}, "s", unit="s", better=0),
            Column("clean", "clean top1", _entry("clean"), "top1"),
            *_attack_columns(runs, "pgd", "PGD"),
            *_attack_columns(runs, "autoattack", "AutoAttack"),
            *_corruption_columns(runs),
            *(_shift_column(k, label) for k, label in shifts.items()),
            Column("foreground_share", "relevance FG share", _entry("relevance"), "foreground_share"),
            Column("pointing_game", "pointing game", _entry("relevance"), "pointing_game"),
            Column("bg_gap", "BG-gap", _entry("background"), "bg_gap", better=-1),
            Column("psnr", "tokenizer PSNR", _entry("tokenizer"), "psnr", unit="dB")]
    return [c for c in cols if any(c.value(run) is not None for run in runs)]


@dataclass(frozen=True)
class Unit:
    """What the leaderboard compares: a seed group (report/groups.py), or a run in no group."""

    name: str
    rows: tuple[tuple[int | None, int], ...]  # (seed, None where unknown; leaderboard row), in seed order
    group: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} (seeds {', '.join(str(s) for s, _ in self.rows)})" if self.group else self.name


def pairs(a: Unit, b: Unit) -> list[tuple[int | None, int, int]]:
    """(seed, row of a, row of b) to compare image by image: two lone runs with each other whatever their
    seeds (as before groups), else the runs of the same seed, so that seeds are a paired design."""
    if not a.group and not b.group:
        return [(None, a.rows[0][1], b.rows[0][1])]
    mine, theirs = {}, {}
    for rows, found in ((a.rows, mine), (b.rows, theirs)):
        for s, i in rows:
            found.setdefault(s, i)  # a seed run twice: its first run
    return [(s, i, theirs[s]) for s, i in mine.items() if s in theirs]


@dataclass
class Leaderboard:
    runs: list[Run]
    columns: list[Column]
    _comparisons: list[dict] | None = field(default=None, repr=False)
    _units: list[Unit] | None = field(default=None, repr=False)

    @property
    def header(self) -> list[str]:
        return ["run", "model", *(c.label for c in self.columns)]

    def values(self) -> list[list[float | None]]:
        return [[c.value(run) for c in self.columns] for run in self.runs]

    def units(self) -> list[Unit]:
        """Seed groups and the runs in none, in order of their first row: runs of one group are compared as
        that group (a lucky seed is not a better method), never with each other."""
        if self._units is None:
            row = {id(run): i for i, run in enumerate(self.runs)}
            units = [Unit(name, tuple((identity(r)[1], row[id(r)]) for r in members), True)
                     for name, members in seed_groups(self.runs).items()]
            grouped = {i for u in units for _, i in u.rows}
            units += [Unit(run.name, (((identity(run) or (None, None))[1], i),))
                      for i, run in enumerate(self.runs) if i not in grouped]
            self._units = sorted(units, key=lambda u: min(i for _, i in u.rows))
        return self._units

    def _top(self) -> dict[int, tuple[list[int], dict[int, float]]]:
        """column index -> (units holding its best shown value, {unit: its mean}) for every score column that
        two or more units have; a group's number is its mean over the seeds that have one."""
        tops, values = {}, self.values()
        for j, col in enumerate(self.columns):
            means = {}
            for u, unit in enumerate(self.units()):
                if present := [values[i][j] for _, i in unit.rows if values[i][j] is not None]:
                    means[u] = statistics.fmean(present)
            if col.better and len(means) > 1:
                shown = {u: float(col.show(m)) * col.better for u, m in means.items()}
                tops[j] = ([u for u, v in shown.items() if v == max(shown.values())], means)
        return tops

    def comparisons(self) -> list[dict]:
        """Each score column's best unit (run or seed group) against every other unit with the same column,
        paired where both saved per-image correctness on the same images: McNemar's exact test per pair
        (`per_seed`), and over all pairs on their images concatenated, a paired test over images x seeds;
        `difference` is then the mean of the pairs' differences, else the difference of the means."""
        if self._comparisons is None:
            self._comparisons = self._compare()
        return self._comparisons

    def _compare(self) -> list[dict]:
        out, values, units = [], self.values(), self.units()
        for j, (tops, means) in self._top().items():
            col, best = self.columns[j], tops[0]
            for u in means:
                if u == best:
                    continue
                row = {"column": j, "best": best, "other": u, "difference": means[best] - means[u], "paired": False}
                per_seed, mine, theirs = [], [], []
                for seed, i, k in pairs(units[best], units[u]):
                    a, b = col.paired(self.runs[i]), col.paired(self.runs[k])
                    if a is None or b is None or a[1] != b[1] or values[i][j] is None or values[k][j] is None:
                        continue
                    per_seed.append({"seed": seed, "difference": values[i][j] - values[k][j], **mcnemar(a[0], b[0])})
                    mine.append(a[0])
                    theirs.append(b[0])
                if per_seed:
                    a, b = torch.cat(mine), torch.cat(theirs)
                    row.update(mcnemar(a, b), paired=True, per_seed=per_seed,
                               mde=min_detectable(a.double() - b.double(), binary=True),
                               difference=statistics.fmean(d["difference"] for d in per_seed))
                out.append(row)
        return out

    def best(self) -> set[tuple[int, int]]:
        """(row, column) cells to emphasise: the best shown value of every score column two or more units
        share, and every value not significantly different from it (paired, at ALPHA); a seed group is
        emphasised as a whole."""
        units, values = self.units(), self.values()
        marked = {(j, u) for j, (tops, _) in self._top().items() for u in tops}
        marked |= {(c["column"], c["other"]) for c in self.comparisons() if c["paired"] and not c["significant"]}
        return {(i, j + 2) for j, u in marked for _, i in units[u].rows if values[i][j] is not None}

    def table(self) -> Table:
        rows = [[run.name, str(run.meta.get("model", MISSING)),
                 *(c.show_with(v, c.interval(run)) for c, v in zip(self.columns, vals))]
                for run, vals in zip(self.runs, self.values())]
        return Table(self.header, rows, bold=self.best(), text_columns=2)

    def paired_table(self) -> Table | None:
        """The paired comparisons as a table (None without any), differences in the column's display unit;
        with seed groups, a last column gives each paired seed's difference and p."""
        found, units = [c for c in self.comparisons() if c["paired"]], self.units()
        grouped = any(units[c[k]].group for c in found for k in ("best", "other"))
        rows = []
        for c in found:
            col = self.columns[c["column"]]
            scale = 100 if col.unit == "%" else 1
            rows.append([col.label, units[c["best"]].label, units[c["other"]].label,
                         f"{scale * c['difference']:+.2f}", f"{c['a_only']} / {c['b_only']}", f"{c['p']:.3g}",
                         f"{scale * c['mde']:.2f}",
                         f"significant (p < {ALPHA:g})" if c["significant"] else "not significant"])
            if grouped:
                rows[-1].append("; ".join(f"seed {d['seed']}: {scale * d['difference']:+.2f} (p {d['p']:.3g})"
                                          for d in c["per_seed"] if d["seed"] is not None) or MISSING)
        if not rows:
            return None
        header = ["number", "best run", "other run", "difference", "discordant images (best only / other only)",
                  "p (McNemar exact)", "min. detectable", f"at {ALPHA:g}"]
        caption = "Each column's best run against the others, image by image on the same images"
        if grouped:
            header[1:3] = ["best run or seed group", "other run or seed group"]
            header.append("per seed: difference (p)")
            caption += (". A seed group (runs that differ only by seed) counts as one, by its mean over seeds, and "
                        "its runs are never compared with each other; against another unit its runs are paired seed "
                        "by seed: difference = mean over the paired seeds of each seed's difference; discordant "
                        "images and p = McNemar's exact test on the per-image correctness of all paired seeds "
                        "concatenated (a paired test over images x seeds)")
        return Table(header, rows, caption, text_columns=3)

    def notes(self) -> list[str]:
        """How to read the intervals and the emphasis; where a column compares numbers measured on different
        sample counts; which runs also hold results measured with other settings (results.json `variants`:
        not shown, the main ones are)."""
        out = []
        if any(c.interval(run) for c in self.columns for run in self.runs):
            out.append("a [lo, hi]: the number and its 95% interval (Wilson for accuracies, bootstrap over images "
                       "for mCE and mean scores); written a ± h only where the interval is symmetric to the "
                       "digits shown")
        if any(c["paired"] for c in self.comparisons()):
            out.append(f"bold: each column's best and every run not significantly different from it "
                       f"(McNemar's exact test on the same images, {ALPHA:g} level; see Paired comparisons)")
        if any(u.group for u in self.units()):
            out.append("runs that differ only by seed count as one seed group, by their mean over seeds: bold or "
                       "not as a whole, and never compared with each other")
        for run in self.runs:
            variants = run.results.get("variants")
            if isinstance(variants, dict) and variants:
                out.append(f"{run.name}: the tables use its main results; also stored with other settings "
                           f"(results.json variants): {', '.join(sorted(variants))}")
        for col in self.columns:
            counts = {run.name: n for run in self.runs if (n := col.n(run)) is not None}
            if len(set(counts.values())) > 1:
                out.append(f"{col.label} compares different sample counts: "
                           + ", ".join(f"{name} n={n}" for name, n in counts.items()))
        for run in self.runs:  # entries of old files (Run marks them): other images than a balanced sample
            for name, entry in run.results.items():
                if isinstance(entry, dict) and (entry.get("sample") or {}).get("rule") == "prefix":
                    out.append(f"{run.name} / {name}: measured on the first {entry['sample'].get('n')} images "
                               "(old rule); not comparable with balanced samples")
        return out

    def csv(self) -> str:
        """One column per number, and after each number that has intervals its 95% bounds."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        with_ci = [any(c.interval(run) for run in self.runs) for c in self.columns]
        header = ["run", "model"]
        for c, ci in zip(self.columns, with_ci):
            header += [c.csv_label, *([f"{c.csv_label} ci95 low", f"{c.csv_label} ci95 high"] if ci else [])]
        writer.writerow(header)
        for run, vals in zip(self.runs, self.values()):
            # repr keeps every digit, so the CSV parses back to the results files' exact numbers
            cells = []
            for c, v, ci in zip(self.columns, vals, with_ci):
                cells.append("" if v is None else repr(v))
                if ci:
                    bounds = c.interval(run) or ["", ""]
                    cells += [repr(b) if b != "" else "" for b in bounds]
            writer.writerow([run.name, run.meta.get("model", ""), *cells])
        return buf.getvalue()

    def latex(self) -> str:
        return latex_table(self.table())


def sort_keys(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(c.key for c in leaderboard_columns(runs)))


def leaderboard(runs: Iterable[str | Path | Run], sort: str | None = None) -> Leaderboard:
    """Runs in the order given (the order a user lists runs is usually the story: baseline first),
    or sorted by `sort` (a column key such as `autoattack` or `mce`), best first, runs without it last."""
    runs = as_runs(runs)
    columns = leaderboard_columns(runs)
    if sort:
        col = next((c for c in columns if c.key == sort), None)
        if col is None:
            keys = sort_keys(runs)
            raise InputError(f"cannot sort by {sort!r}: no run has that column; {suggest(sort, keys)}"
                             f"columns: {', '.join(keys)}")
        sign = col.better or -1  # not a score (params, time): smallest first
        runs = sorted(runs, key=lambda r: (col.value(r) is None, -sign * (col.value(r) or 0.0)))
    return Leaderboard(runs, columns)


def summary_rows(runs: Iterable[str | Path | Run], sort: str | None = None
                 ) -> tuple[list[str], list[list[str]]]:
    """The leaderboard as (header, rows of strings), for terminals and quick checks."""
    table = leaderboard(runs, sort).table()
    return table.header, table.rows


# --- formats --------------------------------------------------------------------------------


def html_table(table: Table, table_id: str = "") -> str:
    """A table in a horizontally scrolling box, so a wide leaderboard never widens the page."""
    def cell(i: int, j: int, text: str) -> str:
        text = html.escape(text)
        text = f"<strong>{text}</strong>" if (i, j) in table.bold else text
        return f"<td class='t'>{text}</td>" if 0 < j < table.text_columns else f"<td>{text}</td>"

    ident = f" id='{html.escape(table_id)}'" if table_id else ""
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th scope='col'{' class=t' if j < table.text_columns else ''}>{html.escape(h)}</th>"
                   for j, h in enumerate(table.header))
    body = "".join("<tr>" + "".join(cell(i, j, c) for j, c in enumerate(row)) + "</tr>"
                   for i, row in enumerate(table.rows))
    return (f"<div class='wide'><table{ident}>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")


def markdown_table(header: list[str], rows: list[list[str]], bold: set[tuple[int, int]] = frozenset()) -> str:
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    cells = [[f"**{esc(c)}**" if (i, j) in bold else esc(c) for j, c in enumerate(row)]
             for i, row in enumerate(rows)]
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(table: Table) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); the first two columns left-aligned, the
    rest right-aligned; emphasised cells in bold."""
    def cell(i: int, j: int, text: str) -> str:
        return rf"\textbf{{{latex_escape(text)}}}" if (i, j) in table.bold else latex_escape(text)

    align = "".join("l" if j < 2 else "r" for j in range(len(table.header)))
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(map(latex_escape, table.header)) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(i, j, c) for j, c in enumerate(row)) + r" \\"
              for i, row in enumerate(table.rows)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


__all__ = ["Column", "Leaderboard", "Table", "Unit", "eps_text", "format_interval", "html_table", "latex_escape",
           "latex_table", "leaderboard", "leaderboard_columns", "markdown_table", "pairs", "sort_keys", "summary_rows",
           "text_table"]
