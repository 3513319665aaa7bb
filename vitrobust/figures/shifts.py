"""Accuracy under distribution shift: grouped bars, one group per test set, one bar per run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vitrobust.figures.base import plt, save_figure


def shift_accuracy_bars(accuracies: Mapping[str, Mapping[str, float]], path: str | Path,
                        title: str = "Top-1 accuracy under distribution shift") -> Path:
    """`accuracies` is {run: {test set: top1 fraction}}; test sets appear in first-seen order and a run
    without a test set leaves its bar out (not a zero bar, which would read as 0% accuracy)."""
    sets = list(dict.fromkeys(name for per_run in accuracies.values() for name in per_run))
    if not sets:
        raise ValueError("shift_accuracy_bars needs at least one accuracy")
    runs = list(accuracies)
    width = 0.8 / len(runs)
    x = np.arange(len(sets))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(sets) * max(1, len(runs) / 2) + 1.5), 4.2))
    for k, run in enumerate(runs):
        pos = [(i, 100 * accuracies[run][s]) for i, s in enumerate(sets) if s in accuracies[run]]
        bars = ax.bar([x[i] - 0.4 + width * (k + 0.5) for i, _ in pos], [v for _, v in pos], width, label=run)
        if len(runs) * len(sets) <= 24:  # values on the bars while they stay legible
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    tilt = len(sets) > 4
    ax.set_xticks(x, sets, rotation=20 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor")
    ax.set(ylabel="top-1 (%)", ylim=(0, 105), title=title)
    ax.grid(axis="y", alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


__all__ = ["shift_accuracy_bars"]
