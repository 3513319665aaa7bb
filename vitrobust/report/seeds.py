"""Runs repeated over seeds (grouped in report/groups.py): each leaderboard number summarised as mean,
sample standard deviation (n-1) and the per-seed values."""

from __future__ import annotations

import statistics

from vitrobust.report.groups import identity, seed_groups
from vitrobust.report.runs import Run
from vitrobust.report.tables import MISSING, Column, Table


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean (None without values) and sample standard deviation (None with fewer than two)."""
    return (statistics.fmean(values) if values else None,
            statistics.stdev(values) if len(values) > 1 else None)


def column_keys(columns: list[Column]) -> list[str]:
    """A key per column: Column.key, with the qualifier added where columns share it (threat models)."""
    keys = [c.key for c in columns]
    return [f"{c.key} {c.qualifier}".strip() if keys.count(c.key) > 1 else c.key for c in columns]


def aggregate(runs: list[Run], columns: list[Column]) -> list[dict]:
    """Per seed group: its seeds and runs, and for every column that two or more of its runs have:
    label, unit, mean, std (sample, n-1) and the values in seed order (None where a run lacks it)."""
    out = []
    for group, members in seed_groups(runs).items():
        entry = {"group": group, "seeds": [identity(r)[1] for r in members], "runs": [r.name for r in members],
                 "columns": {}}
        for key, col in zip(column_keys(columns), columns):
            values = [col.value(r) for r in members]
            present = [v for v in values if v is not None]
            if len(present) >= 2:
                mean, std = mean_std(present)
                entry["columns"][key] = {"label": col.label, "unit": col.unit, "mean": mean, "std": std,
                                         "values": values}
        out.append(entry)
    return out


def _short(col: Column, value: float | None) -> str:
    """A per-seed value with one decimal fewer than the column shows."""
    if value is None:
        return MISSING
    text = col.show(value)
    decimals = len(text.partition(".")[2])
    return f"{float(text):.{decimals - 1}f}" if decimals else text


def _seed_count(found: list[dict]) -> str:
    """How many seeds the cells of a column average: "3 seeds", or "2-3 seeds" where groups differ."""
    counts = sorted({sum(v is not None for v in a["values"]) for a in found})
    return f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"


def seeds_table(aggregated: list[dict], columns: list[Column]) -> Table:
    """One row per group: `mean ± std (per-seed values)` in each column's display unit; every header says
    "mean ± std (n seeds)", so this ± (a spread over seeds) is never read as an interval (the leaderboard's
    intervals are written [lo, hi]). Columns that are not scores (params, FLOPs) are left out where no
    group's runs differ in them."""
    found = {k: [g["columns"][k] for g in aggregated if k in g["columns"]] for k in column_keys(columns)}
    keyed = [(k, c) for k, c in zip(column_keys(columns), columns)
             if found[k] and (c.better != 0 or any(a["std"] for a in found[k]))]
    rows = []
    for group in aggregated:
        cells = []
        for key, col in keyed:
            a = group["columns"].get(key)
            cells.append(MISSING if a is None else f"{col.show(a['mean'])} ± {col.show(a['std'])} "
                                                   f"({', '.join(_short(col, v) for v in a['values'])})")
        rows.append([group["group"], ", ".join(map(str, group["seeds"])), *cells])
    header = [f"{c.label}: mean ± std ({_seed_count(found[k])})" for k, c in keyed]
    return Table(["group", "seeds", *header], rows,
                 "Mean ± sample standard deviation over seeds (std: the spread between seeds, not a 95% "
                 "interval), then the per-seed values in seed order", text_columns=2)


def seed_notes(aggregated: list[dict]) -> list[str]:
    return ["Groups: runs whose config.yaml is the same but for name and seed; std: sample standard deviation "
            "(n-1); seeds.json beside this page holds every group's numbers",
            *(f"group {g['group']}: {', '.join(g['runs'])}" for g in aggregated)]


__all__ = ["aggregate", "column_keys", "mean_std", "seed_groups", "seed_notes", "seeds_table"]
