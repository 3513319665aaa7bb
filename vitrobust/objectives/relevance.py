"""RobustViT (Chefer, Schwartz, Wolf, NeurIPS 2022): fine-tune a ViT so its relevance maps cover the object.

    L_bg  = mean((r * (1 - S))^2)          L_fg = mean((r * S - S)^2)
    L_seg = w_bg * L_bg + w_fg * L_fg       L_cls = CE(logits / T, argmax(logits))
    L     = w_seg * L_seg + w_cls * L_cls
r is the Chefer relevance map of the ground-truth class (vitrobust.explain), differentiable through the
attention maps; S is the batch's foreground mask (batch.extras["mask"], or the fractional
"mask_soft" that data.masks.resize=bilinear provides, as the reference fed it). L_cls keeps the
model's own current top-1, not the label. Defaults are the reference's: 2.0, 0.3, 0.8, 0.2, T = 1.

The reference runs a second forward pass for L_cls; here the logits of the relevance pass are reused.
Without dropout or drop-path (the reference setting) both passes give the same logits, so the loss and
its gradient are the same at one forward pass less.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vitrobust.distributed import all_gather_objects
from vitrobust.errors import ConfigError, InputError
from vitrobust.explain.relevance import explain
from vitrobust.objectives.base import Objective, ObjectiveParams, ValidationMetric
from vitrobust.registry import OBJECTIVES

NO_MASK = ("the relevance objective needs foreground masks in every batch: set data.masks.source "
           "(threshold for objects on a dark background, folder with data.masks.root for ImageNet-S PNGs, "
           "or callable)")


class RelevanceParams(ObjectiveParams):
    seg_weight: float = Field(0.8, ge=0, description="weight of the segmentation loss (reference lambda_seg)")
    cls_weight: float = Field(0.2, ge=0, description="weight of the classification loss (lambda_acc)")
    background_weight: float = Field(2.0, ge=0, description="weight of L_bg in L_seg (lambda_background)")
    foreground_weight: float = Field(0.3, ge=0, description="weight of L_fg in L_seg (lambda_foreground)")
    temperature: float = Field(1.0, gt=0, description="T of CE(logits / T, own top-1): ViT 1, DeiT-S 0.55, DeiT-B 0.65")
    target: Literal["label", "prediction"] = Field("label", description="class whose relevance is shaped")
    method: Literal["chefer", "rollout"] = Field("chefer", description="relevance map (the reference: chefer)")


def batch_mask(batch, like: torch.Tensor) -> torch.Tensor:
    """The foreground mask S as float B x H x W, shaped like the maps `like` (InputError if absent)."""
    mask = batch.extras.get("mask_soft", batch.extras.get("mask"))
    if mask is None:
        raise InputError(NO_MASK)
    mask = mask.float()
    if mask.dim() == 4:
        mask = mask[:, 0]
    if mask.shape != like.shape:
        raise InputError(f"the foreground masks have shape {tuple(mask.shape)} but the relevance maps "
                         f"{tuple(like.shape)}: masks must match the images (B x 1 x H x W)")
    return mask


def segmentation_losses(maps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_bg, L_fg): relevance on the background pushed to 0, relevance on the object pushed to 1."""
    background = torch.mean((maps * (1 - mask)) ** 2)
    foreground = torch.mean((maps * mask - mask) ** 2)
    return background, foreground


def self_distillation(logits: torch.Tensor, temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE(logits / T, argmax(logits)): keeps the current predictions while the maps change."""
    own = logits.detach().argmax(-1)
    return F.cross_entropy(logits.float() / temperature, own, label_smoothing=label_smoothing)


@OBJECTIVES.register
class Relevance(Objective):
    """RobustViT relevance fine-tuning (needs data.masks.source)."""

    name = "relevance"
    Params = RelevanceParams

    def terms(self, model, batch, *, differentiable: bool) -> dict[str, torch.Tensor]:
        p = self.params
        if batch.target is not None:
            raise ConfigError("the relevance objective needs one image per mask: switch off augment.mixup / cutmix")
        if "mask" not in batch.extras:
            raise InputError(NO_MASK)
        target = batch.y if p.target == "label" else None
        expl = explain(model, batch.x, target, method=p.method, differentiable=differentiable)
        background, foreground = segmentation_losses(expl.maps, batch_mask(batch, expl.maps))
        seg = p.background_weight * background + p.foreground_weight * foreground
        cls = self_distillation(expl.logits, p.temperature, p.label_smoothing)
        loss = p.seg_weight * seg + p.cls_weight * cls
        return {"loss": loss, "seg": seg, "bg": background, "fg": foreground, "cls": cls, "logits": expl.logits}

    def loss(self, model, batch, state):
        t = self.terms(model, batch, differentiable=True)
        logs = {k: v.detach() for k, v in t.items() if k not in ("loss", "logits")}
        return t["loss"], {"loss": t["loss"].detach(), "acc": self.accuracy(t["logits"], batch), **logs}

    def validation_metric(self, model, loader) -> ValidationMetric:
        """The mean loss over `loader`'s images, model in eval mode, every rank's share gathered. The
        reference keeps the checkpoint with the lowest validation loss."""
        total, count = 0.0, 0
        for batch in loader:
            total += float(self.terms(model, batch, differentiable=False)["loss"]) * len(batch)
            count += len(batch)
        parts = all_gather_objects((total, count))
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        if count == 0:
            raise InputError("the validation set is empty: the relevance validation loss needs images with masks")
        return ValidationMetric("val_relevance_loss", total / count, higher_is_better=False)
