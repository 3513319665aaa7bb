"""Accuracy against model cost (parameters, FLOPs) across runs: the scale-up view of a sweep."""

from __future__ import annotations

from pathlib import Path

from vitrobust.figures.base import plt, save_figure


def robustness_vs_cost(points: list[dict], path: Path) -> Path | None:
    """Clean and robust top-1 vs parameters and vs FLOPs (log x), one point per run; None if < 2 points.

    `points`: one dict per run with name, params, flops, clean and robust (top-1 fractions or None);
    a point that stands for runs repeated over seeds may add clean_std and robust_std (error bars)."""
    points = [p for p in points if p.get("params") and p.get("clean") is not None]
    if len(points) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label, scale in ((axes[0], "params", "parameters (M)", 1e6), (axes[1], "flops", "GFLOPs / image", 1e9)):
        shown = [p for p in points if p[key]]
        for metric, marker in (("clean", "o"), ("robust", "s")):
            xy = [(p[key] / scale, 100 * p[metric], p["name"]) for p in shown if p[metric] is not None]
            err = [100 * (p.get(f"{metric}_std") or 0.0) for p in shown if p[metric] is not None]
            if xy:
                ax.errorbar([x for x, _, _ in xy], [y for _, y, _ in xy], yerr=err if any(err) else None,
                            fmt=marker, capsize=3, label=f"{metric} top-1")
                for x, y, name in xy:
                    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=label, ylabel="top-1 (%)", xscale="log", title=f"Accuracy vs {label.split(' ')[0]}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return save_figure(fig, path)


__all__ = ["robustness_vs_cost"]
