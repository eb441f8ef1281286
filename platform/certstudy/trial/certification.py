"""End-of-trial certification: every configured certifier on fixed test (and val) points.

Returns the metrics (``certify/metrics.py`` names) and the files logged beside the model: per
certifier the certification curve as CSV and PNG and the per-example radii at full precision.
Every certificate of a deterministic certifier is then audited (``certify/audit.py``, with PGD or
APGD on the margin loss): ``audit/points`` test points attacked at their certified radius, ``audit/violations`` broken
(must be 0), also per certificate, with the indices of any violation in ``certify/<name>_audit.csv``.
"""

from __future__ import annotations

from torch import Tensor

from certstudy import phases
from certstudy.certify.audit import audit
from certstudy.certify.base import Certificate
from certstudy.certify.metrics import certification_metrics, curve_csv, curve_png, radii_csv
from certstudy.trial.build import TrialParts
from certstudy.trial.config import TrialConfig

CERTIFY_ARTIFACT_DIR = "certify"


def certify_all(
    parts: TrialParts, cfg: TrialConfig, test: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor] | None, seed: int
) -> tuple[dict[str, float], dict[str, bytes], list[Certificate]]:
    """The metrics, the files, and the test certificates of the deterministic certifiers (those a
    certification gap is measured for)."""
    metrics: dict[str, float] = {}
    files: dict[str, bytes] = {}
    deterministic: list[Certificate] = []
    ev = cfg.evaluation
    for j, (entry, certifier) in enumerate(zip(ev.certifiers, parts.certifiers)):
        phases.enter(phases.CERTIFYING, step=entry.name, total=len(test[1]))
        result = certifier.certify(parts.model, test[0], test[1], seed=seed + 100 * j)
        if certifier.deterministic:
            deterministic += result.certificates
        metrics.update(certification_metrics("test", result, test[1], ev.radii))
        files[f"{CERTIFY_ARTIFACT_DIR}/{entry.name}_curve.csv"] = curve_csv(result, test[1]).encode()
        files[f"{CERTIFY_ARTIFACT_DIR}/{entry.name}_curve.png"] = curve_png(
            result, test[1], f"{entry.name}: certified accuracy on {len(test[1])} test points"
        )
        files[f"{CERTIFY_ARTIFACT_DIR}/{entry.name}_radii.csv"] = radii_csv(result, test[1]).encode()
        if certifier.deterministic and ev.audit.enabled:
            for cert in result.certificates:
                phases.enter(phases.AUDITING, step=cert.name)
                found = audit(
                    parts.model,
                    test[0],
                    cert,
                    attack=ev.audit.attack,
                    steps=ev.audit.steps,
                    restarts=ev.audit.restarts,
                    bounds=parts.splits.bounds,
                    seed=seed + 100 * j + 7,
                    batch_size=ev.batch_size,
                )
                metrics[f"audit/points_{cert.name}"] = float(found.points)
                metrics[f"audit/violations_{cert.name}"] = float(found.violations)
                metrics["audit/points"] = metrics.get("audit/points", 0.0) + found.points
                metrics["audit/violations"] = metrics.get("audit/violations", 0.0) + found.violations
                if found.violations:
                    files[f"{CERTIFY_ARTIFACT_DIR}/{cert.name}_audit.csv"] = (
                        "index\n" + "".join(f"{i}\n" for i in found.violating_indices)
                    ).encode()
        if val is not None:
            val_result = certifier.certify(parts.model, val[0], val[1], seed=seed + 100 * j + 50)
            metrics.update(certification_metrics("val", val_result, val[1], ev.radii))
    return metrics, files, deterministic
