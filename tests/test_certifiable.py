"""``certstudy validate`` refuses a model its certifiers or methods cannot walk, in one line naming the
model, the certifier or method, and the layer, before anything starts; the allowed pairs validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from certstudy.cli import main


def _study(
    model: str,
    params: dict | None = None,
    *,
    method: str = "erm",
    certifiers: tuple[str, ...] = (),
    dataset: str = "mnist",
    search: dict | None = None,
) -> dict:
    return {
        "name": "cert",
        "dataset": {"name": dataset},
        "model": {"name": model, "params": params or {}, **({"search": search} if search else {})},
        "method": {"name": method},
        "evaluation": {"certifiers": [{"name": c} for c in certifiers]},
    }


REFUSED = [
    (
        "residual-crown",
        _study("preact_resnet18", certifiers=("crown",)),
        "evaluation.certifiers[0].name",
        "model 'preact_resnet18' cannot be certified by certifier 'crown': layer PreActResNetModule",
    ),
    (
        "residual-ibp",
        _study("wide_resnet", {"depth": 16, "widen_factor": 2}, certifiers=("ibp",)),
        "evaluation.certifiers[0].name",
        "model 'wide_resnet' cannot be certified by certifier 'ibp': layer WideResNetModule",
    ),
    (
        "residual-lipschitz",
        _study("preact_resnet18", {"normalize": True}, method="smoothing", certifiers=("smoothing", "lipschitz")),
        "evaluation.certifiers[1].name",
        "certifier 'lipschitz': layer '1' (PreActResNetModule)",
    ),
    (
        "residual-gloro",
        _study("preact_resnet18", method="gloro"),
        "method.name",
        "model 'preact_resnet18' cannot be trained by method 'gloro'",
    ),
    (
        "tanh-crown",
        _study("mlp", {"activation": "tanh"}, certifiers=("crown",), dataset="digits"),
        "evaluation.certifiers[0].name",
        "layer '2' (Tanh)",
    ),
    (
        "searched-tanh-ibp",
        _study(
            "mlp",
            certifiers=("ibp",),
            dataset="digits",
            search={"activation": {"type": "categorical", "choices": ["relu", "tanh"]}},
        ),
        "evaluation.certifiers[0].name",
        "(Tanh)",
    ),
    (
        "gelu-crown-ibp-training",
        _study("cnn", {"activation": "gelu"}, method="crown_ibp", dataset="digits"),
        "method.name",
        "cannot be trained by method 'crown_ibp': layer '1' (GELU)",
    ),
    (
        "gap-weight-minmax",
        {
            **_study("gloro_2c2f", method="crown_ibp"),
            "method": {"name": "crown_ibp", "params": {"gap_weight": 0.1}},
        },
        "method.name",
        "cannot be trained by method 'crown_ibp': layer",
    ),
    (
        "feasibility-weight-maxpool",
        {
            **_study("mnist_cnn", method="crown_ibp"),
            "method": {"name": "crown_ibp", "params": {"feasibility_weight": 0.1}},
        },
        "method.name",
        "(MaxPool2d) has no relaxation replay",
    ),
    (
        "too-small-input",
        _study("lenet", dataset="digits", certifiers=("ibp",)),
        "model.name",
        "does not fit an input of size",
    ),
]


@pytest.mark.parametrize("case_id,data,field,fragment", REFUSED, ids=[c[0] for c in REFUSED])
def test_uncertifiable_model_is_refused_at_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case_id: str, data: dict, field: str, fragment: str
) -> None:
    path = tmp_path / f"{case_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{path}: {field}: " in err and fragment in err, err


ALLOWED = [
    _study("cnn7", method="crown_ibp", certifiers=("ibp", "crown", "lipschitz")),
    _study("dm_large", {"normalize": True}, method="crown_ibp", certifiers=("ibp", "crown")),
    _study("gloro_4c3f", method="gloro", certifiers=("lipschitz", "ibp", "crown")),
    _study("gloro_8c2f", {"activation": "relu"}, method="gloro", certifiers=("lipschitz",), dataset="cifar10"),
    _study("lenet", method="smoothing", certifiers=("smoothing", "ibp", "lipschitz", "crown")),
    _study("mnist_cnn", method="crown_ibp", certifiers=("crown",)),
    {**_study("dm_small", method="crown_ibp"), "method": {"name": "crown_ibp", "params": {"gap_weight": 0.1}}},
    _study("mnist_cnn", method="hr", certifiers=("ibp", "lipschitz")),
    _study("preact_resnet18", method="adversarial", dataset="cifar10"),
    _study("preact_resnet18", {"normalize": True}, method="smoothing", certifiers=("smoothing",), dataset="cifar10"),
    _study("wide_resnet", {"depth": 28}, method="smoothing", certifiers=("smoothing",), dataset="cifar10"),
]


def test_certifiable_pairs_and_smoothing_on_any_model_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for i, data in enumerate(ALLOWED):
        paths.append(tmp_path / f"ok{i}.yaml")
        paths[-1].write_text(yaml.safe_dump({**data, "name": f"ok{i}"}))
    assert main(["validate", "--no-preflight", *map(str, paths)]) == 0, capsys.readouterr().err


# The README's table of models x certifiers (and the training methods that bound the network).
TABLE = {
    ("mlp", "relu"): "lipschitz ibp crown gloro crown_ibp",
    ("mlp", "tanh"): "",
    ("cnn", "relu"): "lipschitz ibp crown gloro crown_ibp",
    ("cnn", "gelu"): "",
    ("dm_small", None): "lipschitz ibp crown gloro crown_ibp",
    ("dm_medium", None): "lipschitz ibp crown gloro crown_ibp",
    ("dm_large", None): "lipschitz ibp crown gloro crown_ibp",
    ("cnn7", None): "lipschitz ibp crown gloro crown_ibp",
    ("gloro_2c2f", "minmax"): "lipschitz ibp crown gloro crown_ibp",
    ("gloro_4c3f", "relu"): "lipschitz ibp crown gloro crown_ibp",
    ("gloro_6c2f", "minmax"): "lipschitz ibp crown gloro crown_ibp",
    ("gloro_8c2f", "minmax"): "lipschitz ibp crown gloro crown_ibp",
    ("lenet", None): "lipschitz ibp crown gloro crown_ibp",
    ("mnist_cnn", None): "lipschitz ibp crown gloro crown_ibp",
    ("preact_resnet18", None): "",
    ("wide_resnet", None): "",
}


@pytest.mark.parametrize("model,activation", list(TABLE), ids=[f"{m}-{a}" for m, a in TABLE])
def test_readme_table_of_certifiable_models(model: str, activation: str | None) -> None:
    import torch

    from certstudy.certify import CERTIFIERS
    from certstudy.certify.network import UnsupportedLayer, layers_of
    from certstudy.methods import METHODS
    from certstudy.models import MODELS

    factory = MODELS.get(model)
    params = factory.Params(
        **({"activation": activation} if activation else {}),
        **({"depth": 16, "widen_factor": 2} if model == "wide_resnet" else {}),
    )
    with torch.device("meta"):
        net = factory.build(params, (1, 28, 28), 10)
    needs = {
        "lipschitz": CERTIFIERS.get("lipschitz").needs,
        "ibp": CERTIFIERS.get("ibp").needs,
        "crown": CERTIFIERS.get("crown").needs,
        "gloro": METHODS.get("gloro").needs,
        "crown_ibp": METHODS.get("crown_ibp").needs,
    }
    accepted = set()
    for name, need in needs.items():
        try:
            layers_of(net, (1, 28, 28), need)
            accepted.add(name)
        except UnsupportedLayer:
            pass
    assert accepted == set(TABLE[(model, activation)].split())
