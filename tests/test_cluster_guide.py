"""The README's cluster guide, done for real on one machine (issue: watch and trust, item 4): a
head and a worker started with `ray start` and a token, a study launched onto them with
`--address` and `--storage`, a driver without the token refused in one line (exit 2) leaving no
folder and no MLflow run behind, and `deploy/stop_ray_cluster.sh` stopping exactly that cluster
while another one on the same machine keeps running."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import tiny_study

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray") or str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids(pattern: str) -> set[int]:
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout.split()
    return {int(p) for p in found}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


class Cluster:
    """Nodes started as the guide says: a token file (0600) every node and driver reads, a head
    without CPUs for trials, workers joining it, one temporary folder per cluster (short: Ray's
    socket paths must fit in 107 bytes)."""

    def __init__(self, token: Path, workers: int) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
        self.port = _free_port()
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self._ray(
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num-cpus",
            "0",
            "--temp-dir",
            str(self.temp),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        )
        for _ in range(workers):
            self._ray(
                "start",
                "--address",
                f"127.0.0.1:{self.port}",
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "2",
                "--disable-usage-stats",
            )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ray(self, *args: str) -> None:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def pids(self) -> set[int]:
        return _pids(f"{self.temp}/")

    def stop(self) -> str:
        done = subprocess.run(
            ["bash", str(REPO / "deploy" / "stop_ray_cluster.sh"), str(self.temp), str(self.port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "cluster-token"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def clusters(token: Path) -> Iterator[tuple[Cluster, Cluster]]:
    made: list[Cluster] = []
    try:
        made.append(Cluster(token, workers=1))
        made.append(Cluster(token, workers=0))  # a second cluster on the machine: it must survive the first's stop
        yield made[0], made[1]
    finally:
        for cluster in made:
            cluster.stop()
            shutil.rmtree(cluster.temp, ignore_errors=True)


def test_the_cluster_guide_launches_refuses_a_missing_token_and_stops_exactly_its_cluster(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    ours, other = clusters
    study = tmp_path / "onprem.yaml"
    study.write_text(yaml.safe_dump(tiny_study("onprem", search={"num_trials": 2, "max_concurrent": 2, "seed": 0})))
    shared = tmp_path / "shared"  # every node's view of one folder (here: the same disk)

    def launch(env: dict[str, str], work: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "certstudy.cli", "launch", str(study), "--address", ours.address]
        argv += ["--storage", str(shared), "--workdir", str(work)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)

    no_token = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path / "home")  # no ~/.ray/auth_token to fall back on
    refused = launch(no_token, tmp_path / "refused")
    err = refused.stderr.strip()
    assert refused.returncode == 2 and "\n" not in err, (refused.returncode, refused.stdout[-1500:], err[-1500:])
    assert err.startswith("error: --address") and "RAY_AUTH_TOKEN_PATH" in err, err
    assert not (tmp_path / "refused").exists()  # no study folder, no .prev-*, no MLflow store or FAILED run

    done = launch(ours.env, tmp_path / "work")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "onprem: 2 completed, 0 pruned, 0 failed" in done.stdout, done.stdout[-2000:]
    assert any((shared / "onprem" / "ray").glob("trial_*")), list(shared.rglob("*"))[:20]  # checkpoints on --storage

    before = ours.pids()
    assert before and other.pids()
    children = {
        int(p)
        for pid in before
        for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    }
    print(ours.stop())
    assert not ours.pids(), ours.pids()
    left = {pid: _describe(pid) for pid in before | children if _alive(pid)}
    assert not left, left  # agents and workers too
    assert other.pids()  # the other cluster runs on
