"""``certstudy ui`` beyond loopback (issue: hardening, item 2): a warning, an explicit Host allow-list
passed to MLflow's host check, and a request from another address that claims ``Host: localhost``
refused. Round two, item 3: allowed hosts are parsed as names and addresses, never patterns, so
none of the loopback spellings that widened the check (``[::1]``, ``localhost.``, ``127.0.0.2``,
``*.localhost``, ...) is accepted as an entry or answered as a header; ``*`` is refused on loopback
too; ``--host ::1`` serves. A real MLflow UI process, real HTTP requests from a non-loopback
address of this machine."""

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


BYPASSES = [
    "[::1]",
    "[::1]:5000",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "localhost.",
    "LOCALHOST",
    "localhost:1",
    "a.localhost",
    "127.0.0.2",
    "127.0.0.1.",
    "0.0.0.0",
    "[::]",
    "127.1",
    "2130706433",
    "*.localhost",
    "[a-z]*",
]


@pytest.mark.parametrize("allowed", [None, "*", "localhost:*", "*:*", *BYPASSES, "myhost.example,", "a b"])
def test_beyond_loopback_the_ui_needs_an_allow_list_without_loopback_names(
    allowed: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ui", "--host", "0.0.0.0", "--workdir", str(tmp_path / "w")]
    assert main(argv + (["--allowed-hosts", allowed] if allowed else [])) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allowed-hosts" in err, err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("allowed", ["*", "*:*", "local[h]ost", "?"])
def test_no_pattern_is_passed_on_even_on_loopback(
    allowed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ui", "--allowed-hosts", allowed, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--allowed-hosts" in err and ("pattern" in err or "brackets" in err), err
    assert not (tmp_path / "w").exists()


def _get(ip: str, port: int, host_header: str, source: str | None = None) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    conn = http.client.HTTPConnection(ip, port, timeout=10, source_address=(source, 0) if source else None)
    if family == socket.AF_INET6:
        conn.sock = socket.create_connection((ip, port), timeout=10)
    conn.putrequest("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=1", skip_host=True)
    conn.putheader("Host", host_header)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def _serve(argv: list[str], ip: str, port: int, source: str | None, wait_s: float = 120) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "certstudy.cli", "ui", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    host = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    deadline = time.time() + wait_s
    while True:
        try:
            assert _get(ip, port, host, source) == 200
            return proc
        except OSError:
            assert time.time() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.5)


def test_the_loopback_spellings_get_403_from_a_live_ui_beyond_loopback(tmp_path: Path) -> None:
    ip = _own_address()
    port = _free(ip)
    argv = ["--host", ip, "--port", str(port), "--allowed-hosts", ip, "--workdir", str(tmp_path / "w")]
    proc = _serve(argv, ip, port, ip)
    try:
        assert _get(ip, port, ip, ip) == 200  # the entry without a port admits the bare address too
        for spoofed in [*BYPASSES, f"localhost.:{port}", f"127.0.0.2:{port}", f"[::1]:{port}", f"{ip}.:{port}"]:
            assert _get(ip, port, spoofed, ip) == 403, spoofed
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_the_ui_serves_on_ipv6_loopback_and_answers_only_its_own_names(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    proc = _serve(["--host", "::1", "--port", str(port), "--workdir", str(tmp_path / "w")], "::1", port, None)
    try:
        assert _get("::1", port, f"localhost:{port}") == 200
        for foreign in ("evil.example", f"evil.example:{port}", "localhost.", f"127.0.0.2:{port}"):
            assert _get("::1", port, foreign) == 403, foreign
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert f"http://[::1]:{port}" in out, out


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
        return _get(ip, port, host_header, ip)  # from a non-loopback address

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
