"""Certifiers by name, one module each, behind the ``Certifier`` interface (base.py)."""

from certstudy.certify import bounds, lipschitz, smoothing  # noqa: F401  (registration)
from certstudy.certify.base import ABSTAIN, Certificate, Certifier, CertifierContext, CertifierParams, CertifyResult
from certstudy.certify.registry import CERTIFIERS

__all__ = ["ABSTAIN", "CERTIFIERS", "Certificate", "Certifier", "CertifierContext", "CertifierParams", "CertifyResult"]
