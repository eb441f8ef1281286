"""Scale-out on real multi-node Ray on one machine (ray.cluster_utils): preflight checks, fractional
GPUs on logical GPUs, and a worker node that dies mid-trial."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from certstudy.study.engine.preflight import PreflightError, check_resources, check_storage
from certstudy.study.engine.runner import launch
from certstudy.study.records.store_probe import StoreUnreachable, check_store
from certstudy.study.spec.loading import validate_spec
from certstudy.workdir import Workdir
from conftest import tiny_study

pytestmark = pytest.mark.integration


@pytest.fixture
def two_workers() -> Iterator[tuple[Cluster, list]]:
    """A head with no CPU (the driver's node) and two 1-CPU worker nodes."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_preflight_resources_and_tracking() -> None:
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 2.0}},
    ]
    check_resources(2, 0.25, nodes=nodes)
    check_resources(8, 1, nodes=nodes)
    with pytest.raises(PreflightError, match=r"cpu=4, gpu=0.5 and no node.*10.0.0.2 \(2 CPU, 0 GPU\)"):
        check_resources(4, 0.5, nodes=[nodes[1]])
    with pytest.raises(PreflightError, match="gpu=2"):
        check_resources(1, 2, nodes=nodes)

    port = _free_port()
    with pytest.raises(StoreUnreachable, match=f"tracking URI: http://127.0.0.1:{port} is unreachable"):
        check_store(f"http://127.0.0.1:{port}", "tracking URI")

    class Health(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(self.status if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_store(f"http://127.0.0.1:{server.server_port}", "tracking URI")
        Health.status = 503
        with pytest.raises(StoreUnreachable, match="answered /health with HTTP 503"):
            check_store(f"http://127.0.0.1:{server.server_port}", "tracking URI")
    finally:
        server.shutdown()
    check_store("sqlite:///whatever.db", "tracking URI")  # nothing to reach


def test_storage_check_reaches_every_node_and_a_local_launch_refuses_what_no_node_has(
    two_workers: tuple[Cluster, list], tmp_path: Path
) -> None:
    cluster, _ = two_workers
    ray.init(address=cluster.address)
    check_storage(str(tmp_path / "shared"))  # one machine: every node sees the same files
    assert not list((tmp_path / "shared").iterdir())  # the markers are cleaned up
    spec = validate_spec(tiny_study("too-big", resources={"cpu": 2}), "s.yaml")
    with pytest.raises(PreflightError, match="cpu=2"):
        launch(spec, Workdir(tmp_path / "work"), address=cluster.address, storage=str(tmp_path / "shared"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("too-big").experiment_id])
    assert [r.info.status for r in parent] == ["FAILED"]  # nothing is left RUNNING
    with pytest.raises(PreflightError, match="several nodes; give --storage"):
        launch(validate_spec(tiny_study("no-storage"), "s.yaml"), Workdir(tmp_path / "work2"), address=cluster.address)


def test_fractional_gpus_pack_four_trials_per_logical_gpu(tmp_path: Path) -> None:
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    try:
        spec = tiny_study(
            "quarter-gpus",
            resources={"cpu": 1, "gpu": 0.25},
            search={"num_trials": 4, "max_concurrent": 4, "seed": 0},
            training={"epochs": 6, "batch_size": 128},
        )
        outcome = launch(validate_spec(spec, "s.yaml"), Workdir(tmp_path / "work"))
    finally:
        ray.shutdown()
    assert outcome.counts["completed"] == 4
    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name("quarter-gpus").experiment_id])
        if r.data.tags.get("certstudy.role") == "trial"
    ]
    assert len(runs) == 4
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)  # all four ran at once on one GPU
    with pytest.raises(PreflightError, match="gpu=0.25"):  # and without a GPU they are refused, not left PENDING
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False)
        try:
            launch(validate_spec({**spec, "name": "no-gpu"}, "s.yaml"), Workdir(tmp_path / "work"))
        finally:
            ray.shutdown()


def test_a_trial_whose_node_dies_resumes_on_another_node_in_its_own_run(
    two_workers: tuple[Cluster, list], tmp_path: Path
) -> None:
    cluster, workers = two_workers
    # 30 epochs leave a wide kill window (both trials past their first checkpoint, neither within 4 epochs
    # of the end) even when the second trial starts several seconds after the first; 12 missed it ~1 run in 3
    epochs = 30
    spec = tiny_study(
        "node-loss",
        training={"epochs": epochs, "batch_size": 8},
        search={"num_trials": 2, "max_concurrent": 2, "seed": 0, "max_failures": 3},
        checkpoint={"every_epochs": 1},  # saves mid-trial (the default saves every 30 s): the kill waits for them
    )
    work = tmp_path / "work"
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    killed: dict[str, float] = {}

    def kill_a_worker_mid_trial() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:  # until both trials have checkpointed two epochs and are far from done
            time.sleep(0.2)
            trials = list((tmp_path / "shared" / "node-loss" / "ray").glob("trial_*"))
            done = [len(list(t.glob("checkpoint_*"))) for t in trials]
            latest = [max((int(c.name.split("_")[-1]) for c in t.glob("checkpoint_*")), default=-1) for t in trials]
            if len(trials) == 2 and min(done) >= 1 and min(latest) >= 1 and max(latest) < epochs - 4:
                cluster.remove_node(workers[0], allow_graceful=False)
                killed["at"] = time.time()
                return

    killer = threading.Thread(target=kill_a_worker_mid_trial, daemon=True)
    killer.start()
    outcome = launch(
        validate_spec(spec, "s.yaml"), Workdir(work), address=cluster.address, storage=str(tmp_path / "shared")
    )
    killer.join(timeout=5)
    assert "at" in killed, "the worker was not killed mid-trial"
    assert outcome.counts["completed"] == 2 and not outcome.interrupted
    runs = client.search_runs([client.get_experiment_by_name("node-loss").experiment_id])
    children = [r for r in runs if r.data.tags.get("certstudy.role") == "trial"]
    assert len(children) == 2 and len({r.data.tags["ray.trial_id"] for r in children}) == 2  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs)
    assert any(int(r.data.tags.get("certstudy.retries", "0")) >= 1 for r in children)
    for run in children:  # continuous epochs: no gap, no duplicate step
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(epochs)), steps
