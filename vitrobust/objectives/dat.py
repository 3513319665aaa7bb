"""Discrete Adversarial Training (DAT; Mao et al., NeurIPS 2022), the reference algorithm of
alibaba/easyrobust (examples/imageclassification/imagenet/dat/main.py with attacks/pgd.py).

Per batch: L_clean = CE(f(x), y); xq = Q(x) with Q the frozen VQ tokenizer's round trip; a random
start on the eps-sphere around xq (probability 0.8, one draw per batch); one L2 step along the
normalised input gradient of CE(f(x0), y), projected into the eps-ball around xq and clipped to
[0,1]; x_adv = Q(x1); L = L_clean + 1.0 * CE(f(x_adv), y). Every value the reference hard-codes is an
option with the reference's default.

Where this differs from the reference, and why:
- the tokenizer is built once per run (the reference rebuilds it every epoch);
- the attack gradient is taken with autograd.grad w.r.t. the input only, on the unwrapped model
  (the reference calls backward(), fills parameter gradients and syncs them under DDP, then zeroes
  them); the extra forward the reference makes after its last step (only to rank restarts, which it
  does not use) is skipped;
- the attack loss is the training loss: soft-target CE with the mixup/cutmix targets and label
  smoothing when the batch is mixed (the reference's SoftTargetCrossEntropy on its mixup targets,
  which already carry the smoothing), else CE with the hard labels and label smoothing (the
  reference only runs with mixup). It is summed over the batch rather than averaged: each sample's
  step is normalised on its own, so the direction is the same, and fp16 gradients do not underflow;
- the attack forward/backward runs under the trainer's autocast (`attack_precision: train`); the
  reference, whose attack sits outside its autocast block, runs it in fp32 (`attack_precision: fp32`).
  The tokenizer runs in fp32 by default, as in the reference: its code choice is a nearest-neighbour
  search that reduced precision would change;
- the random-start coin comes from torch's global generator (the reference uses Python's `random`),
  so the trainer's per-step reseeding makes it reproducible and resumable;
- a model with a quantiser inside (a Dr.ViT) is attacked with straight-through gradients by default
  (`gradient: auto`); with `exact`, a model that sees only codes gets a zero step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from vitrobust.attacks.pgd import ascent_direction, project, random_delta
from vitrobust.attacks.straight_through import attack_gradients
from vitrobust.errors import ConfigError, InputError
from vitrobust.models.tokenizer_io import load_tokenizer
from vitrobust.objectives.adversarial import attack_mode
from vitrobust.objectives.base import Objective, ObjectiveContext, ObjectiveParams, TrainState
from vitrobust.registry import OBJECTIVES
from vitrobust.threat import Norm, ThreatModel


class DATParams(ObjectiveParams, ThreatModel):
    tokenizer: str | None = Field(None, description="the VQ tokenizer (required): a `vitrobust tokenizer train` run "
                                  "directory or .safetensors, or a taming-transformers .ckpt")
    tokenizer_preset: str | None = Field(None, description="layout of a taming .ckpt without a config YAML beside "
                                         "it, e.g. vqgan_openimages_f8_16384")
    trust_tokenizer: bool = Field(False, description="allow pickled (non weights-only) tokenizer checkpoints")
    norm: Norm = "L2"
    eps: float = Field(0.1, ge=0, description="radius around the start point, in [0,1] pixel units")
    step_size: float = Field(0.1, ge=0)
    steps: int = Field(1, ge=0, description="attack steps (0: the random start only)")
    random_start: float = Field(0.8, ge=0, le=1, description="probability of a random start on the eps-sphere")
    random_start_per_sample: bool = Field(False, description="draw the random start per sample (the reference "
                                          "draws once per batch)")
    attack_mode: Literal["train", "eval"] = Field("train", description="model mode during the attack pass")
    weight: float = Field(1.0, ge=0, description="weight of the adversarial loss")
    perturb: Literal["reconstruction", "input"] = Field("reconstruction", description="reconstruction: attack "
                                                        "around Q(x) (the reference); input: around x")
    attack_precision: Literal["train", "fp32"] = Field("train", description="train: under the trainer's autocast; "
                                                       "fp32: as the reference")
    tokenizer_precision: Literal["fp32", "train"] = Field("fp32", description="fp32 as the reference; train: "
                                                          "under the trainer's autocast")


def _load(params: DATParams, device) -> nn.Module:
    if params.tokenizer is None:
        raise ConfigError("objective.tokenizer: DAT needs a VQ tokenizer: set objective.tokenizer to a run directory "
                          "of `vitrobust tokenizer train` or to a taming VQGAN .ckpt (with objective.tokenizer_preset)")
    path = Path(params.tokenizer).expanduser()
    if not path.exists():
        raise ConfigError(f"objective.tokenizer: nothing at {path}; train a tokenizer with `vitrobust tokenizer "
                          f"train` and give its run directory, or give a VQGAN checkpoint file")
    return load_tokenizer(path, trust=params.trust_tokenizer, preset=params.tokenizer_preset, freeze=True,
                          device=device or "cpu")


def _check_fits(tokenizer: nn.Module, dataset, cfg) -> None:
    """The tokenizer's channels and downsampling must fit the training images (checked before training)."""
    in_chans, factor = getattr(tokenizer, "in_chans", None), getattr(tokenizer, "downsample", None)
    if dataset is None:
        return
    if in_chans is not None and in_chans != dataset.in_chans:
        raise ConfigError(f"objective.tokenizer has {in_chans} input channels but the {dataset.name or 'training'} "
                          f"images have {dataset.in_chans}: use a tokenizer trained on this data")
    size = (cfg.data.img_size if cfg is not None and cfg.data.img_size else None) or dataset.img_size
    if factor and size % factor:
        raise ConfigError(f"objective.tokenizer downsamples {factor}x but the images are {size} px: pick "
                          f"data.img_size as a multiple of {factor}")


@OBJECTIVES.register
class DAT(Objective):
    """L = CE(f(x), y) + weight * CE(f(Q(x1)), y), x1 one L2 ascent step from (a random point near) Q(x).

    `tokenizer`: a ready tokenizer module instead of the file `params.tokenizer` names (tests, notebooks).
    """

    name = "dat"
    Params = DATParams

    def __init__(self, params: DATParams, context: ObjectiveContext | None = None, tokenizer: nn.Module | None = None):
        super().__init__(params, context)
        device = self.context.device
        if tokenizer is None:
            tokenizer = _load(params, device)
        elif device is not None:
            tokenizer = tokenizer.to(device)
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        _check_fits(self.tokenizer, self.context.dataset, self.context.cfg)

    # --- pieces, each a step of the reference ---------------------------------------------------

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Q(x): the tokenizer's round trip, no gradient, fp32 unless asked otherwise."""
        fp32 = self.params.tokenizer_precision == "fp32"
        off = torch.autocast(device_type=x.device.type, enabled=False) if fp32 else contextlib.nullcontext()
        with torch.no_grad(), off:
            xq = self.tokenizer.reconstruct(x.float() if fp32 else x)
        if xq.shape != x.shape:
            raise InputError(f"the DAT tokenizer maps {tuple(x.shape)} images to {tuple(xq.shape)}: its channels and "
                             f"downsampling must fit the training images")
        return xq.to(x.dtype).clamp_(0, 1)

    def random_start(self, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, started): x0 = clip(center + eps * n/||n||_2) where started, else center.

        The draws use torch's global generator, which the trainer reseeds every step.
        """
        p = self.params
        n = len(center)
        if p.random_start_per_sample:
            started = torch.rand(n, device=center.device) < p.random_start
        else:
            started = (torch.rand(()) < p.random_start).expand(n).to(center.device)
        if not bool(started.any()):
            return center, started
        if p.norm == "L2":  # on the sphere, as the reference (not inside the ball)
            delta = p.eps * ascent_direction(torch.randn_like(center), "L2")
        else:
            delta = random_delta(center, p.eps, "Linf")
        moved = (center + delta).clamp_(0, 1)
        mask = started.view(-1, *([1] * (center.ndim - 1)))
        return torch.where(mask, moved, center), started

    def attack(self, model: nn.Module, x0: torch.Tensor, center: torch.Tensor, batch) -> torch.Tensor:
        """`steps` ascent steps of the training CE from x0, projected into the eps-ball around `center`."""
        p = self.params
        x = x0.detach()
        fp32 = p.attack_precision == "fp32"
        with attack_mode(model, p.attack_mode), attack_gradients(model, p.gradient), \
                (torch.autocast(device_type=x.device.type, enabled=False) if fp32 else contextlib.nullcontext()):
            for _ in range(p.steps):
                x = x.requires_grad_(True)
                loss = self.cross_entropy(model(x), batch) * len(x)  # summed: see the module docstring
                # a model that only sees codes (a discrete-only Dr.ViT, exact gradient) leaves x out of the graph
                grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
                grad = torch.zeros_like(x) if grad is None else grad
                step = x.detach() + p.step_size * ascent_direction(grad, p.norm)
                x = (center + project(step - center, p.eps, p.norm)).clamp_(0, 1)
        return x.detach()

    # --- the objective --------------------------------------------------------------------------

    def loss(self, model, batch, state: TrainState):
        p = self.params
        logits = model(batch.x)
        clean_loss = self.cross_entropy(logits, batch)

        center = self.quantize(batch.x) if p.perturb == "reconstruction" else batch.x.detach()
        x0, started = self.random_start(center) if p.eps > 0 else (center, torch.zeros(len(center), dtype=torch.bool))
        attacker = state.model if state.model is not None else model
        x1 = self.attack(attacker, x0, center, batch) if p.eps > 0 and p.steps > 0 else x0
        x_adv = self.quantize(x1)

        logits_adv = model(x_adv)
        adv_loss = self.cross_entropy(logits_adv, batch)
        loss = clean_loss + p.weight * adv_loss
        return loss, {"loss": loss.detach(), "clean_loss": clean_loss.detach(), "adv_loss": adv_loss.detach(),
                      "acc": self.accuracy(logits, batch), "adv_acc": self.accuracy(logits_adv, batch),
                      "random_start": started.float().mean()}
