"""Records that hold up when several drivers share them (issue: overhead and storage, part 2): a real
PostgreSQL server (a throwaway cluster made with ``initdb`` and started with ``pg_ctl`` on a free
127.0.0.1 port, under a temporary folder removed afterwards), a real MLflow server on it, and two
studies launched at the same time into both: MLflow through the server, Optuna straight into
PostgreSQL (``launch --optuna-storage``). Passwords live in a password file, never in a URL."""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from certstudy.cli import main
from conftest import REPO, tiny_study

pytestmark = pytest.mark.integration

ROLE = "certstudy"


def _pg_bin(tool: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's versioned folder."""
    found = shutil.which(tool) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True)), None)
    if found is None:
        pytest.skip(f"PostgreSQL's {tool} is not installed (.ci/run installs Debian's postgresql package)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as Debian's ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class Servers:
    pg_port: int
    mlflow_uri: str
    pgpass: Path

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.pg_port}/{database}"


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """PostgreSQL set up by the cluster's own script (``deploy/postgres_setup.sql``: role
    ``certstudy`` with a password, databases ``mlflow`` and ``optuna``) and an MLflow server on it,
    both on 127.0.0.1; everything under temporary folders removed afterwards."""
    initdb, pg_ctl, psql = _pg_bin("initdb"), _pg_bin("pg_ctl"), shutil.which("psql") or _pg_bin("psql")
    base = Path(tempfile.mkdtemp(prefix="certstudy-pg-"))
    data, log = base / "data", base / "server.log"
    superuser = "postgres" if os.geteuid() == 0 else getpass.getuser()  # peer authentication on the socket
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    base.chmod(0o700)
    port = _free_port()
    password = os.urandom(12).hex()
    pgpass = Path(tempfile.mkdtemp(prefix="certstudy-pgpass-")) / "pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:{ROLE}:{password}\n")
    pgpass.chmod(0o600)
    env = {**os.environ, "PGPASSFILE": str(pgpass)}
    mlflow_proc = None
    subprocess.run(
        _as_server_user(
            [initdb, "-D", str(data), "-U", superuser, "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_server_user(
                [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-o", f"-h 127.0.0.1 -p {port} -k {base}", "start"]
            ),
            check=True,
            capture_output=True,
        )
        setup = f"\\set pw '{password}'\n" + (REPO / "deploy" / "postgres_setup.sql").read_text()
        for _ in range(2):  # the script is idempotent: a second run changes nothing and fails nothing
            subprocess.run(
                _as_server_user([psql, "-q", "-h", str(base), "-p", str(port), "-U", superuser, "-d", "postgres"]),
                input=setup,
                text=True,
                check=True,
                capture_output=True,
            )
        mlflow_port = _free_port()
        mlflow_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"postgresql://{ROLE}@127.0.0.1:{port}/mlflow",
                "--artifacts-destination",
                str(pgpass.parent / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(pgpass.parent / "mlflow.log").open("w"),
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        uri = f"http://127.0.0.1:{mlflow_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert mlflow_proc.poll() is None, (pgpass.parent / "mlflow.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer /health within 120 s"
            time.sleep(0.5)
        yield Servers(port, uri, pgpass)
    finally:
        if mlflow_proc is not None:
            mlflow_proc.terminate()
            try:
                mlflow_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                mlflow_proc.kill()
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(pgpass.parent, ignore_errors=True)


def _study(name: str) -> dict:
    return tiny_study(
        name, training={"epochs": 2, "batch_size": 128}, search={"num_trials": 2, "max_concurrent": 1, "seed": 1}
    )


def _launch(path: Path, work: Path, servers: Servers, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "certstudy.cli",
            "launch",
            str(path),
            "--workdir",
            str(work),
            "--tracking-uri",
            servers.mlflow_uri,
            "--optuna-storage",
            servers.url("optuna"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PGPASSFILE": str(servers.pgpass)},
    )


def test_two_studies_at_once_into_one_mlflow_server_and_optuna_on_postgresql(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ("pg-a", "pg-b")
    procs = []
    for name in names:  # two researchers: two work directories, one MLflow server, one Optuna database
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_study(name)))
        procs.append(_launch(path, tmp_path / f"work-{name}", servers))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out
        assert "locked" not in out.lower() and "Traceback" not in out, out

    client = MlflowClient(servers.mlflow_uri)
    for name in names:
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", name
        assert len(children) == 2, name
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}, name
        assert not [r for r in runs if r.info.status == "RUNNING"], name
        assert not (tmp_path / f"work-{name}" / "mlflow.db").exists()  # nothing went to a local store

    monkeypatch.setenv("PGPASSFILE", str(servers.pgpass))
    storage = optuna.storages.RDBStorage(servers.url("optuna"))
    try:
        for name in names:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, name
            work = tmp_path / f"work-{name}"
            assert not (work / name / "optuna.db").exists()
            # status and export find both stores from the study's record, with no store named again
            assert main(["status", name, "--workdir", str(work)]) == 0
            out = capsys.readouterr().out
            assert "2 completed" in out, out
            assert main(["export", name, "--workdir", str(work)]) == 0
            exported = yaml.safe_load((work / name / "best.yaml").read_text())
            assert exported["provenance"]["study"] == name
            assert main(["dashboard", name, "--workdir", str(work), "--no-mlflow"]) == 0
            assert (work / name / "dashboard.html").is_file()
    finally:
        storage.engine.dispose()


def test_a_study_name_the_shared_storage_already_holds_is_refused(
    servers: Servers, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSFILE", str(servers.pgpass))
    optuna.create_study(study_name="pg-taken", storage=servers.url("optuna"))
    path, work = tmp_path / "taken.yaml", tmp_path / "work"
    path.write_text(yaml.safe_dump(_study("pg-taken")))
    argv = ["launch", str(path), "--workdir", str(work), "--tracking-uri", servers.mlflow_uri]
    assert main([*argv, "--optuna-storage", servers.url("optuna")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds a study named 'pg-taken'" in err and "--overwrite" in err, err
    assert not (work / "pg-taken").exists()  # refused before the study folder was made
    assert "pg-taken" in optuna.get_all_study_names(servers.url("optuna"))  # and nothing deleted


def test_an_unreachable_optuna_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_study("pg-nowhere")))
    url = f"postgresql://{ROLE}@127.0.0.1:{_free_port()}/optuna"
    assert main(["launch", str(path), "--workdir", str(tmp_path / "work"), "--optuna-storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err and err.startswith(f"error: --optuna-storage: {url} does not answer") and "Traceback" not in err
    ), err
    assert not (tmp_path / "work").exists()  # checked before anything started


@pytest.mark.parametrize("flag", ["--optuna-storage", "--tracking-uri"])
def test_a_password_in_a_store_url_is_refused_and_never_printed(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_study("pw")))
    url = "postgresql://certstudy:hunter2secret@db.example:5432/optuna"
    assert main(["launch", str(path), "--workdir", str(tmp_path / "work"), flag, url]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err and "password file" in err and "~/.pgpass" in err, err
    assert "hunter2secret" not in err and "certstudy:***@db.example" in err, err
    assert not (tmp_path / "work").exists()


PASSWORD_FORMS = [
    "postgresql://{role}:{pw}@{host}/optuna",
    "postgresql://{role}:{pw}/x@{host}/optuna",  # urlsplit ends userinfo at '/', SQLAlchemy does not
    "postgresql://{role}:{pw}#x@{host}/optuna",
    "postgresql://{role}:{pw}?x@{host}/optuna",
    "postgresql://{role}@{host}/optuna?password={pw}",  # a libpq connection parameter: it would log in
    "postgresql://{role}@{host}/optuna?sslmode=prefer&PassWord={pw}",
    "postgresql://{role}@{host}/optuna#{pw}",
    "postgresql+psycopg2://{role}:{pw}@{host}/optuna",
]


@pytest.mark.parametrize("form", PASSWORD_FORMS)
@pytest.mark.parametrize("flag", ["--optuna-storage", "--tracking-uri"])
def test_the_server_password_in_any_url_syntax_is_refused_and_recorded_nowhere(
    form: str, flag: str, servers: Servers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Round two, item 4: the real server's real password, in each syntax some parser reads it from."""
    password = servers.pgpass.read_text().strip().rsplit(":", 1)[1]
    url = form.format(role=ROLE, pw=password, host=f"127.0.0.1:{servers.pg_port}")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_study("pw-forms")))
    work = tmp_path / "work"
    assert main(["launch", str(path), "--workdir", str(work), flag, url]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err and "password file" in err, err
    assert password not in err, err
    assert not work.exists()  # so no lock file, stores.json or record holds it
