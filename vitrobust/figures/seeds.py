"""Runs repeated over seeds: clean and robust top-1 per group, the mean as a bar with the sample std
as error bar and each seed's value as a dot. Drawn from report/seeds.py's aggregation (plain dicts)."""

from __future__ import annotations

from pathlib import Path

from vitrobust.figures.base import plt, save_figure


def robust_key(aggregated: list[dict]) -> str | None:
    """The first AutoAttack column any group has, else the first PGD column."""
    keys = [key for group in aggregated for key in group["columns"]]
    for prefix in ("autoattack", "pgd"):
        found = next((k for k in keys if k == prefix or k.startswith(prefix + " ")), None)
        if found:
            return found
    return None


def seed_bars(aggregated: list[dict], path: str | Path) -> Path | None:
    """Bars of mean clean and robust top-1 per group (error bars: std; dots: seeds); None if nothing to draw.

    `aggregated`: [{"group", "columns": {key: {"label", "unit", "mean", "std", "values"}}}, ...]."""
    metrics = [k for k in ("clean", robust_key(aggregated)) if k]
    groups = [g for g in aggregated if any(k in g["columns"] for k in metrics)]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(groups) * len(metrics) + 4), 4))
    width = 0.8 / len(metrics)
    for j, key in enumerate(metrics):
        xs, means, stds, label = [], [], [], key
        for i, group in enumerate(groups):
            a = group["columns"].get(key)
            if a is None:
                continue
            scale, x = (100 if a.get("unit", "%") == "%" else 1), i + (j - (len(metrics) - 1) / 2) * width
            xs.append(x)
            means.append(scale * a["mean"])
            stds.append(scale * (a.get("std") or 0.0))
            label = a.get("label", key)
            dots = [scale * v for v in a["values"] if v is not None]
            ax.scatter([x] * len(dots), dots, s=14, color="black", zorder=3,
                       label="per seed" if i == 0 and j == 0 else None)
        ax.bar(xs, means, width, yerr=stds, capsize=4, alpha=0.75, label=label)
    ax.set_xticks(range(len(groups)), [g["group"] for g in groups], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="top-1 (%)", title="Top-1 over seeds (bar: mean, error bar: sample std, dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


__all__ = ["robust_key", "seed_bars"]
