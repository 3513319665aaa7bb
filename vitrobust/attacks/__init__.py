"""Attacks in [0,1] pixel space."""

from vitrobust.attacks.pgd import check_attack_args, pgd_attack, project, random_delta

__all__ = ["check_attack_args", "pgd_attack", "project", "random_delta"]
