"""Each method run against its matched control (`compare.control` in its config): the same start, data
order, steps and evaluation images, only the objective (or model) changed, so a difference is the method's
and not "more training". Per leaderboard number: the paired difference on the same images with its 95%
interval, a p-value and the smallest effect the images could detect (stats.paired_comparison)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vitrobust.config import control_mismatches
from vitrobust.evaluate.corruptions import ZERO_ERROR
from vitrobust.report.runs import Run, load_runs, number
from vitrobust.report.tables import Column, Table, leaderboard_columns
from vitrobust.stats import ALPHA, Z80, Z95, paired_comparison, percentile_interval


def control_of(run: Run) -> str | None:
    compare = run.config.get("compare")
    return compare.get("control") if isinstance(compare, dict) else None


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def find_control(run: Run, runs: list[Run]) -> Run | None:
    """The control a run names: one of the report's runs, else read from its folder (as written, or
    beside the run, since a quickstart folder may have moved)."""
    name = control_of(run)
    if not name:
        return None
    candidates = [Path(name), run.results_path.parent.parent / Path(name).name]
    for other in runs:
        if other is not run and any(_same_dir(other.results_path.parent, c) for c in candidates):
            return other
    for candidate in candidates:
        if (candidate / "results.json").is_file():
            return load_runs([candidate])[0]
    return None


@dataclass
class Comparison:
    run: Run
    control: Run
    column: Column
    method_value: float | None
    control_value: float | None
    stats: dict  # paired_comparison, differences as fractions (or the column's own unit)
    mismatches: list[str]
    data: tuple = ()  # per-image values (run, control), or (mCE key, run's flags, control's flags)

    def resampled(self, idx: torch.Tensor) -> torch.Tensor:
        """The difference recomputed on each row of image indices `idx` (stats' units): what a bootstrap over
        images of one or several comparisons on the same images resamples."""
        if len(self.data) == 3:
            key, a, b = self.data
            mce, relative = _mce_scores(a, b, idx)
            return (relative if key == "relative_mce" else mce) - 100
        a, b = self.data
        return a.double()[idx].mean(-1) - b.double()[idx].mean(-1)

    @property
    def scale(self) -> float:
        return 100.0 if self.column.unit == "%" else 1.0

    @property
    def direction(self) -> str:
        """'better', 'worse' or 'no difference' at ALPHA, in the column's sense of better."""
        if not self.stats["significant"] or not self.column.better:
            return "no difference"
        return "better" if self.stats["difference"] * self.column.better > 0 else "worse"


def compare_with_control(run: Run, control: Run, columns: list[Column], resamples: int = 1000) -> list[Comparison]:
    """The paired comparison of every score column both runs measured on the same images."""
    mismatches = control_mismatches(run.config, control.config)
    out = []
    for col in columns:
        if not col.better:
            continue
        mine, theirs = run.per_image(col.find(run), col.field), control.per_image(col.find(control), col.field)
        if mine is None or theirs is None or mine[1] != theirs[1] or mine[0].shape != theirs[0].shape:
            continue
        stats = paired_comparison(mine[0], theirs[0], resamples)
        out.append(Comparison(run, control, col, col.value(run), col.value(control), stats, mismatches,
                              (mine[0], theirs[0])))
    flags = (_corruption_flags(run), _corruption_flags(control))
    for key, found in (mce_against_control(*flags, resamples) or {}).items():
        label = "mCE" if key == "mce" else "relative mCE"
        col = Column(key, label, lambda r: None, key, unit="x100", better=-1, qualifier="(vs control = 100)")
        lo, hi = found["ci95"]
        defined = number(found["value"]) is not None and number(lo) is not None
        stats = {"difference": found["value"] - 100, "ci95": [lo - 100, hi - 100], "p": math.nan, "test": "bootstrap",
                 "n": len(flags[0][0]["clean"]), "significant": defined and (lo > 100 or hi < 100),
                 # the bootstrap's spread as a standard error: (z_0.975 + z_0.8) x SE, as for the other numbers
                 "mde": (Z95 + Z80) * (hi - lo) / (2 * Z95) if defined else math.nan}
        out.append(Comparison(run, control, col, found["value"], 100.0, stats, mismatches,
                              (key, flags[0][0], flags[1][0])))
    return out


def _corruption_flags(run: Run) -> tuple[dict, str] | None:
    """{(name, severity) or 'clean': per-image correctness} of the run's corruptions entry, and its digest."""
    entry = run.entry("corruptions")
    saved = run.per_image(entry, "clean_top1") if entry else None
    if saved is None:
        return None
    flags = {"clean": saved[0]}
    for name, severities in (entry.get("per_corruption") or {}).items():
        for severity in severities:
            found = run.per_image(entry, f"per_corruption.{name}.{severity}")
            if found is None or found[1] != saved[1]:
                return None
            flags[(name, str(severity))] = found[0]
    return flags, saved[1]


def _mce_scores(a: dict, b: dict, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mCE and relative mCE of flags `a` with `b` as the reference (evaluate/corruptions.py's formulas:
    CE_c = sum_s err / sum_s err_ref, relative CE_c = sum_s (err - err_clean) / sum_s (err_ref - err_ref_clean),
    x 100 averaged over corruptions; NaN where a denominator is ~0), for each row of image indices `idx`."""
    sets = [k for k in a if k != "clean"]
    names = sorted({name for name, _ in sets})
    group = torch.tensor([names.index(name) for name, _ in sets])

    def errors(flags: dict) -> tuple[torch.Tensor, torch.Tensor]:  # (sets, rows) and (rows,)
        stacked = torch.stack([flags[k] for k in sets]).float()
        return 1 - stacked[:, idx].mean(-1), 1 - flags["clean"].float()[idx].mean(-1)

    def per_corruption(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(names), values.shape[1], dtype=values.dtype).index_add_(0, group, values)

    (err, clean), (ref, ref_clean) = errors(a), errors(b)
    out = []
    for num, den in ((per_corruption(err), per_corruption(ref)),
                     (per_corruption(err - clean), per_corruption(ref - ref_clean))):
        ratio = torch.where(den > ZERO_ERROR, num / den.clamp_min(ZERO_ERROR), torch.full_like(num, math.nan))
        out.append(100 * ratio.mean(0))
    return out[0], out[1]


def mce_against_control(mine: tuple | None, theirs: tuple | None, resamples: int = 1000, seed: int = 0) -> dict | None:
    """mCE and relative mCE of a run with its control as the reference (100 = the control's corruption
    errors), from both runs' per-image corruption results (_corruption_flags) on the same corrupted images,
    each with a paired bootstrap interval over images (None where either lacks them or they are other images)."""
    if mine is None or theirs is None or mine[1] != theirs[1] or mine[0].keys() != theirs[0].keys():
        return None
    a, b = mine[0], theirs[0]
    n = len(a["clean"])
    full = _mce_scores(a, b, torch.arange(n)[None])
    gen = torch.Generator().manual_seed(seed)
    draws: list[list[float]] = [[], []]
    chunk = max(1, int(2e7 // max(1, len(a) * n)))  # resamples at a time: bounded memory on large sets
    for start in range(0, resamples, chunk):
        idx = torch.randint(0, n, (min(chunk, resamples - start), n), generator=gen)
        for i, values in enumerate(_mce_scores(a, b, idx)):
            draws[i] += values.tolist()
    return {key: {"value": float(full[i][0]), "ci95": percentile_interval(draws[i])}
            for i, key in enumerate(("mce", "relative_mce"))}


def comparisons(runs: list[Run], columns: list[Column] | None = None) -> list[Comparison]:
    """Every run that names a control, against it (controls outside `runs` are read from their folder)."""
    out = []
    for run in runs:
        control = find_control(run, runs)
        if control is not None:
            out += compare_with_control(run, control, columns or leaderboard_columns([run, control]))
    return out


def _signed(value: float, scale: float) -> str:
    return f"{scale * value:+.2f}"


def controls_table(found: list[Comparison]) -> Table:
    rows = []
    for c in found:
        s, scale = c.stats, c.scale
        lo, hi = s["ci95"]
        interval = "-" if number(lo) is None else f"[{_signed(lo, scale)}, {_signed(hi, scale)}]"
        test = {"mcnemar": "McNemar", "sign-flip": "sign-flip"}.get(s["test"])
        p = f"{s['p']:.3g} ({test})" if test else "- (interval only)"
        mde = "-" if number(s["mde"]) is None else f"{scale * s['mde']:.2f}"
        difference = "-" if number(s["difference"]) is None else _signed(s["difference"], scale)
        rows.append([c.run.name, c.control.name, c.column.label, c.column.show(number(c.method_value)),
                     c.column.show(c.control_value), f"{difference} {interval}", p, mde, str(s["n"]), c.direction])
    header = ["run", "control", "number", "run", "control", "difference [95% CI]", "p", "min. detectable",
              "n", f"at {ALPHA:g}"]
    caption = ("Each method against its matched control on the same images: difference = run - control "
               "(points for accuracies), its 95% interval, p, and the smallest difference these images detect "
               "with 80% power")
    return Table(header, rows, caption, text_columns=3)


def controls_notes(found: list[Comparison]) -> list[str]:
    notes = ["A matched control is trained from the same start with the same data order, steps and schedule, "
             "with only the objective (or model) changed, so the difference is the method's, not extra "
             "training. Intervals: Newcombe's paired interval for accuracies, a bootstrap over images for "
             "mean scores; p: McNemar's exact test, or a paired sign-flip test for scores.",
             "min. detectable: the smallest true difference the comparison finds with 80% power at the 0.05 "
             "level; a 'no difference' whose interval is wider than the effect you care about means too few "
             "images, not no effect."]
    seen = set()
    for c in found:
        if c.mismatches and c.run.name not in seen:
            seen.add(c.run.name)
            notes.append(f"{c.run.name} is not matched with {c.control.name}: {'; '.join(c.mismatches)}")
    return notes


__all__ = ["Comparison", "compare_with_control", "comparisons", "control_of", "controls_notes", "controls_table",
           "find_control"]
