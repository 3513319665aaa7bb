"""What every figure shares: matplotlib on the Agg backend, PNG writing, and image panels.

The figures package draws from plain data (results.json entries, tensors, lists) and writes PNG files;
nothing in it runs a model or reads a run directory.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG (creating the folder) and release it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def image_panel(t: torch.Tensor):
    """(array, colormap) to imshow a [0,1] C x H x W image: grey for one channel, RGB for three."""
    t = t.detach().float().cpu().clamp(0, 1)
    return (t[0].numpy(), "gray") if t.shape[0] == 1 else (t.permute(1, 2, 0).numpy(), None)


def class_namer(classes):
    """i -> the class name when `classes` has it, else the index as text."""
    return lambda i: classes[i] if classes and 0 <= i < len(classes) else str(i)


def bare(ax) -> None:
    """No ticks: image panels."""
    ax.set_xticks([])
    ax.set_yticks([])


__all__ = ["bare", "class_namer", "image_panel", "plt", "save_figure"]
