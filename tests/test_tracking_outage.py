"""The MLflow server goes away mid-study (issue: hardening, item 7): the driver warns while it
buffers, keeps training, and delivers everything when the server returns; past the study's
``tracking.unreachable_wait_s`` it stops with one line, and ``resume`` back-fills what was not
recorded. A real MLflow server process, killed and restarted on the same port and database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from certstudy.cli import main
from conftest import tiny_study
from trial_hooks import hold_env

pytestmark = pytest.mark.integration
EPOCHS = 4


class Server:
    """``mlflow server`` on a fixed port and sqlite file, stoppable and restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'm.db'}"]
            + ["--default-artifact-root", str(self.root / "art"), "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--workers", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.time() < deadline and self.proc.poll() is None, "mlflow server did not start"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path: Path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def _launch_held(tmp_path: Path, server: Server, wait_s: float) -> tuple[subprocess.Popen[str], Path, Path]:
    spec = tiny_study(
        "outage",
        training={"epochs": EPOCHS, "batch_size": 64},
        search={"num_trials": 2, "max_concurrent": 2, "seed": 0},
        tracking={"unreachable_wait_s": wait_s},
    )
    path, hold, log = tmp_path / "outage.yaml", tmp_path / "hold", tmp_path / "driver.log"
    path.write_text(yaml.safe_dump(spec))
    hold.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "certstudy.cli", "launch", str(path), "--workdir", str(tmp_path / "work")]
        + ["--tracking-uri", server.uri],
        stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **hold_env(hold, 0, 1)},
    )
    deadline = time.time() + 180
    while len(list(hold.glob("held-*"))) < 2:  # both trials have reported two epochs
        assert time.time() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.2)
    return proc, hold, log


def _wait_for(log: Path, text: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while text not in log.read_text():
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _check_every_epoch_once(server: Server) -> None:
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("outage")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("certstudy.role") == "trial"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for run in children:
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert sorted(steps) == list(range(EPOCHS)) and set(steps.values()) == {1}, steps


def test_an_outage_is_buffered_with_a_warning_and_delivered_when_the_server_returns(
    tmp_path: Path, server: Server
) -> None:
    proc, hold, log = _launch_held(tmp_path, server, wait_s=300)
    try:
        server.stop()
        (hold / "release").touch()  # the trials go on training while the server is down
        _wait_for(log, "warning: tracking server unreachable", proc)
        assert proc.poll() is None  # still running
        server.start()
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "results buffered, retrying" in log.read_text() and "reachable again" in log.read_text()
    _check_every_epoch_once(server)


def test_past_the_wait_the_study_stops_with_one_line_and_resume_backfills(
    tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, hold, log = _launch_held(tmp_path, server, wait_s=8)
    try:
        server.stop()
        (hold / "release").touch()
        assert proc.wait(timeout=300) == 1, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("error: tracking server") and "unreachable for 8 s" in last, last
    assert "certstudy resume outage" in last and "Traceback" not in log.read_text()
    server.start()
    assert main(["resume", "outage", "--workdir", str(tmp_path / "work")]) == 0
    _check_every_epoch_once(server)
