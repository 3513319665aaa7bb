"""Adversarial training objectives: PGD-AT, TRADES and FGSM with random start.

PGD-AT follows "A Light Recipe to Train Robust Vision Transformers" (Debenedetti et al.): the
loss is taken on adversarial examples only, the attack loss is summed cross-entropy with hard
labels, the step size is 1.5*eps/steps of the FULL eps, and eps warms up linearly by integer
epoch. TRADES follows Zhang et al. (2019), FGSM-RS follows Wong et al. (2020, "Fast is better
than free"). All attacks run on `state.model` (the unwrapped model, so DDP sees no extra
forward) and take gradients w.r.t. the input only.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vitrobust.attacks.pgd import pgd_attack
from vitrobust.attacks.straight_through import attack_gradients
from vitrobust.objectives.base import Objective, ObjectiveParams, TrainState
from vitrobust.registry import OBJECTIVES
from vitrobust.threat import ThreatModel


def eps_schedule(eps: float, epoch: int, warmup_epochs: int = 0, zero_eps_epochs: int = 0) -> float:
    """eps at a 0-based integer epoch: 0 for `zero_eps_epochs` epochs, then a linear ramp of
    `warmup_epochs` epochs that starts at 0 (so the first ramp epoch is clean too), then eps."""
    ramp_epoch = epoch - zero_eps_epochs
    if ramp_epoch < 0:
        return 0.0
    if warmup_epochs <= 0:
        return float(eps)
    return min(1.0, ramp_epoch / warmup_epochs) * eps


@contextlib.contextmanager
def attack_mode(model: torch.nn.Module, mode: str):
    """Run the attack with the model in eval (dropout, drop-path and BatchNorm updates off) or train mode.

    Each submodule's own flag is put back afterwards, so a submodule kept in eval on purpose (a frozen
    tokenizer, say) is not switched to train by the restore.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


class AttackParams(ObjectiveParams, ThreatModel):
    """Threat model (norm, eps, gradient), step size, eps warm-up and attack mode of the adversarial objectives."""

    eps: float = Field(4 / 255, ge=0, description="radius in [0,1] pixel units (4/255 = 0.0157)")
    step_size: float | None = Field(None, gt=0, description="attack step (default: a multiple of the full eps)")
    scale_step_with_eps: bool = Field(False, description="scale the step with the warmed-up eps (the reference keeps it)")
    attack_mode: Literal["eval", "train"] = "eval"
    warmup_epochs: int = Field(0, ge=0, description="linear eps ramp over this many epochs (epoch 0 of it is clean)")
    zero_eps_epochs: int = Field(0, ge=0, description="clean epochs before the ramp")


class AdversarialObjective(Objective):
    """Base of the adversarial objectives: the eps schedule, the step size, and the attack model."""

    Params = AttackParams

    def default_step_size(self, eps: float) -> float:
        raise NotImplementedError

    def current_eps(self, state: TrainState) -> float:
        p = self.params
        return eps_schedule(p.eps, state.epoch, p.warmup_epochs, p.zero_eps_epochs)

    def step_size(self, eps_now: float) -> float:
        """The configured step (or the default, from the full eps); scaled by eps_now/eps only when asked."""
        p = self.params
        step = p.step_size if p.step_size is not None else self.default_step_size(p.eps)
        if p.scale_step_with_eps and p.eps > 0:
            step *= eps_now / p.eps
        return step

    @staticmethod
    def attack_model(model, state: TrainState):
        return state.model if state.model is not None else model

    def adversarial_ce_step(self, model, batch, state: TrainState, *, steps: int, random_start: bool):
        """Loss on x_adv only: `steps` attack passes (forward + input backward) and one training forward."""
        p, eps = self.params, self.current_eps(state)
        x_adv = batch.x
        if eps > 0:
            attacker = self.attack_model(model, state)
            with attack_mode(attacker, p.attack_mode), attack_gradients(attacker, p.gradient):
                x_adv = pgd_attack(attacker, batch.x, batch.y, eps=eps, norm=p.norm, steps=steps,
                                   step_size=self.step_size(eps), random_start=random_start, check=False)
        logits = model(x_adv)
        loss = self.cross_entropy(logits, batch)
        return loss, {"loss": loss.detach(), "acc": self.accuracy(logits, batch), "eps": eps}


class PGDATParams(AttackParams):
    steps: int = Field(1, ge=1, description="attack steps K")
    random_start: bool = Field(True, description="start uniformly in the eps ball")


@OBJECTIVES.register
class PGDAT(AdversarialObjective):
    """PGD adversarial training, step size 1.5*eps/K by default."""

    name = "pgd_at"
    Params = PGDATParams

    def default_step_size(self, eps: float) -> float:
        return 1.5 * eps / self.params.steps

    def loss(self, model, batch, state):
        return self.adversarial_ce_step(model, batch, state, steps=self.params.steps,
                                        random_start=self.params.random_start)


class FGSMRSParams(AttackParams):
    eps: float = Field(8 / 255, ge=0, description="radius in [0,1] pixel units (8/255 = 0.0314)")


@OBJECTIVES.register
class FGSMRS(AdversarialObjective):
    """FGSM from a uniform random start, one step of alpha = step_size (default 1.25*eps), projected."""

    name = "fgsm_rs"
    Params = FGSMRSParams

    def default_step_size(self, eps: float) -> float:
        return 1.25 * eps

    def loss(self, model, batch, state):
        return self.adversarial_ce_step(model, batch, state, steps=1, random_start=True)


def kl_attack(model, x: torch.Tensor, p_clean: torch.Tensor, *, eps: float, norm: str, steps: int,
              step_size: float) -> torch.Tensor:
    """Maximise sum KL(p_clean || p(x + delta)) in the eps ball, from delta = 0.001*N(0,1) (TRADES).

    The start is clamped to [0,1] (the reference code lets it stray 0.001 outside for the first step).
    """
    def kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits.float(), dim=-1), target, reduction="sum")

    return pgd_attack(model, x, p_clean, eps=eps, norm=norm, steps=steps, step_size=step_size, loss_fn=kl,
                      check=False, init_delta=0.001 * torch.randn_like(x))


class TradesParams(AttackParams):
    beta: float = Field(6.0, ge=0, description="weight of KL(p_clean || p_adv)")
    eps: float = Field(8 / 255, ge=0, description="radius in [0,1] pixel units (8/255 = 0.0314)")
    steps: int = Field(10, ge=1, description="attack steps K")
    step_size: float | None = Field(None, gt=0, description="attack step (default: eps/4, 2/255 at 8/255)")


@OBJECTIVES.register
class Trades(AdversarialObjective):
    """TRADES: CE(f(x), y) + beta * KL(p_clean || p_adv) (batchmean), x_adv maximising the KL."""

    name = "trades"
    Params = TradesParams

    def default_step_size(self, eps: float) -> float:
        return 0.25 * eps  # 2/255 at 8/255, the reference's setting

    def loss(self, model, batch, state):
        p, eps = self.params, self.current_eps(state)
        if eps == 0:
            logits = model(batch.x)
            loss = self.cross_entropy(logits, batch)
            acc = self.accuracy(logits, batch)
            return loss, {"loss": loss.detach(), "acc": acc, "adv_acc": acc, "kl": 0.0, "eps": eps}
        attacker = self.attack_model(model, state)
        with attack_mode(attacker, p.attack_mode), attack_gradients(attacker, p.gradient):
            with torch.no_grad():
                p_clean = F.softmax(attacker(batch.x).float(), dim=-1)
            x_adv = kl_attack(attacker, batch.x, p_clean, eps=eps, norm=p.norm, steps=p.steps,
                              step_size=self.step_size(eps))
        logits, logits_adv = model(batch.x), model(x_adv)
        ce = self.cross_entropy(logits, batch)
        # As in the reference, the training KL is not detached on the clean side.
        kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=-1), F.softmax(logits.float(), dim=-1),
                      reduction="batchmean")
        loss = ce + p.beta * kl
        return loss, {"loss": loss.detach(), "acc": self.accuracy(logits, batch),
                      "adv_acc": self.accuracy(logits_adv, batch), "kl": kl.detach(), "eps": eps}
