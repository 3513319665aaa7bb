"""The model every part of vitrobust sees: [0,1] images in, logits out, normalisation first.

`ImageClassifier` also forwards the optional hooks of its network (docs/architecture.md, "Model hooks"):
- `param_groups(weight_decay) -> list[dict]`: optimizer groups (timm's `lr_scale` honoured);
- `spec_kwargs() -> dict`: keyword arguments recorded in the model spec, so the saved weights file
  alone rebuilds the network (e.g. a Dr.ViT's tokenizer layout);
- `set_input_normalization(mean, std)`: told how its input was normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitrobust.errors import InputError
from vitrobust.models.timm_contract import run_pretrained_cfg


class Normalize(nn.Module):
    """(x - mean) / std per channel; `mean=None` makes it the identity (models trained on raw [0,1])."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.enabled = mean is not None or std is not None
        # each buffer has its own length: std=None with a per-channel mean means "divide by 1"
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.enabled else x

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}" if self.enabled else "none"


class ImageClassifier(nn.Module):
    """Normalize -> timm network. `spec` holds what is needed to rebuild it (saved with the weights)."""

    def __init__(self, net: nn.Module, spec: dict):
        super().__init__()
        self.normalize = Normalize(spec.get("mean"), spec.get("std"))
        self.net = net
        self.spec = dict(spec)
        hook = getattr(net, "spec_kwargs", None)
        if callable(hook):
            self.spec["kwargs"] = {**spec.get("kwargs", {}), **hook()}
        hook = getattr(net, "set_input_normalization", None)
        if callable(hook):
            hook(spec.get("mean"), spec.get("std"))
        self.input_shape = (spec["in_chans"], spec["img_size"], spec["img_size"])
        self.sync_pretrained_cfg()

    def sync_pretrained_cfg(self, rule: dict | None = None) -> None:
        """Give the network timm's pretrained cfg of what it was built for (input size, classes, the
        normalisation of its input, the resize `rule`, default spec["preprocess"]); call again after
        changing the spec."""
        self.net.pretrained_cfg = self.net.default_cfg = run_pretrained_cfg(self.net, self.spec, rule)

    @property
    def pretrained_cfg(self) -> dict:
        """timm's view of this model: the network's cfg, but its input is [0,1] (normalisation is inside)."""
        chans = self.input_shape[0]
        return {**self.net.pretrained_cfg, "mean": (0.0,) * chans, "std": (1.0,) * chans}

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def param_groups(self, weight_decay: float) -> list[dict] | None:
        """The network's own optimizer groups, or None for timm's default grouping."""
        hook = getattr(self.net, "param_groups", None)
        return hook(weight_decay) if callable(hook) else None

    @property
    def num_classes(self) -> int:
        return self.spec["num_classes"]

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            got = "x".join(map(str, x.shape[1:])) if x.ndim == 4 else f"a {x.ndim}-d tensor"
            raise InputError(
                f"model {self.spec['name']} expects N x {c} x {h} x {w} images in [0,1], got {got}; "
                f"resize the data (data.img_size={h}) or build the model for this size (--set model.* / data.img_size)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(self.normalize(x))
