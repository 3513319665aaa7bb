"""Attacks in [0,1] pixel space: PGD, straight-through gradients, and AutoAttack (importing this package
registers the AutoAttack engines in ATTACK_ENGINES)."""

from vitrobust.attacks import (
    autoattack,  # noqa: F401  (registers the `authors` engine)
    fast_engine,  # noqa: F401  (registers the `fast` engine)
)
from vitrobust.attacks.pgd import check_attack_args, pgd_attack, project, random_delta

__all__ = ["check_attack_args", "pgd_attack", "project", "random_delta"]
