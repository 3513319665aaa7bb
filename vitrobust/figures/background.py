"""The background-swap examples: each variant of the first images, with the model's predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from vitrobust.figures.base import bare, class_namer, plt, save_figure


def background_examples(variants: Mapping[str, torch.Tensor], preds: Mapping[str, Sequence[int]],
                        labels: Sequence[int], path: str | Path, classes: Sequence[str] | None = None) -> Path:
    """One row per variant ({kind: uint8 K x C x H x W}), one column per image; titles give the prediction
    (red when wrong), the first row also the true class."""
    name = class_namer(classes)
    k = len(labels)
    fig, axes = plt.subplots(len(variants), k, figsize=(1.5 * k + 0.8, 1.7 * len(variants)), squeeze=False)
    for r, (kind, images) in enumerate(variants.items()):
        for c in range(k):
            img = images[c].permute(1, 2, 0).numpy()
            ax = axes[r][c]
            grey = img.shape[2] == 1
            ax.imshow(img[:, :, 0] if grey else img, cmap="gray" if grey else None, vmin=0, vmax=255)
            p, y = int(preds[kind][c]), int(labels[c])
            title = f"true {name(y)}\npred {name(p)}" if r == 0 else f"pred {name(p)}"
            ax.set_title(title, fontsize=7, color="#222" if p == y else "#b00")
            bare(ax)
        axes[r][0].set_ylabel(kind.replace("_", "-"), fontsize=9)
    fig.suptitle("Background swaps (titles: predictions, red = wrong)", fontsize=10)
    return save_figure(fig, path, dpi=100)


__all__ = ["background_examples"]
