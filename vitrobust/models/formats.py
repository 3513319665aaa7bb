"""Checkpoint formats: how a state dict from somewhere else maps onto vitrobust's ImageClassifier keys
(`normalize.*` and `net.*`, the timm network). Each format is a registered record; `model.init` (and
`vitrobust import`) pick the format from the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vitrobust.errors import CheckpointError
from vitrobust.registry import Registry

Tensors = dict[str, torch.Tensor]
WRAPPERS = ("state_dict", "state_dict_ema", "model", "model_ema")  # where training scripts nest the weights
DDP_PREFIX = "module."


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    about: str  # one line: whose files these are and what their keys look like
    detect: Callable[[Tensors], bool]  # do these keys look like this format?
    to_classifier: Callable[[Tensors], Tensors]  # the same tensors under ImageClassifier keys


CHECKPOINT_FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format", error=CheckpointError)


def state_tensors(content, where: str = "the checkpoint") -> Tensors:
    """The tensors of a loaded checkpoint: a state dict, or one nested under state_dict / state_dict_ema /
    model / model_ema (the first found), with DDP's `module.` prefix removed; non-tensor entries dropped."""
    state = content
    if isinstance(content, dict):
        state = next((content[k] for k in WRAPPERS if isinstance(content.get(k), dict)), content)
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds no state dict (found {type(content).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith(DDP_PREFIX) for k in tensors):
        tensors = {k[len(DDP_PREFIX):]: v for k, v in tensors.items()}
    return tensors


def find_format(tensors: Tensors) -> CheckpointFormat:
    """The first registered format whose `detect` accepts the keys."""
    for _, fmt in CHECKPOINT_FORMATS.items():
        if fmt.detect(tensors):
            return fmt
    shown = ", ".join(list(tensors)[:5]) or "no tensors"
    raise CheckpointError(f"no checkpoint format matches keys {shown}; formats: {', '.join(CHECKPOINT_FORMATS.names())}")


CHECKPOINT_FORMATS.register(CheckpointFormat(
    "vitrobust", "vitrobust's own weights: normalize.* and net.* (the timm network)",
    detect=lambda t: any(k.startswith("net.") for k in t), to_classifier=dict))
CHECKPOINT_FORMATS.register(CheckpointFormat(
    "timm", "a timm network's state dict (bare keys: patch_embed.*, blocks.*, head.*)",
    detect=lambda t: bool(t) and not any(k.startswith("net.") for k in t),
    to_classifier=lambda t: {f"net.{k}": v for k, v in t.items()}))

__all__ = ["CHECKPOINT_FORMATS", "CheckpointFormat", "find_format", "state_tensors"]
