"""Image / relevance overlay grids as PNG files (reports embed them). Nothing here runs a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vitrobust.figures.base import class_namer, image_panel, plt, save_figure

ALPHA = 0.5  # opacity of the relevance heat map over the image


def relevance_grid(images: torch.Tensor, maps: torch.Tensor, path: str | Path, *, masks: torch.Tensor | None = None,
                   labels: Sequence[int] | torch.Tensor | None = None, preds: Sequence[int] | torch.Tensor | None = None,
                   targets: Sequence[int] | torch.Tensor | None = None, classes: Sequence[str] | None = None,
                   title: str | None = None, columns: int = 8) -> Path:
    """Samples in groups of `columns`; each group has rows image, relevance over the image (jet, 0 = blue,
    1 = red) and, when given, the foreground mask. Titles give the true / predicted class (red when wrong)
    and the class explained."""
    n = len(images)
    if n == 0 or len(maps) != n or (masks is not None and len(masks) != n):
        raise ValueError(f"relevance_grid needs as many maps/masks as images (got {n} images, {len(maps)} maps)")
    name = class_namer(classes)
    as_list = (lambda v: None if v is None else [int(i) for i in v])  # noqa: E731
    labels, preds, targets = as_list(labels), as_list(preds), as_list(targets)
    cols = min(columns, n)
    groups = -(-n // cols)
    kinds = ["image", "relevance"] + (["mask"] if masks is not None else [])
    rows = groups * len(kinds)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 0.8, 1.75 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for j in range(n):
        g, c = divmod(j, cols)
        data, cmap = image_panel(images[j])
        ax = axes[g * len(kinds)][c]
        ax.imshow(data, cmap=cmap, vmin=0, vmax=1)
        if labels is not None:
            wrong = preds is not None and preds[j] != labels[j]
            text = f"true {name(labels[j])}" + (f"\npred {name(preds[j])}" if preds is not None else "")
            ax.set_title(text, fontsize=7, color="#b00" if wrong else "#222")
        ax = axes[g * len(kinds) + 1][c]
        ax.imshow(data, cmap=cmap, vmin=0, vmax=1)
        ax.imshow(maps[j].detach().float().cpu().numpy(), cmap="jet", alpha=ALPHA, vmin=0, vmax=1)
        if targets is not None:
            ax.set_title(f"for {name(targets[j])}", fontsize=7)
        if masks is not None:
            mask = masks[j].detach().float().cpu().reshape(maps[j].shape).numpy()
            axes[g * len(kinds) + 2][c].imshow(mask, cmap="gray", vmin=0, vmax=1)
    for g in range(groups):
        for i, kind in enumerate(kinds):
            axes[g * len(kinds) + i][0].set_ylabel(kind, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


__all__ = ["relevance_grid"]
