"""``certstudy ui`` beyond loopback (issue: hardening, item 2): a warning, an explicit Host allow-list
passed to MLflow's host check, and a request from another address that claims ``Host: localhost``
refused. A real MLflow UI process, real HTTP requests from a non-loopback address of this machine."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from certstudy.cli import main

pytestmark = pytest.mark.integration


def _own_address() -> str:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    pytest.skip("this machine has no non-loopback IPv4 address to serve from")


def _free(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("allowed", [None, "*", "localhost:*", "*:*"])
def test_beyond_loopback_the_ui_needs_an_allow_list_without_loopback_names(
    allowed: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ui", "--host", "0.0.0.0", "--workdir", str(tmp_path / "w")]
    assert main(argv + (["--allowed-hosts", allowed] if allowed else [])) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allowed-hosts" in err, err
    assert not (tmp_path / "w").exists()


def test_a_spoofed_localhost_host_header_from_another_address_is_refused(tmp_path: Path) -> None:
    ip = _own_address()
    port = _free(ip)
    proc = subprocess.Popen(
        [sys.executable, "-m", "certstudy.cli", "ui", "--host", ip, "--port", str(port)]
        + ["--allowed-hosts", f"{ip}:{port}", "--workdir", str(tmp_path / "w")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def get(host_header: str) -> int:
        conn = http.client.HTTPConnection(ip, port, timeout=10, source_address=(ip, 0))  # from a non-loopback address
        conn.putrequest("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=1", skip_host=True)
        conn.putheader("Host", host_header)
        conn.endheaders()
        status = conn.getresponse().status
        conn.close()
        return status

    try:
        deadline = time.time() + 120
        while True:
            try:
                status = get(f"{ip}:{port}")
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.5)
        assert status == 200
        for spoofed in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            assert get(spoofed) == 403, spoofed
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "warning: the MLflow UI has no authentication" in err, err
