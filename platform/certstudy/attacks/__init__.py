"""Attacks used in training and evaluation (PGD in l2 / linf)."""

from certstudy.attacks.pgd import Norm, pgd, project

__all__ = ["Norm", "pgd", "project"]
