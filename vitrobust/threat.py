"""The threat model, defined once: norm, eps (in [0,1] pixel units) and the attack gradient.

`ThreatModel` is the pydantic block that the evaluation config (evaluate.attack) and the adversarial
objectives (pgd_at, trades, fgsm_rs, dat) share; `eps_problem` is the one eps check that configs,
attacks and AutoAttack all apply.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from pydantic import BaseModel, Field, ValidationInfo, field_validator

Norm = Literal["Linf", "L2"]
Gradient = Literal["auto", "exact", "straight-through"]
NORMS: tuple[str, ...] = get_args(Norm)
GRADIENTS: tuple[str, ...] = get_args(Gradient)
GRADIENT_HELP = ("gradient through quantisers inside the model (Dr.ViT): auto = straight-through where the "
                 "model has one, exact = as the forward pass, straight-through = forced")


def eps_problem(eps: float, norm: str, pixels: int | None = None) -> str | None:
    """Why `eps` is not a usable radius for `norm` (None when it is). With `pixels` (values per image),
    an L2 eps beyond the diameter of the [0,1] cube is refused too."""
    if norm not in NORMS:
        return f"norm must be one of {', '.join(NORMS)}, got {norm!r}"
    if not eps >= 0:  # also NaN
        return f"eps must be >= 0, got {eps}"
    if norm == "Linf" and eps > 1:
        return f"Linf eps={eps} > 1 is outside the [0,1] pixel range: give eps as a fraction (8/255 = {8 / 255:.4f})"
    if pixels is not None and norm == "L2" and eps > math.sqrt(pixels):
        return (f"L2 eps={eps} exceeds {math.sqrt(pixels):.4g}, the largest distance between two [0,1] images "
                f"of this size: give eps in [0,1] pixel units (e.g. 0.5 for CIFAR-10)")
    return None


class ThreatModel(BaseModel):
    """norm, eps and gradient, with eps checked against the norm. Subclasses may change the defaults."""

    norm: Norm = "Linf"
    eps: float = Field(8 / 255, ge=0, description="radius in [0,1] pixel units (8/255 = 0.0314)")
    gradient: Gradient = Field("auto", description=GRADIENT_HELP)

    @field_validator("eps")
    @classmethod
    def _check_eps(cls, eps: float, info: ValidationInfo) -> float:
        problem = eps_problem(eps, info.data.get("norm", "Linf"))
        if problem:
            raise ValueError(problem)
        return eps


__all__ = ["GRADIENTS", "GRADIENT_HELP", "NORMS", "Gradient", "Norm", "ThreatModel", "eps_problem"]
