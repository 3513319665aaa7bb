"""Frozen sub-networks held as buffers, not parameters (docs/architecture.md, "Frozen parts").

A frozen part (Dr.ViT's tokenizer) is state, not something trained: as parameters it would show up in
`model.parameters()`, where optimizers, parameter counts and "every parameter gets a gradient" checks
treat it as trainable. `freeze` turns each parameter of the part into a buffer of the same name, so
state-dict keys, `.to()`, and checkpoints are unchanged, gradients still flow *through* it to the
input (straight-through attacks), and nothing in it can be trained.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

FROZEN = "_vitrobust_frozen"  # attribute marking the root module of a frozen part


def freeze(module: nn.Module) -> nn.Module:
    """Every parameter of `module` (and its children) becomes a buffer of the same name; eval mode."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().requires_grad_(False))
    setattr(module, FROZEN, True)
    return module.eval()


def frozen_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(state-dict name, tensor) of every buffer inside a frozen part of `model`."""
    for prefix, sub in model.named_modules():
        if getattr(sub, FROZEN, False):
            for name, tensor in sub.named_buffers():
                yield f"{prefix}.{name}" if prefix else name, tensor


__all__ = ["FROZEN", "freeze", "frozen_tensors"]
