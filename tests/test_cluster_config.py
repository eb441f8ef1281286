"""ray_cluster.yaml passes Ray's own validation (the path `ray up` takes, minus the cloud calls), and
known-bad variants are rejected with Ray's errors."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO

CONFIG = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def validate(config: dict[str, Any]) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


def test_the_cluster_file_validates() -> None:
    validate(CONFIG)
    assert CONFIG["head_node_type"] == "head" and CONFIG["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert CONFIG["available_node_types"]["gpu_worker"]["min_workers"] == 0  # GPU workers autoscale from zero


def test_servers_stay_off_public_interfaces_and_token_auth_stays_on() -> None:
    head = "\n".join(CONFIG["head_start_ray_commands"])
    assert "0.0.0.0" not in head
    assert "--dashboard-host=127.0.0.1" in head and "mlflow server" in head and "--host $(hostname -I" in head
    for cmd in CONFIG["head_start_ray_commands"] + CONFIG["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    assert any("pip install -e" in c and "certstudy" in c for c in CONFIG["setup_commands"])


def test_records_go_to_postgresql_on_the_private_address_with_no_password_in_the_file() -> None:
    text = (REPO / "ray_cluster.yaml").read_text()
    assert "bash ~/certstudy/deploy/head_postgres.sh" in CONFIG["head_setup_commands"]
    assert CONFIG["file_mounts"]["~/.certstudy/pg_password"] == "~/.certstudy/pg_password"
    server = next(c for c in CONFIG["head_start_ray_commands"] if "mlflow server" in c)
    assert "--backend-store-uri postgresql://certstudy@$(hostname -I" in server and "sqlite" not in server
    assert "password" not in server.lower() and ":5432" in server
    assert "--optuna-storage postgresql://certstudy@$IP:5432/optuna" in text
    script = (REPO / "deploy" / "head_postgres.sh").read_text()
    assert "listen_addresses = '$private_ip'" in script and "0.0.0.0" not in script and "'*'" not in script
    assert "scram-sha-256" in script and "| sudo -u postgres psql" in script  # password on stdin, not argv
    subprocess.run(["bash", "-n", str(REPO / "deploy" / "head_postgres.sh")], check=True)


def _set(path: list[str], value: Any) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        node = c
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(path: list[str]) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        node = c
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (
            _set(["available_node_types", "gpu_worker", "resources", "GPU"], 0.5),
            ValidationError,
            "0.5 is not of type 'integer'",
        ),
        (_set(["max_worker"], 3), ValidationError, "Additional properties are not allowed"),
        (
            _delete(["available_node_types", "gpu_worker", "resources"]),
            ValidationError,
            "'resources' is a required property",
        ),
        (_set(["head_node_type"], "nope"), ValueError, "head_node_type"),
    ],
)
def test_known_bad_variants_are_rejected(mutate: Callable[[dict], None], error: type[Exception], message: str) -> None:
    bad = copy.deepcopy(CONFIG)
    mutate(bad)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(bad)
