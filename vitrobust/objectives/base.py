"""The Objective interface: `loss(model, batch, state) -> (loss, logs)`, and what the trainer gives it.

An objective is built once per run as `Cls(params, context)`: `params` is its validated `Params` model
(the config's `objective:` section), `context` an `ObjectiveContext` (the run's config, training split
and device). Per step it gets the (possibly DDP-wrapped) model and a `TrainState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from vitrobust.config import Config
    from vitrobust.data.base import ImageSet


class ObjectiveParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    loss: Literal["ce", "bce"] = Field("ce", description="training loss on logits: softmax cross-entropy, or "
                                       "sigmoid binary cross-entropy per class (AugReg style, Dr.ViT's reference)")


@dataclass
class ObjectiveContext:
    """What an objective may use besides its params, each None when not known (tests, notebooks)."""

    cfg: Config | None = None  # the run's config
    dataset: ImageSet | None = None  # the training split (channels, image size, classes)
    device: torch.device | None = None  # where training runs


@dataclass(frozen=True)
class ValidationMetric:
    """A model-selection number an objective computes on validation data (train.keep_best uses it)."""

    name: str  # logged under this name in metrics.jsonl
    value: float
    higher_is_better: bool


@dataclass
class TrainState:
    epoch: int = 0  # integer epoch, 0-based
    step: int = 0  # global optimizer step
    epochs: int = 1
    steps_per_epoch: int = 1
    model: Any = None  # the unwrapped model, for passes that must not sync DDP gradients (attacks)

    @property
    def progress(self) -> float:
        return (self.epoch + (self.step % self.steps_per_epoch) / self.steps_per_epoch) / self.epochs


class Objective:
    """Subclasses set `name`, a `Params` model, and implement `loss`.

    `loss` receives the (possibly DDP-wrapped) model in train mode and a Batch on the device; it
    returns a scalar loss to minimise and a dict of detached scalars to log (at least `acc`).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[ObjectiveParams]] = ObjectiveParams

    def __init__(self, params: ObjectiveParams, context: ObjectiveContext | None = None):
        self.params = params
        self.context = context or ObjectiveContext()

    def loss(self, model, batch, state: TrainState) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def validation_metric(self, model, loader) -> ValidationMetric | None:
        """The objective's own model-selection number on `loader` (model in eval mode, every rank calls it),
        or None to select by test top-1. Called at each evaluation epoch."""
        return None

    # helpers shared by objectives
    def soft_targets(self, batch, num_classes: int) -> torch.Tensor:
        """Targets as probabilities, label smoothing applied (mixing is linear, so order does not matter)."""
        t = batch.target if batch.target is not None else F.one_hot(batch.y, num_classes).float()
        ls = self.params.label_smoothing
        return t * (1 - ls) + ls / num_classes if ls else t

    def cross_entropy(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """The training loss: softmax CE, or with `loss: bce` the sigmoid BCE summed over classes and
        averaged over the batch (big_vision's sigmoid_xent), both on (smoothed, mixed) targets."""
        if self.params.loss == "bce":
            target = self.soft_targets(batch, logits.shape[-1])
            return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / len(logits)
        if batch.target is None:
            return F.cross_entropy(logits.float(), batch.y, label_smoothing=self.params.label_smoothing)
        target = self.soft_targets(batch, logits.shape[-1])
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()

    @staticmethod
    def accuracy(logits: torch.Tensor, batch) -> torch.Tensor:
        return (logits.argmax(-1) == batch.y).float().mean().detach()
