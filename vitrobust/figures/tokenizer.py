"""The reconstruction figure: original images above their tokenizer reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch

from vitrobust.figures.base import bare, image_panel, plt, save_figure


def reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                          title: str = "") -> Path:
    """Two rows of [0,1] NCHW images (1 or 3 channels): originals on top, reconstructions below."""
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.9, 3.0), squeeze=False)
    for row, (label, images) in enumerate((("original", originals), ("reconstruction", reconstructions))):
        for i in range(n):
            data, cmap = image_panel(images[i])
            ax = axes[row][i]
            ax.imshow(data, cmap=cmap, vmin=0, vmax=1)
            bare(ax)
        axes[row][0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
