"""Runs repeated over seeds: grouped by their config.yaml (everything but `name` and `seed`), each
leaderboard number summarised as mean, sample standard deviation (n-1) and the per-seed values."""

from __future__ import annotations

import json
import re
import statistics

import yaml

from vitrobust.report.runs import Run
from vitrobust.report.tables import MISSING, Column, Table

SEED_PART = re.compile(r"(?:^|,)seed=-?\d+(?=,|$)")


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean (None without values) and sample standard deviation (None with fewer than two)."""
    return (statistics.fmean(values) if values else None,
            statistics.stdev(values) if len(values) > 1 else None)


def _identity(run: Run) -> tuple[str, int] | None:
    """(config.yaml beside the results without name and seed, as canonical JSON; the seed), or None."""
    try:
        cfg = yaml.safe_load((run.results_path.parent / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or not isinstance(seed := cfg.pop("seed", 0), int):
        return None
    cfg.pop("name", None)
    return json.dumps(cfg, sort_keys=True, default=str), seed


def _group_name(runs: list[Run]) -> str:
    names = {SEED_PART.sub("", run.name).strip(",") for run in runs}
    return names.pop() if len(names) == 1 and "" not in names else runs[0].name


def seed_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """{group name: runs in seed order} for runs whose configs differ only by seed (at least two seeds),
    in order of first appearance; runs without a readable config.yaml are never grouped."""
    by_config: dict[str, list[tuple[int, Run]]] = {}
    for run in runs:
        if (ident := _identity(run)) is not None:
            by_config.setdefault(ident[0], []).append((ident[1], run))
    groups: dict[str, list[Run]] = {}
    for members in by_config.values():
        if len({seed for seed, _ in members}) < 2:
            continue
        ordered = [run for _, run in sorted(members, key=lambda m: m[0])]
        name = base = _group_name(ordered)
        for k in range(2, len(runs) + 2):  # two groups whose runs share a name: base (2), base (3), ...
            if name not in groups:
                break
            name = f"{base} ({k})"
        groups[name] = ordered
    return groups


def column_keys(columns: list[Column]) -> list[str]:
    """A key per column: Column.key, with the qualifier added where columns share it (threat models)."""
    keys = [c.key for c in columns]
    return [f"{c.key} {c.qualifier}".strip() if keys.count(c.key) > 1 else c.key for c in columns]


def aggregate(runs: list[Run], columns: list[Column]) -> list[dict]:
    """Per seed group: its seeds and runs, and for every column that two or more of its runs have:
    label, unit, mean, std (sample, n-1) and the values in seed order (None where a run lacks it)."""
    out = []
    for group, members in seed_groups(runs).items():
        entry = {"group": group, "seeds": [_identity(r)[1] for r in members], "runs": [r.name for r in members],
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


def seeds_table(aggregated: list[dict], columns: list[Column]) -> Table:
    """One row per group: `mean ± std (per-seed values)` in each column's display unit. Columns that are
    not scores (params, FLOPs) are left out where no group's runs differ in them."""
    def shown(key: str, col: Column) -> bool:
        found = [g["columns"][key] for g in aggregated if key in g["columns"]]
        return bool(found) and (col.better != 0 or any(a["std"] for a in found))

    keyed = [(k, c) for k, c in zip(column_keys(columns), columns) if shown(k, c)]
    rows = []
    for group in aggregated:
        cells = []
        for key, col in keyed:
            a = group["columns"].get(key)
            cells.append(MISSING if a is None else f"{col.show(a['mean'])} ± {col.show(a['std'])} "
                                                   f"({', '.join(_short(col, v) for v in a['values'])})")
        rows.append([group["group"], ", ".join(map(str, group["seeds"])), *cells])
    return Table(["group", "seeds", *(c.label for _, c in keyed)], rows,
                 "Mean ± sample standard deviation over seeds (per-seed values in seed order)", text_columns=2)


def seed_notes(aggregated: list[dict]) -> list[str]:
    return ["Groups: runs whose config.yaml is the same but for name and seed; std: sample standard deviation "
            "(n-1); seeds.json beside this page holds every group's numbers",
            *(f"group {g['group']}: {', '.join(g['runs'])}" for g in aggregated)]


__all__ = ["aggregate", "column_keys", "mean_std", "seed_groups", "seed_notes", "seeds_table"]
