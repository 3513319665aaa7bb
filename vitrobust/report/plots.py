"""Matplotlib figures (Agg backend, PNG files) for reports."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG (creating the folder) and release it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def training_curves(metrics: dict[str, list[dict]], path: Path) -> Path | None:
    """Training loss per step and test accuracy per epoch, one line per run."""
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
