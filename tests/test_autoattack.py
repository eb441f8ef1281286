"""AutoAttack as the empirical yardstick, the certification gap and its alarm, and the APGD audit.

Everything runs the real ``pyautoattack`` (Croce & Hein's code) on models trained here on digits.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from certstudy.attacks import pgd
from certstudy.attacks.autoattack import apgd_margin, autoattack_robust
from certstudy.certify import CERTIFIERS
from certstudy.certify.audit import audit
from certstudy.certify.base import Certificate, CertifyResult
from certstudy.certify.bounds import IBPCertifier
from certstudy.cli import main
from certstudy.metric_names import autoattack_acc_name, cert_gap_name, certified_acc_name, radius_label
from certstudy.trial import TrialConfig, run_trial
from certstudy.trial.robustness import ALARM_RESULT, ALARM_TAG
from conftest import launch_study, tiny_study

RADII = {"linf": [0.0, 0.02, 0.05, 0.1], "l2": [0.0, 0.25, 0.5, 1.0]}
CERTIFIERS_BY_NORM = {
    "linf": [{"name": "ibp"}, {"name": "crown"}],
    "l2": [
        {"name": "lipschitz"},
        {"name": "crown", "params": {"norm": "l2"}},
        {"name": "ibp", "params": {"norm": "l2"}},
    ],
}
EPS = {"linf": 0.05, "l2": 0.5}


def _pgd_trained(norm: str, tmp_path: Path, **evaluation: object) -> dict:
    """A PGD-trained digits MLP evaluated on 150 test points: PGD-20 at every grid radius, every
    deterministic certifier of the norm, and standard AutoAttack on the same 150 points."""
    cfg = TrialConfig.model_validate(
        {
            "model": {"name": "mlp", "params": {"width": 96, "depth": 2}},
            "method": {"name": "adversarial", "params": {"eps": EPS[norm], "norm": norm, "steps": 5}},
            "training": {"epochs": 6, "batch_size": 64, "lr": 0.003},
            "evaluation": {
                "attack": {"norm": norm, "eps": EPS[norm], "steps": 20},
                "attack_grid": True,
                "radii": {norm: RADII[norm]},
                "certifiers": CERTIFIERS_BY_NORM[norm],
                "autoattack": {"version": "standard", "subset": 150},
                "val_subset": 64,
                "test_subset": 150,
                **evaluation,
            },
        }
    )
    return run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_is_stronger_than_pgd_and_bounds_every_certificate(norm: str, tmp_path: Path) -> None:
    final = _pgd_trained(norm, tmp_path)
    certificates = [c["name"] for c in CERTIFIERS_BY_NORM[norm]]
    report = []
    for r in RADII[norm][1:]:
        aa = final[autoattack_acc_name(norm, r)]
        pgd20 = final[f"test/robust_acc_{norm}_{radius_label(r)}"]  # the same 150 points, PGD-20, one restart
        report.append(f"r={r:g}: AutoAttack {aa:.3f} vs PGD-20 {pgd20:.3f} ({(aa - pgd20) * 100:+.1f} points)")
        assert aa <= pgd20 + 0.005, report
        for cert in certificates:
            certified = final[certified_acc_name("test", cert, norm, r)]
            gap = final[cert_gap_name("autoattack", cert, norm, r)]
            assert certified <= aa, (cert, r, certified, aa)
            assert gap == pytest.approx(aa - certified, abs=1e-12) and gap >= 0
    assert ALARM_RESULT not in final
    assert final["audit/violations"] == 0
    print(f"{norm}: " + "; ".join(report))


def test_the_apgd_audit_finds_no_violation_on_sound_certificates(tmp_path: Path) -> None:
    final = _pgd_trained("linf", tmp_path, audit={"attack": "apgd"}, autoattack=None, attack_grid=False)
    assert final["audit/points"] > 0 and final["audit/violations"] == 0


def test_apgd_margin_audit_breaks_an_overclaiming_certificate_and_respects_each_radius() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(60, 1, 4, 4)
    with torch.no_grad():
        preds = model(x).argmax(1)
    radii = torch.linspace(0.01, 0.5, 60, dtype=torch.float64)
    adv = apgd_margin(model, x, preds, radii.float(), norm="linf", steps=50, restarts=2, seed=0)
    assert ((adv - x).flatten(1).abs().max(1).values <= radii.float() + 1e-7).all()  # inside each point's own ball
    assert adv.min() >= 0 and adv.max() <= 1
    honest = Certificate("fake", "l2", preds, torch.full((60,), 1e-4, dtype=torch.float64))
    assert audit(model, x, honest, attack="apgd", steps=50, restarts=5, bounds=(0.0, 1.0), seed=0).violations == 0
    inflated = Certificate("fake", "l2", preds, torch.full((60,), 10.0, dtype=torch.float64))
    found = audit(model, x, inflated, attack="apgd", steps=50, restarts=5, bounds=(0.0, 1.0), seed=0)
    assert (
        found.points == 60 and found.violations >= 55
    )  # in [0, 1]^16 a linear model flips well within l2 10, save where the box blocks it


def test_autoattack_is_seeded_and_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(40, 1, 8, 8)
    y = model(x).argmax(1)
    state = torch.get_rng_state()
    a = autoattack_robust(model, x, y, norm="linf", eps=0.1, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = autoattack_robust(model, x, y, norm="linf", eps=0.1, seed=5)
    assert torch.equal(a, b) and 0 < int(a.sum()) < 40
    no_stronger = pgd(model, x, y, eps=0.1, norm="linf", steps=20)
    assert int(a.sum()) <= int((model(no_stronger).argmax(1) == y).sum())


class InflatedIBP(IBPCertifier):
    """IBP that claims radius 1000 wherever it certified anything at all: unsound on purpose."""

    bound = "inflated"

    def certify(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> CertifyResult:
        result = super().certify(model, x, y, seed=seed)
        cert = result.certificates[0]
        return CertifyResult(
            [Certificate(cert.name, cert.norm, model(x).argmax(1), torch.full_like(cert.radii, 1000.0))]
        )


def test_an_inflated_certificate_gives_a_negative_gap_and_the_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(CERTIFIERS._items, "inflated", InflatedIBP)
    study = tiny_study(
        "inflated",
        methods=None,
        method={"name": "erm"},
        training={"epochs": 3, "batch_size": 64, "lr": 0.005},
        evaluation={
            "attack": {"norm": "linf", "eps": 0.05, "steps": 5},
            "radii": {"linf": [0.0, 0.05, 0.1]},
            "certifiers": [{"name": "inflated"}, {"name": "ibp"}],
            "autoattack": {"version": "custom", "attacks": ["apgd-ce"], "subset": 80},
            "audit": {"enabled": False},
            "test_subset": 120,
        },
        search={"num_trials": 1},
    )
    del study["methods"]
    path = tmp_path / "inflated.yaml"
    path.write_text(yaml.safe_dump(study))
    work = tmp_path / "work"
    assert main(["run", str(path), "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert f"{ALARM_TAG}: negative certification gap: inflated certifies" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("inflated").experiment_id])
    assert run.data.tags[ALARM_TAG].startswith("negative certification gap: inflated certifies")
    assert "ibp certifies" not in run.data.tags[ALARM_TAG]  # the sound certificate raises no alarm
    metrics = run.data.metrics
    for r in (0.05, 0.1):
        assert metrics[cert_gap_name("autoattack", "inflated", "linf", r)] < 0
        assert metrics[cert_gap_name("autoattack", "ibp", "linf", r)] >= 0


def test_without_autoattack_the_gap_is_measured_against_pgd_and_named_so(tmp_path: Path) -> None:
    final = _pgd_trained("linf", tmp_path, autoattack=None)
    for r in RADII["linf"][1:]:
        assert not any(k.startswith("test/autoattack_acc") for k in final)
        assert final[cert_gap_name("pgd", "crown", "linf", r)] == pytest.approx(
            final[f"test/robust_acc_linf_{radius_label(r)}"] - final[certified_acc_name("test", "crown", "linf", r)],
            abs=1e-12,
        )


# --- validation: one line, exit 2 ------------------------------------------------------------


def _validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], study: dict) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "change, field, message",
    [
        (
            {
                "methods": None,
                "method": {"name": "smoothing", "params": {"sigma": 0.25}},
                "evaluation": {"autoattack": {}},
            },
            "evaluation.autoattack",
            "trains a base classifier",
        ),
        (
            {"evaluation": {"autoattack": {"version": "custom", "attacks": ["apgd-ce", "deepfool"]}}},
            "evaluation.autoattack.attacks",
            "deepfool",
        ),
        ({"evaluation": {"autoattack": {"subset": 0}}}, "evaluation.autoattack.subset", "greater than or equal to 1"),
        (
            {"evaluation": {"autoattack": {"attacks": ["square"]}}},
            "evaluation.autoattack",
            "list attacks with version custom",
        ),
        ({"evaluation": {"autoattack": {"version": "custom"}}}, "evaluation.autoattack", "non-empty list of attacks"),
        (
            {"objectives": [{"metric": "val/autoattack_acc_linf_r0.05", "mode": "max"}]},
            "objectives[0].metric",
            "no val variant",
        ),
        ({"evaluation": {"best_metric": "val/cert_gap_ibp_linf_r0.05"}}, "evaluation.best_metric", "no val variant"),
        (
            {"dataset": {"name": "synthetic_mixture"}, "evaluation": {"autoattack": {}}},
            "evaluation.autoattack",
            "assumes images in [0, 1]",
        ),
        (
            {"dataset": {"name": "synthetic_mixture"}, "evaluation": {"audit": {"attack": "apgd"}}},
            "evaluation.audit.attack",
            "APGD assumes images",
        ),
    ],
)
def test_bad_autoattack_settings_are_one_line_errors(
    change: dict, field: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study("bad")
    for key, value in change.items():
        if value is None:
            study.pop(key, None)
        elif key == "evaluation":
            study["evaluation"] = {**study["evaluation"], **value}
        else:
            study[key] = value
    err = _validate(tmp_path, capsys, study)
    assert field in err and message in err, err


# --- a real study: export -> run reproduces AutoAttack exactly, the dashboard shows the gap ------


@pytest.fixture(scope="module")
def aa_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    spec = tiny_study(
        "aastudy",
        evaluation={
            "attack": {"norm": "linf", "eps": 0.05, "steps": 3},
            "attack_grid": True,
            "radii": {"linf": [0.0, 0.02, 0.05]},
            "certifiers": [{"name": "ibp"}, {"name": "crown"}],
            "autoattack": {"version": "standard", "subset": 40},
            "val_subset": 128,
            "test_subset": 120,
        },
        search={"num_trials": 2, "max_concurrent": 2, "seed": 1},
    )
    return launch_study(tmp_path_factory.mktemp("aa"), spec)


@pytest.mark.integration
def test_export_then_run_reproduces_autoattack_exactly(aa_study: dict) -> None:
    for child in aa_study["children"]:
        assert child.info.status == "FINISHED"
        for r in (0.02, 0.05):
            assert autoattack_acc_name("linf", r) in child.data.metrics
            assert cert_gap_name("autoattack", "crown", "linf", r) in child.data.metrics
        assert ALARM_TAG not in child.data.tags
    work, out = aa_study["work"], aa_study["root"] / "best.yaml"
    assert main(["export", "aastudy", "--workdir", str(work), "--top", "1", "-o", str(out)]) == 0
    exported = yaml.safe_load(out.read_text())["provenance"]["metrics"]
    assert autoattack_acc_name("linf", 0.05) in exported
    proc = subprocess.run(
        [shutil.which("certstudy") or "", "run", str(out), "--workdir", str(work), "--no-track"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "reproduced the exported metrics exactly" in proc.stdout, proc.stdout
    row = next(line for line in proc.stdout.splitlines() if autoattack_acc_name("linf", 0.05) in line)
    assert "+0.00e+00" in row, row


@pytest.mark.integration
def test_the_dashboard_has_the_certification_gap_panel(aa_study: dict) -> None:
    import re

    html = (aa_study["work"] / "aastudy" / "dashboard.html").read_text()
    traces = [int(n) for n in re.findall(r'data-panel="certification_gap" data-traces="(\d+)"', html)]
    assert len(traces) == 2, traces  # one figure per certificate in the attack's norm: ibp and crown
    assert all(n >= 3 for n in traces)  # per trial: AutoAttack, certified (the gap as a bar up to AutoAttack), PGD
    # measured at the grid radii only: markers, the gap a one-sided bar from certified up to AutoAttack
    # (it was a band shaded between lines, which drew values between the radii; issue 31)
    flat = html.replace(" ", "")
    assert "certification gap: crown vs AutoAttack (linf)" in html and '"error_y":{"array":' in flat
    gap_sections = [part for part in flat.split("<section") if 'data-panel="certification_gap"' in part]
    assert len(gap_sections) == 2 and not any('"fill":"tonexty"' in p or '"mode":"lines' in p for p in gap_sections)
