"""The reconstruction figure: original images above their tokenizer reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch

from vitrobust.report.plots import plt, save_figure


def reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                          title: str = "") -> Path:
    """Two rows of [0,1] NCHW images (1 or 3 channels): originals on top, reconstructions below."""
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.9, 3.0), squeeze=False)
    for row, (label, images) in enumerate((("original", originals), ("reconstruction", reconstructions))):
        for i in range(n):
            img = images[i].detach().float().cpu().clamp(0, 1)
            ax = axes[row][i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
