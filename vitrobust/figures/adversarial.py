"""Figures of the adversarial benchmarks: accuracy against eps, and adversarial examples.

Both read plain data (results dicts, tensors) and write PNG files; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from vitrobust.figures.base import bare, class_namer, image_panel, plt, save_figure


def _named(sweeps) -> dict[str, dict]:
    if isinstance(sweeps, Mapping) and "eps_list" in sweeps:
        return {"": dict(sweeps)}
    if isinstance(sweeps, Mapping):
        return {str(k): v for k, v in sweeps.items()}
    return {f"run {i + 1}": s for i, s in enumerate(sweeps)}


def accuracy_vs_eps(sweeps: Mapping[str, dict] | Sequence[dict] | dict, path: str | Path, title: str | None = None) -> Path:
    """Robust top-1 (%) against eps, one line per eps_sweep results dict (`eps_list`, `robust_top1`), with
    a band for its 95% interval where the dict has `ci95` (`robust_top1.<i>`).

    `sweeps` is one results dict, a list of them, or {label: results dict} to overlay runs.
    """
    named = _named(sweeps)
    if not named:
        raise ValueError("accuracy_vs_eps needs at least one eps_sweep result")
    fig, ax = plt.subplots(figsize=(6, 4))
    norms = set()
    for label, sweep in named.items():
        eps, acc = sweep["eps_list"], sweep["robust_top1"]
        if len(eps) != len(acc):
            raise ValueError(f"{label or 'sweep'}: {len(eps)} eps values but {len(acc)} accuracies")
        norms.add(sweep.get("norm", ""))
        name = label or sweep.get("attack", "")
        line, = ax.plot(eps, [100 * a for a in acc], marker="o",
                        label=f"{name} ({sweep.get('attack', '')})" if label else name)
        bands = [(sweep.get("ci95") or {}).get(f"robust_top1.{i}") for i in range(len(eps))]
        if all(bands):  # the 95% interval at each eps (results written with intervals)
            ax.fill_between(eps, [100 * b[0] for b in bands], [100 * b[1] for b in bands], color=line.get_color(),
                            alpha=0.15, linewidth=0)
    ax.set(xlabel=f"eps ({'/'.join(sorted(n for n in norms if n)) or 'norm'})", ylabel="robust top-1 (%)",
           title=title or "Robust accuracy against the attack budget", ylim=(-2, 102))
    ax.grid(alpha=0.3)
    if len(named) > 1 or next(iter(named)):
        ax.legend()
    return save_figure(fig, path)


def adversarial_grid(x: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor, pred_clean: torch.Tensor,
                     pred_adv: torch.Tensor, path: str | Path, classes: Sequence[str] | None = None,
                     title: str | None = None) -> Path:
    """Columns of samples; rows: clean image, adversarial image, perturbation (amplified to fill the
    grey range, 0 = mid grey), with true and predicted labels."""
    n = len(x)
    if n == 0:
        raise ValueError("adversarial_grid needs at least one image")
    name = class_namer(classes)
    delta = (x_adv - x).detach().float().cpu()
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n + 0.8, 5.4), squeeze=False)
    for j in range(n):
        amp = float(delta[j].abs().max())
        shown = 0.5 + delta[j] / (2 * amp) if amp > 0 else torch.full_like(delta[j], 0.5)
        y, pc, pa = int(labels[j]), int(pred_clean[j]), int(pred_adv[j])
        panels = [(x[j], f"true {name(y)}\npred {name(pc)}", pc != y),
                  (x_adv[j], f"adv pred\n{name(pa)}", pa != y),
                  (shown, f"delta x{0.5 / amp:.0f}" if amp > 0 else "no change", False)]
        for i, (img, text, wrong) in enumerate(panels):
            data, cmap = image_panel(img)
            ax = axes[i][j]
            ax.imshow(data, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(text, fontsize=8, color="#b00" if wrong else "#222")
            bare(ax)
    for i, row in enumerate(("clean", "adversarial", "perturbation")):
        axes[i][0].set_ylabel(row, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


__all__ = ["accuracy_vs_eps", "adversarial_grid"]
