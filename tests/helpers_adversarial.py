"""A small classifier trained in seconds on real Fashion-MNIST, for the attack and adversarial tests.

`trained_model()` is trained once per process (cached): a 1024-64-10 MLP on 32x32 images taking [0,1] images
(normalisation inside), 3 epochs of Adam on the first 3000 training images, about 80% top-1.
`test_images(n)` are the first n test images as float [0,1] tensors; `attack_context` builds the
EvalContext the benchmarks get.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from conftest import FASHION_MNIST
from torch import nn

from vitrobust.config import Config, load_config
from vitrobust.data import ImageSet, load_split
from vitrobust.distributed import Dist
from vitrobust.evaluate import EvalContext

TRAIN_N, EPOCHS, BATCH = 3000, 3, 100


class MLP(nn.Module):
    def __init__(self, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.286))
        self.register_buffer("std", torch.tensor(0.353))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(1024, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def config(*overrides: str) -> Config:
    return load_config(None, ["device=cpu", f"data.root={FASHION_MNIST}", *overrides])


def split(name: str) -> ImageSet:
    return load_split(config().data, name)


def as_float(data: ImageSet, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return data.images[:n].float().div(255), data.labels[:n].long()


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict:
    torch.manual_seed(0)
    model = MLP()
    x, y = as_float(split("train"), TRAIN_N)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_model() -> MLP:
    """A fresh copy (eval mode) of the cached trained MLP."""
    model = MLP()
    model.load_state_dict(_trained_state())
    return model.eval()


def test_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return as_float(split("test"), n)


test_images.__test__ = False  # not a pytest test


def attack_context(*overrides: str, out_dir: Path | None = None, n: int = 64, batch_size: int = 500,
                   dist: Dist | None = None) -> EvalContext:
    cfg = config(*overrides)
    data = load_split(cfg.data, "test").subset(n)
    return EvalContext(cfg=cfg, data=data, device=torch.device("cpu"), dist=dist or Dist(), out_dir=out_dir,
                       batch_size=batch_size)


class RoundToGrid(nn.Module):
    """Rounds pixels to `levels` grey levels: a non-differentiable step (zero gradient)."""

    def __init__(self, levels: int = 8):
        super().__init__()
        self.levels = levels
        self.straight_through = False

    def forward(self, x):
        q = torch.round(x * (self.levels - 1)) / (self.levels - 1)
        return x + (q - x).detach() if self.straight_through else q


def killed_after_first(engine, calls: list):
    """An AutoAttack engine that attacks the images of its first call (recording how many in `calls`)
    and is killed (KeyboardInterrupt) on the next: an interrupted evaluation."""

    def killed(model, x, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(len(x))
        return engine(model, x, *args, **kwargs)

    return killed
