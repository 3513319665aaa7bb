"""Projected gradient descent in [0,1] pixel space (Linf or L2), gradients w.r.t. the input only."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitrobust.errors import InputError
from vitrobust.threat import eps_problem


def _flat_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.ndim - 1)))


def random_delta(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Uniform in the Linf box, or uniform in the L2 ball (direction ~ N(0,I), radius ~ eps*U^(1/d))."""
    if norm == "Linf":
        return (torch.rand_like(x) * 2 - 1) * eps
    direction = torch.randn_like(x)
    direction = direction / _flat_norm(direction)
    d = x[0].numel()
    radius = torch.rand(len(x), *([1] * (x.ndim - 1)), device=x.device, dtype=x.dtype) ** (1.0 / d)
    return direction * radius * eps


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    factor = torch.clamp(eps / _flat_norm(delta), max=1.0)
    return delta * factor


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "Linf" else grad / _flat_norm(grad)


def check_attack_args(x: torch.Tensor, eps: float, norm: str) -> None:
    """eps usable for norm (vitrobust.threat.eps_problem) and x in [0,1]; InputError otherwise."""
    problem = eps_problem(eps, norm)
    if problem:
        raise InputError(problem)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise InputError(f"attack inputs must be [0,1] pixels (normalisation belongs inside the model), got range [{lo:.3g}, {hi:.3g}]")


def pgd_attack(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", steps: int = 10,
    step_size: float | None = None, random_start: bool = True, restarts: int = 1,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, check: bool = True,
    init_delta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximise `loss_fn(logits, y)` (default: summed cross-entropy) within the eps-ball around x.

    Returns adversarial images in [0,1]. `init_delta` replaces the random start. With restarts > 1 the per-sample worst case (a
    misclassified restart wins, else the highest loss) is kept. Only the input gets gradients.
    """
    if check:
        check_attack_args(x, eps, norm)
    if eps == 0 or (steps == 0 and not random_start):
        return x.detach().clone()
    step_size = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits.float(), target, reduction="sum"))
    x = x.detach()
    best, best_loss, best_wrong = x.clone(), None, None
    for _ in range(max(restarts, 1)):
        if init_delta is not None:
            delta = project(init_delta, eps, norm)
        else:
            delta = random_delta(x, eps, norm) if random_start else torch.zeros_like(x)
        delta = (x + delta).clamp_(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = loss_fn(model(x + delta), y)
            grad = torch.autograd.grad(loss, delta, allow_unused=True)[0] if loss.requires_grad else None
            if grad is None:
                raise InputError("the model's output has no gradient path to its input (a quantiser attacked with "
                                 "exact gradients?): use gradient=auto or straight-through for this model")
            delta = delta.detach() + step_size * ascent_direction(grad, norm)
            delta = (x + project(delta, eps, norm)).clamp_(0, 1) - x
        x_adv = (x + delta).detach()
        if restarts <= 1:
            return x_adv
        with torch.no_grad():
            logits = model(x_adv)
            per_loss = F.cross_entropy(logits.float(), y, reduction="none")
            wrong = logits.argmax(-1) != y
        if best_loss is None:
            best, best_loss, best_wrong = x_adv, per_loss, wrong
            continue
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (per_loss > best_loss))
        best = torch.where(better.view(-1, *([1] * (x.ndim - 1))), x_adv, best)
        best_loss = torch.where(better, per_loss, best_loss)
        best_wrong = best_wrong | wrong
    return best
