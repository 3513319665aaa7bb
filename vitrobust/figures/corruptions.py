"""Figures of the corruptions benchmark, drawn from results.json entries (nothing here runs a model)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from vitrobust.figures.base import plt, save_figure


def mean_by_severity(entry: Mapping) -> dict[int, float]:
    """Mean top-1 over the corruptions at each severity of one `corruptions` entry."""
    per = entry.get("per_corruption")
    if not per:
        raise ValueError("a corruptions entry needs per_corruption: {name: {severity: top1}}")
    sums: dict[int, list[float]] = {}
    for accs in per.values():
        for severity, top1 in accs.items():
            sums.setdefault(int(severity), []).append(top1)
    return {s: sum(v) / len(v) for s, v in sorted(sums.items())}


def _line(ax, entry: Mapping, values: dict[int, float], label: str) -> None:
    xs, ys = list(values), [100 * v for v in values.values()]
    clean = entry.get("clean_top1")
    if isinstance(clean, (int, float)) and not math.isnan(clean):
        xs, ys = [0, *xs], [100 * clean, *ys]  # severity 0 = the clean images
    ax.plot(xs, ys, marker="o", markersize=3, label=label)


def _axes(ax, title: str, small: bool = False) -> None:
    ax.set_xticks([0, 1, 2, 3, 4, 5], ["clean", "1", "2", "3", "4", "5"], fontsize=7 if small else None)
    ax.set(ylim=(-2, 102), title=title)
    ax.title.set_fontsize(8 if small else 11)
    ax.grid(alpha=0.3)


def accuracy_vs_severity(
    entries: Mapping[str, Mapping], path: str | Path, per_corruption: bool = False, title: str | None = None
) -> Path:
    """Mean top-1 (%) over the corruptions against severity, one line per run ({label: corruptions
    entry}); severity 0 is the clean accuracy. per_corruption=True adds one small panel per corruption."""
    if not entries:
        raise ValueError("accuracy_vs_severity needs at least one corruptions entry")
    means = {label: mean_by_severity(entry) for label, entry in entries.items()}
    names = (
        list(dict.fromkeys(n for e in entries.values() for n in e["per_corruption"]))
        if per_corruption
        else []
    )
    cols = min(5, 1 + len(names)) if names else 1
    rows = 1 + (math.ceil(len(names) / cols) if names else 0)
    fig = plt.figure(figsize=(max(6.0, 2.6 * cols), 4.0 + 2.1 * (rows - 1)))
    grid = fig.add_gridspec(rows, cols, height_ratios=[2.0] + [1.0] * (rows - 1))
    ax = fig.add_subplot(grid[0, :])
    for label, entry in entries.items():
        mce = entry.get("mce")
        _line(ax, entry, means[label], label + (f" (mCE {mce:.1f})" if isinstance(mce, (int, float)) else ""))
    _axes(ax, title or "Accuracy under corruption (mean over corruptions)")
    ax.set(xlabel="severity", ylabel="top-1 (%)")
    if len(entries) > 1 or next(iter(entries)):
        ax.legend(fontsize=8)
    for i, name in enumerate(names):
        sub = fig.add_subplot(grid[1 + i // cols, i % cols])
        for label, entry in entries.items():
            accs = entry["per_corruption"].get(name)
            if accs:
                _line(
                    sub, entry, {int(s): v for s, v in sorted(accs.items(), key=lambda kv: int(kv[0]))}, label
                )
        _axes(sub, name.replace("_", " "), small=True)
        sub.tick_params(labelsize=7)
    return save_figure(fig, path, dpi=100)


__all__ = ["accuracy_vs_severity", "mean_by_severity"]
