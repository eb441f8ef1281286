"""A local study's Ray is local (issue: hardening, item 3): its own Ray, never a cluster found on the
machine, every listening socket on loopback, a 0600 token file in the work directory; and an
unreachable ``--address`` gives up within 30 s. Real Ray processes, real sockets."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from certstudy.cli import main
from conftest import tiny_study, wait_until_held
from trial_hooks import hold_env

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).parent / "ray")  # the ray CLI of this environment


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _listening(pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of ``pid`` and its descendants."""
    root = psutil.Process(pid)
    procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    out = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            try:
                name = procs[conn.pid].name()
            except psutil.Error:
                name = "?"
            out.append((conn.laddr.ip, conn.laddr.port, name))
    return out


@pytest.fixture
def foreign_cluster():
    """A Ray head started on this machine by someone else (all interfaces), advertised to
    ``ray.init()`` as the current cluster and through ``$RAY_ADDRESS``. Stopped by killing the
    processes of its own temp dir only (``ray stop`` would kill every Ray on the machine)."""
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="rayf", dir="/tmp")  # short: Ray puts unix sockets under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [RAY, "start", "--head", "--port=0", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"ray start --head failed: {started.stderr[-500:]}")
        address = next(
            (w.split("=", 1)[1].strip("'\"") for w in started.stdout.split() if w.startswith("--address=")), "auto"
        )
        yield address
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if any(temp in part for part in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_local_study_starts_its_own_ray_on_loopback_only(tmp_path: Path, foreign_cluster: str) -> None:
    path, work, hold = tmp_path / "local.yaml", tmp_path / "work", tmp_path / "hold"
    study = tiny_study("local", search={"num_trials": 2, "max_concurrent": 2, "seed": 0})
    path.write_text(yaml.safe_dump(study))
    hold.mkdir()
    home_token = Path.home() / ".ray" / "auth_token"
    before = home_token.stat() if home_token.exists() else None
    env = {**os.environ, **hold_env(hold, 0, 0), "RAY_ADDRESS": foreign_cluster}
    proc = subprocess.Popen(
        [sys.executable, "-m", "certstudy.cli", "launch", str(path), "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_until_held(hold, 2, proc)  # both trials running, held after their first epoch
        sockets = _listening(proc.pid)
        names = {p.name() for p in psutil.Process(proc.pid).children(recursive=True)}
        (hold / "release").touch()
        out = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "gcs_server" in names and "raylet" in names  # its own Ray, not the cluster found on the machine
    assert len(sockets) >= 4, sockets  # GCS, raylet, workers, agents
    exposed = [s for s in sockets if not _loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    token = work / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    after = home_token.stat() if home_token.exists() else None
    assert (before is None and after is None) or (before and after and before.st_mtime == after.st_mtime)


def test_an_unreachable_address_gives_up_within_30_s_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("nowhere")))
    t = time.perf_counter()
    code = main(["launch", str(path), "--workdir", str(tmp_path / "w"), "--address", f"127.0.0.1:{port}"])
    elapsed = time.perf_counter() - t
    err = capsys.readouterr().err.strip()
    assert code == 1 and elapsed < 30, (code, elapsed)
    assert "\n" not in err and f"--address 127.0.0.1:{port}: no Ray cluster answers there" in err, err
