"""Override files and ``--set``: a study's reduced budget ships beside it, is validated like the
file, and a bad override is one line and exit 2 with nothing started. Also the MNIST study files
(both budgets) validate, the Gaussian-noise metric and GloRo's TRADES ramp."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from certstudy.cli import main
from certstudy.methods.gloro import GloroParams, scheduled_eps, scheduled_lambda
from certstudy.study.spec.loading import load_documents
from certstudy.study.spec.overrides import read_overrides
from certstudy.trial.robustness import noise_accuracy
from conftest import REPO, tiny_study

MNIST = REPO / "trials" / "mnist"


def _write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_an_override_file_replaces_dotted_keys_and_whole_sections(tmp_path: Path) -> None:
    study = _write(tmp_path, "s.yaml", tiny_study("base"))
    over = _write(
        tmp_path,
        "s.cpu.yaml",
        "name: base_cpu\ntraining.epochs: 1\nmethods:\n  - name: erm\nsearch.num_trials: 2\n",
    )
    spec = load_documents(study, read_overrides(over))[0]
    assert spec.name == "base_cpu" and spec.training.epochs == 1
    assert [m.name for m in spec.method_entries] == ["erm"]  # the list was replaced, not merged
    assert spec.search.num_trials == 2 and spec.evaluation.val_subset == 128  # the rest is the file's


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "training.epochs=0"], "training.epochs: got 0"),
        (["--set", "training.epochs"], "--set: got 'training.epochs'; expected KEY=VALUE"),
        (["--set", "training..epochs=3"], "keys are dotted field names"),
        (["--set", "training.epochs=[1"], "the value is not valid YAML"),
        (["--index", "2"], "--index: got 2; the file holds 1 document(s)"),
    ],
)
def test_a_bad_override_is_one_line_exit_2_and_starts_nothing(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _write(tmp_path, "s.yaml", tiny_study("bad"))
    work = tmp_path / "work"
    assert main(["launch", str(study), "--workdir", str(work), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not work.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "an override file is a non-empty mapping"), ("a: [1\n", "not valid YAML"), ("{}\n", "non-empty")],
)
def test_a_bad_override_file_is_refused(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _write(tmp_path, "s.yaml", tiny_study("bad"))
    over = _write(tmp_path, "o.yaml", text)
    assert main(["validate", str(study), "--overrides", str(over)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(over) in err and message in err, err


def test_set_values_are_yaml_and_come_after_the_override_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _write(tmp_path, "s.yaml", tiny_study("order"))
    over = _write(tmp_path, "o.yaml", "training.epochs: 1\nname: from_file\n")
    assert main(["validate", str(study), "--overrides", str(over), "--set", "name=from_set"]) == 0
    assert "study 'from_set'" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(MNIST.glob("*.yaml")), ids=lambda p: p.name)
def test_every_mnist_study_and_its_cpu_budget_validate(path: Path) -> None:
    # <study>.cpu.yaml, or <study>.<part>.cpu.yaml where a study's CPU budget is split over several runs
    if path.name.endswith(".cpu.yaml"):
        study = path.with_name(path.name.split(".")[0] + ".yaml")
        assert study.exists(), f"{path.name} has no study file beside it"
        docs = load_documents(study, read_overrides(path))
        assert docs[0].name.endswith("_cpu") and docs[0].dataset.name == "mnist"
    else:
        assert list(MNIST.glob(f"{path.stem}.*cpu.yaml")), f"{path.name} ships without a CPU budget"
        for spec in load_documents(path):
            assert spec.dataset.name == "mnist" and not spec.name.endswith("_cpu")


def test_noise_accuracy_is_seeded_clipped_and_exact_for_a_constant_model() -> None:
    x = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))  # fixed points: the draws alone vary
    y = torch.zeros(50, dtype=torch.long)  # accuracy = the share of draws that leave the first pixel below 1

    class Pixel(nn.Module):  # predicts class 2 when the first pixel is saturated at 1 after clipping
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            hit = (z[:, 0, 0, 0] >= 1.0).float()
            return torch.stack([1 - hit, torch.zeros_like(hit), 2 * hit], dim=1)

    model = Pixel()
    a = noise_accuracy(model, x, y, [0.1, 5.0], (0.0, 1.0), batch_size=7, seed=3)
    b = noise_accuracy(model, x, y, [0.1, 5.0], (0.0, 1.0), batch_size=50, seed=3)
    assert a == b  # the batch size does not change the draws' outcome
    assert set(a) == {"test/noise_acc_s0.1", "test/noise_acc_s5"}
    # sigma 0.1 saturates few first pixels, sigma 5 about half: the prediction is no longer constant
    assert a["test/noise_acc_s0.1"] >= 0.9 and 0.3 <= a["test/noise_acc_s5"] <= a["test/noise_acc_s0.1"] - 0.2
    assert noise_accuracy(model, x, y, [], (0.0, 1.0), batch_size=7, seed=3) == {}


def test_gloro_trades_weight_ramps_with_eps_and_is_fixed_without_a_start() -> None:
    p = GloroParams(eps=0.3, train_eps_factor=1.5, loss="trades", **{"lambda": 2.0}, lambda_start=0.0)
    weights = [scheduled_lambda(p, e, 60) for e in range(60)]
    assert weights[0] == pytest.approx(2.0 / 30) and weights[29] == pytest.approx(2.0) and weights[-1] == 2.0
    assert all(a <= b for a, b in zip(weights, weights[1:]))
    assert scheduled_eps(p, 29, 60) == pytest.approx(0.45)
    fixed = GloroParams(eps=0.3, **{"lambda": 1.5})
    assert {scheduled_lambda(fixed, e, 60) for e in range(60)} == {1.5}
