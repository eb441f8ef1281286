"""Training methods by name, one module each, behind the ``Method`` interface (base.py)."""

from certstudy.methods import adversarial, crown_ibp, erm, gloro, hr, smoothing  # noqa: F401  (registration)
from certstudy.methods.base import Method, MethodContext, MethodParams
from certstudy.methods.registry import METHODS

__all__ = ["METHODS", "Method", "MethodContext", "MethodParams"]
