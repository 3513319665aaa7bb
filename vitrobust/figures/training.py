"""Training curves from metrics.jsonl rows."""

from __future__ import annotations

from pathlib import Path

from vitrobust.figures.base import plt, save_figure


def training_curves(metrics: dict[str, list[dict]], path: Path) -> Path | None:
    """Training loss per step and test accuracy per epoch, one line per run ({run: metrics rows})."""
    if not any(metrics.values()):
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in metrics.items():
        train = [r for r in rows if r.get("kind") == "train"]
        evals = [r for r in rows if r.get("kind") == "eval" and "test_top1" in r]
        if train:
            ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
        if evals:
            ax_acc.plot([r["epoch"] for r in evals], [100 * r["test_top1"] for r in evals], marker="o", label=name)
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="Test accuracy during training")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return save_figure(fig, path)


__all__ = ["training_curves"]
