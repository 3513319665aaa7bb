"""Runs repeated over seeds: grouped by their config.yaml (everything but `name` and `seed`).

Apart from report/seeds.py (which aggregates with the leaderboard's columns) because the leaderboard
itself (report/tables.py) needs the groups: runs of one group are compared as a group, never with
each other."""

from __future__ import annotations

import json
import re

from vitrobust.report.runs import Run

SEED_PART = re.compile(r"(?:^|,)seed=-?\d+(?=,|$)")


def identity(run: Run) -> tuple[str, int] | None:
    """(config.yaml beside the results without name and seed, as canonical JSON; the seed), or None."""
    cfg = dict(run.config)
    if not cfg or not isinstance(seed := cfg.pop("seed", 0), int):
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
        if (ident := identity(run)) is not None:
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


__all__ = ["SEED_PART", "identity", "seed_groups"]
