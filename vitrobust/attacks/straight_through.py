"""Straight-through (BPDA) gradients for white-box attacks on models with non-differentiable steps.

The protocol: a submodule whose forward has a step with zero or no gradient (rounding, a codebook
lookup) defines a boolean attribute `straight_through`. When it is True the module must return a
value equal to its exact forward but pass the gradient through as the identity, e.g.

    q = quantize(z)
    return z + (q - z).detach() if self.straight_through else q

Attacks switch these flags on with `attack_gradients(model, requested)`; results record which
gradient the attack used ("exact" when the model has no such module or the user forced it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from vitrobust.errors import InputError
from vitrobust.threat import GRADIENTS


def straight_through_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules (the model included) that follow the protocol."""
    return [m for m in model.modules() if isinstance(getattr(m, "straight_through", None), bool)]


@contextmanager
def straight_through(model: nn.Module, enabled: bool = True) -> Iterator[list[nn.Module]]:
    """Set `straight_through = enabled` on every protocol module; restore the old values afterwards."""
    modules = straight_through_modules(model)
    saved = [m.straight_through for m in modules]
    try:
        for m in modules:
            m.straight_through = enabled
        yield modules
    finally:
        for m, value in zip(modules, saved):
            m.straight_through = value


def resolve_gradient(model: nn.Module, requested: str = "auto") -> str:
    """The gradient an attack gets: "straight-through" if the model has a protocol module and the
    user did not force "exact", else "exact"."""
    if requested not in GRADIENTS:
        raise InputError(f"gradient must be one of {', '.join(GRADIENTS)}, got {requested!r}")
    if requested == "exact" or not straight_through_modules(model):
        return "exact"
    return "straight-through"


@contextmanager
def attack_gradients(model: nn.Module, requested: str = "auto") -> Iterator[str]:
    """Run a white-box attack with the resolved gradient; yields "exact" or "straight-through"."""
    mode = resolve_gradient(model, requested)
    with straight_through(model, enabled=mode == "straight-through"):
        yield mode
