"""Optimizer parameter groups: timm's weight-decay split, with a learning-rate scale for chosen tensors.

Models that need their own groups expose them as the `param_groups(weight_decay)` hook
(docs/architecture.md, "Model hooks"); `decay_groups` is what such a hook usually returns.
"""

from __future__ import annotations

from torch import nn


def decay_groups(model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """timm's default split (no decay on biases, 1-d tensors and what `no_weight_decay()` names; frozen
    tensors left out), plus one group per entry of `lr_scales` ({parameter-name suffix: lr scale}),
    whose parameters keep weight decay and train at lr * scale through timm's `lr_scale`."""
    lr_scales = lr_scales or {}
    skip = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            skip |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    scaled: dict[str, list] = {suffix: [] for suffix in lr_scales}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        suffix = next((s for s in lr_scales if name.endswith(s)), None)
        if suffix is not None:
            scaled[suffix].append(p)
        elif p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    groups += [{"params": params, "weight_decay": weight_decay, "lr_scale": lr_scales[suffix]}
               for suffix, params in scaled.items()]
    return [g for g in groups if g["params"]]


__all__ = ["decay_groups"]
