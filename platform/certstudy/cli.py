"""``certstudy``: validate | launch | resume | status | export | dashboard | run | ui.

Every command takes ``--workdir`` (default ``./certstudy-runs`` or ``$CERTSTUDY_HOME``). Bad input
exits 2 with one line naming the file, the field, the value and what is allowed; nothing starts.
Heavy imports (Ray, MLflow, Optuna) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from certstudy import __version__
from certstudy.errors import ERROR_LINE_LIMIT, CertstudyError, collapse, disk_full_message, elide_middle
from certstudy.study.records.names import (
    FINISHED,
    PROV_BY,
    PROV_METRICS,
    PROV_OBJECTIVES,
    PROV_PARETO,
    PROV_RANK,
    PROV_RUN_ID,
    PROVENANCE,
)
from certstudy.workdir import NAME_PATTERN, Workdir

if TYPE_CHECKING:
    from certstudy.study.engine.ray_start import RayConnection
    from certstudy.study.engine.session import StudyOutcome
    from certstudy.study.spec.schema import StudySpec

# Off a terminal (CI logs, pipes) rich would wrap at 80 columns; tables read better wider.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True, soft_wrap=True)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow 3 and Ray send usage statistics to their vendors by default; a study sends nothing out.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overrides",
        type=Path,
        metavar="FILE",
        help="a YAML mapping of dotted keys to values (e.g. the CPU budget of a study, trials/mnist/*.cpu.yaml), "
        "applied to the study before validation",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one dotted key (VALUE read as YAML), after --overrides; repeatable",
    )


def _add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", help="work directory (default: $CERTSTUDY_HOME or ./certstudy-runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certstudy",
        description="Hyperparameter studies of certified-robust training (Ray Tune + Optuna + MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"certstudy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check study files without running anything")
    p.add_argument("files", nargs="+", type=Path)
    _add_workdir(p)
    _add_overrides(p)
    p.add_argument(
        "--address", help="check the trials' resources against this Ray cluster (default: against this machine)"
    )
    _add_preflight(p)

    p = sub.add_parser("launch", help="run a study: Ray Tune trials proposed by Optuna, tracked in MLflow")
    p.add_argument("file", type=Path)
    _add_workdir(p)
    _add_preflight(p)
    p.add_argument(
        "--address", help="join a running Ray cluster (e.g. 'auto' or HOST:PORT); default: start Ray locally"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite in the work directory); on a cluster, the MLflow server on the head",
    )
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="Optuna storage: a database URL such as postgresql://USER@HOST:PORT/DB, password in ~/.pgpass or "
        "$PGPASSFILE (default: sqlite in <workdir>/<study>); status, resume and export find it from the study's record",
    )
    p.add_argument(
        "--storage",
        help="Ray Tune storage shared by every node: a shared filesystem path or s3://... (default: "
        "<workdir>/<study>); required with several nodes",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: a trial request no current node satisfies is a warning, not an error",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete earlier results of a study of the same name (default: move them to <study>.prev-<time>)",
    )
    p.add_argument("--num-trials", type=int, help="override search.num_trials")
    p.add_argument("--index", type=int, default=1, help="which document of a multi-document file (1-based; default 1)")
    _add_overrides(p)
    p.add_argument("--verbose", action="store_true", help="show Ray's and the trials' own logs")

    p = sub.add_parser("resume", help="continue an interrupted study where it stopped")
    p.add_argument("study")
    _add_workdir(p)
    p.add_argument(
        "--address", help="join a running Ray cluster (e.g. 'auto' or HOST:PORT); default: start Ray locally"
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's and the trials' own logs")

    p = sub.add_parser("status", help="trials by state and the best so far, from the stored state (Ray is not started)")
    p.add_argument("study")
    _add_workdir(p)

    p = sub.add_parser("export", help="write the best configurations of a study as re-runnable study files")
    p.add_argument("study")
    _add_workdir(p)
    p.add_argument("--metric", help="rank by this metric (default: the study's first objective)")
    p.add_argument("--mode", choices=["min", "max"], help="default: the objective's mode, else max")
    p.add_argument("--top", type=int, default=1, help="how many configurations to write (default 1)")
    p.add_argument("--pareto", action="store_true", help="write the Pareto front of a multi-objective study")
    p.add_argument(
        "--trial", type=int, help="write this trial (its Optuna number), e.g. from the dashboard's top table"
    )
    p.add_argument("-o", "--output", type=Path, help="default: <workdir>/<study>/best.yaml")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    p.add_argument(
        "--register",
        action="store_true",
        help="also log the exported trials' models to MLflow and register them (alias 'best' on rank 1)",
    )
    p.add_argument("--name", help="registered model name (default: <study>-best); implies --register")
    p.add_argument(
        "--take-name",
        action="store_true",
        help="register under a name that holds another study's models (moves its 'best' alias to these)",
    )

    p = sub.add_parser("dashboard", help="build the study's HTML dashboard and log it into its MLflow parent run")
    p.add_argument("study")
    _add_workdir(p)
    p.add_argument("--layout", help="a layout name in dashboards/ or a path (default: the study file's `dashboard`)")
    p.add_argument("-o", "--output", type=Path, help="default: <workdir>/<study>/dashboard.html")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the page into the parent run")

    p = sub.add_parser("run", help="train one fixed configuration once, without Ray (e.g. an exported one)")
    p.add_argument("file", type=Path)
    _add_workdir(p)
    p.add_argument("--index", type=int, default=1, help="which document of a multi-document file (1-based; default 1)")
    _add_overrides(p)
    p.add_argument("--no-track", action="store_true", help="do not record the run in MLflow")

    p = sub.add_parser("ui", help="start the MLflow UI for the work directory on 127.0.0.1")
    _add_workdir(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument(
        "--allowed-hosts",
        metavar="HOSTS",
        help="comma-separated Host headers the UI answers to (e.g. myhost.example:5000); required with a --host "
        "beyond loopback, passed to MLflow's host check",
    )
    p.add_argument("--port", type=int, default=5000, help="default 5000, or the next free port")
    p.add_argument("--study", help="print the link to this study's parent run")
    return parser


# --- commands ---------------------------------------------------------------------------------


def _load_documents(path: Path, workdir: Workdir, overrides: dict[str, Any] | None = None) -> list[StudySpec]:
    """The study documents of a file as every command sees them: validated, command-line overrides
    included, each one's dashboard layout checked and its tracking store confined to ``workdir``."""
    from certstudy.dashboards.layout import check_study_layout
    from certstudy.errors import SpecError
    from certstudy.study.spec.loading import load_documents

    docs = load_documents(path, overrides)
    for spec in docs:
        check_study_layout(spec, str(path), workdir)
        try:
            spec.tracking_uri(workdir)
        except SpecError as exc:
            raise SpecError(str(path), exc.field, exc.value, exc.allowed) from None
    return docs


def _overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """The dotted-key overrides of a command line: ``--overrides FILE``, then each ``--set``, then
    ``--num-trials``; later ones win. Bad input is a SpecError naming the option."""
    from certstudy.study.spec.overrides import parse_set, read_overrides

    out: dict[str, Any] = {}
    if getattr(args, "overrides", None) is not None:
        out.update(read_overrides(args.overrides))
    for item in getattr(args, "set", None) or []:
        out.update(parse_set(item))
    if getattr(args, "num_trials", None) is not None:
        out["search.num_trials"] = args.num_trials
    return out or None


def _pick_document(path: Path, docs: list[StudySpec], index: int) -> StudySpec:
    from certstudy.errors import SpecError

    if not 1 <= index <= len(docs):
        raise SpecError(str(path), "--index", index, f"the file holds {len(docs)} document(s)")
    return docs[index - 1]


def _dashboard_hook(workdir: Workdir) -> Callable[[StudyOutcome], None]:
    """Rebuilds the study's dashboard once the study has ended (and printed its summary)."""

    def rebuild(outcome: StudyOutcome) -> None:
        from certstudy.dashboards.build import build_dashboard

        t = time.perf_counter()
        try:
            built = build_dashboard(workdir, outcome.name)
            console.print(f"dashboard: {built.path} (also in the MLflow parent run)", highlight=False)
        except Exception as exc:  # noqa: BLE001 - the study's results are already recorded
            console.print(f"warning: the dashboard was not built: {collapse(str(exc))}", highlight=False)
        outcome.timings["dashboard"] = time.perf_counter() - t

    return rebuild


def _add_preflight(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip checking that the trials' resources, the dataset files and the study's tracking store exist "
        "here (for a study written on one machine and run on another)",
    )


def cmd_validate(args: argparse.Namespace) -> int:
    workdir = Workdir.resolve(args.workdir)
    for path in args.files:
        for spec in _load_documents(path, workdir, _overrides(args)):
            if not args.no_preflight:
                from certstudy.study.engine.local_preflight import preflight

                preflight(str(path), spec, workdir, args.address)
            searched = sum(len(search) for _, search in spec.searched_sections())
            kind = (
                "fixed configuration"
                if spec.is_fixed()
                else f"{spec.search.num_trials} trials, {len(spec.method_entries)} method(s), {searched} searched "
                f"parameter(s)"
            )
            console.print(f"ok: {path}: study {spec.name!r} ({kind})", highlight=False)
    return 0


def _check_stores(args: argparse.Namespace, spec: StudySpec, workdir: Workdir) -> None:
    """Every store the study names beyond the work directory's own answers, before anything starts
    (one line, exit 2, within a bounded time: ``study/records/store_probe.py``)."""
    from certstudy.study.records.store_probe import check_store

    uri = spec.tracking_uri(workdir, args.tracking_uri)
    if uri != workdir.tracking_uri:
        check_store(uri, "--tracking-uri" if args.tracking_uri else f"{args.file}: tracking.tracking_uri")
    if getattr(args, "optuna_storage", None):
        check_store(args.optuna_storage, "--optuna-storage")


def _start_ray_early(args: argparse.Namespace, spec: StudySpec, workdir: Workdir) -> RayConnection | None:
    """Once the study is valid, this machine's own Ray starts (in the main thread: Ray ties its
    processes' lives to the thread that starts them) while a helper thread imports Ray Tune, MLflow
    and Optuna; ``ray.init`` mostly waits on the processes it starts, so the 2 s of imports and
    the 2.5 s of Ray start-up overlap, and the workers' preloading (``study/engine/ray_start.py``) starts
    sooner. Only for the default stores on a local Ray: a tracking server or an Optuna database is
    checked before anything starts, which needs those imports first. Returns the local node's connection,
    which the study's session takes over."""
    if args.address is not None or args.optuna_storage is not None:
        return None
    if spec.tracking_uri(workdir, args.tracking_uri).startswith(("http://", "https://")):
        return None
    import importlib
    import threading

    from certstudy.study.engine.quiet import quiet_libraries
    from certstudy.study.engine.ray_start import start_local_ray, study_cpus

    quiet_libraries(args.verbose)  # before Ray starts: its processes take this environment
    imports = threading.Thread(target=importlib.import_module, args=("certstudy.study.engine.runner",), daemon=True)
    imports.start()
    workdir.root.mkdir(parents=True, exist_ok=True)
    connection = start_local_ray(workdir, args.verbose, study_cpus(spec))
    imports.join()
    return connection


def cmd_launch(args: argparse.Namespace) -> int:
    workdir = Workdir.resolve(args.workdir)
    spec = _pick_document(args.file, _load_documents(args.file, workdir, _overrides(args)), args.index)
    _check_stores(args, spec, workdir)
    if not args.no_preflight:  # on a cluster (--address), the session checks its nodes once it has joined
        from certstudy.study.engine.local_preflight import check_dataset, check_machine_resources

        if args.address is None:
            check_machine_resources(str(args.file), spec)
        check_dataset(str(args.file), spec, workdir)
    connection = _start_ray_early(args, spec, workdir)
    try:
        from certstudy.study.engine.runner import launch

        outcome = launch(
            spec,
            workdir,
            address=args.address,
            tracking_uri=args.tracking_uri,
            optuna_storage=args.optuna_storage,
            storage=args.storage,
            autoscaling=args.autoscaling,
            overwrite=args.overwrite,
            verbose=args.verbose,
            console=console,
            on_end=[_dashboard_hook(workdir)],
            connection=connection,
        )
    finally:
        if connection is not None:  # closed by the session, or refused before it took it over
            connection.close()
    return _report_outcome(outcome, workdir)


def cmd_resume(args: argparse.Namespace) -> int:
    from certstudy.study.engine.runner import resume

    workdir = Workdir.resolve(args.workdir)
    return _report_outcome(
        resume(
            args.study,
            workdir,
            address=args.address,
            verbose=args.verbose,
            console=console,
            on_end=[_dashboard_hook(workdir)],
        ),
        workdir,
    )


def cmd_status(args: argparse.Namespace) -> int:
    from certstudy.study.records.status import study_status

    workdir = Workdir.resolve(args.workdir)
    st = study_status(workdir, args.study)
    obj = st.launched.objective
    table = Table(
        title=f"study {st.launched.name}: {len(st.rows)} of {st.launched.num_trials} trials proposed; parent run "
        f"{st.parent_status}"
    )
    columns = ["trial", "state", "epochs", *(["phase"] if st.running else []), obj.metric, "params", "mlflow run"]
    for col in [*columns, "note"]:
        table.add_column(col, justify="right" if col in ("trial", "epochs", obj.metric) else "left")
    for r in st.rows:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.params.items())
        value = f"{r.value:.4f}" if r.value is not None else "-"
        epochs = str(r.epochs) if r.epochs is not None else "-"
        table.add_row(
            str(r.number), r.state, epochs, *([r.phase] if st.running else []), value, params, r.run_status, r.note
        )
    console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(st.counts.items())) or "no trials yet"
    best = st.best
    console.print(
        f"{counts}; best {obj.metric} ({obj.mode}): "
        + (f"{best.value:.4f} (trial {best.number})" if best else "none yet"),
        highlight=False,
    )
    if st.running:
        console.print(f"running now: {st.running}", highlight=False)
    elif st.resumable:
        console.print(
            f"unfinished: continue with certstudy resume {st.launched.name} --workdir {workdir.root}", highlight=False
        )
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from certstudy.dashboards.build import build_dashboard

    built = build_dashboard(
        Workdir.resolve(args.workdir), args.study, layout=args.layout, out=args.output, log_to_mlflow=not args.no_mlflow
    )
    console.print(
        f"dashboard: {built.path} ({len(built.panels)} figures"
        + (f"; left out for lack of data: {', '.join(built.left_out)}" if built.left_out else "")
        + ")",
        highlight=False,
    )
    return 0


TIMINGS_ENV = "CERTSTUDY_TIMINGS"
"""When set, ``launch``/``resume`` write their timings there as JSON (``bench/platform_overhead.py``)."""


def _report_outcome(outcome: StudyOutcome, workdir: Workdir) -> int:
    c = outcome.counts
    if os.environ.get(TIMINGS_ENV):
        import json

        timings = {**outcome.timings, "session_to_exit": time.perf_counter() - outcome.started}
        Path(os.environ[TIMINGS_ENV]).write_text(json.dumps(timings))
    console.print(
        f"study {outcome.name}: {c.get('completed', 0)} completed, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} "
        f"failed in {outcome.timings.get('total', 0):.0f}s; "
        f"MLflow experiment {outcome.experiment_id}, parent run {outcome.parent_run_id} (certstudy ui --workdir "
        f"{workdir.root}); "
        f"next: certstudy export {outcome.name} --workdir {workdir.root}",
        highlight=False,
    )
    if outcome.interrupted:
        err_console.print(
            f"study {outcome.name} was interrupted; every open MLflow run was closed as KILLED (continue it: "
            f"certstudy resume {outcome.name} --workdir {workdir.root})",
            highlight=False,
        )
        return 130
    return 0 if sum(c.get(s, 0) for s in FINISHED) > 0 else 1


def cmd_export(args: argparse.Namespace) -> int:
    from certstudy.study.records.export import export

    if args.top < 1:
        raise CertstudyError("--top: must be at least 1")
    registering = args.register or args.name is not None
    if registering:  # every check before anything is written
        from certstudy.study.records.model_registry import check_name, check_owner, default_name

        name = default_name(args.study) if args.name is None else args.name
        check_name(name, args.name is not None)
        check_owner(Workdir.resolve(args.workdir), args.study, name, args.tracking_uri, args.take_name)
    out, docs = export(
        Workdir.resolve(args.workdir),
        args.study,
        metric=args.metric,
        mode=args.mode,
        top=args.top,
        pareto=args.pareto,
        trial=args.trial,
        out=args.output,
        tracking_uri=args.tracking_uri,
    )
    table = Table(title=f"exported to {out}")
    table.add_column("#")
    table.add_column("method")
    table.add_column("by")
    table.add_column("value", justify="right")
    table.add_column("mlflow run")
    for doc in docs:
        prov = doc[PROVENANCE]
        by = prov[PROV_BY] if prov[PROV_BY] != PROV_PARETO else prov[PROV_OBJECTIVES][0]["metric"]
        table.add_row(
            str(prov[PROV_RANK]),
            doc["method"]["name"],
            by,
            f"{prov[PROV_METRICS].get(by, float('nan')):.4f}",
            prov[PROV_RUN_ID],
        )
    console.print(table)
    console.print(f"re-run one with: certstudy run {out} --index 1", highlight=False)
    if registering:
        from certstudy.study.records.launched import study_spec
        from certstudy.study.records.model_registry import BEST_ALIAS, register
        from certstudy.study.records.stored import study_tracking_uri

        workdir = Workdir.resolve(args.workdir)
        versions = register(workdir, docs, name, args.tracking_uri)
        for v in versions:
            console.print(f"registered {v.uri} (rank {v.rank}, run {v.run_id})", highlight=False)
        if versions:
            uri = study_tracking_uri(workdir, study_spec(workdir, args.study), args.tracking_uri)
            console.print(
                f"load the rank-1 model: python -c \"import mlflow; mlflow.set_tracking_uri('{uri}'); "
                f"model = mlflow.pytorch.load_model('models:/{versions[0].name}@{BEST_ALIAS}')\"",
                highlight=False,
                soft_wrap=True,
            )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    workdir = Workdir.resolve(args.workdir)
    spec = _pick_document(args.file, _load_documents(args.file, workdir, _overrides(args)), args.index)
    from certstudy.study.engine.single import run_fixed

    def on_epoch(m: dict[str, float]) -> None:
        console.print(
            f"epoch {int(m['epoch'])}: train/loss {m['train/loss']:.4f}  val/clean_acc {m['val/clean_acc']:.4f}  "
            f"val/robust_acc {m['val/robust_acc']:.4f}",
            highlight=False,
        )

    outcome = run_fixed(spec, workdir, track=not args.no_track, on_epoch=on_epoch, source=str(args.file))
    table = Table(title=f"final metrics of {spec.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if outcome.compared:
        table.add_column("exported", justify="right")
        table.add_column("diff", justify="right")
    from certstudy.study.records.names import numeric_metrics, result_tags

    values = numeric_metrics(outcome.metrics)
    for key in sorted(values):
        row = [key, f"{values[key]:.6f}"]
        if outcome.compared:
            ref = outcome.compared.get(key)
            row += [f"{ref[0]:.6f}", f"{ref[1] - ref[0]:+.2e}"] if ref else ["-", "-"]
        table.add_row(*row)
    console.print(table)
    for key, value in result_tags(outcome.metrics).items():
        console.print(f"{key}: {value}", highlight=False)
    if outcome.compared:
        same = outcome.max_abs_diff == 0.0
        console.print(
            f"reproduced the exported metrics {'exactly' if same else f'up to {outcome.max_abs_diff:.3e}'} "
            f"({len(outcome.compared)} metrics compared)",
            highlight=False,
        )
    if outcome.run_id:
        console.print(f"MLflow run {outcome.run_id}", highlight=False)
    return 0


def _bind_address(host: str) -> tuple[socket.AddressFamily, str]:
    """The socket family and address of ``--host`` (an IPv6 address may come in brackets)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (socket.AF_INET6 if ":" in bare else socket.AF_INET), bare


def _free_port(host: str, start: int) -> int:
    family, address = _bind_address(host)
    for port in range(start, start + 100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return port
    raise CertstudyError(f"no free port in {start}..{start + 99} on {host}")


def _loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine's loopback interface only."""
    import ipaddress

    bare = _bind_address(host)[1].lower().rstrip(".")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _check_ui_exposure(host: str, port: int, allowed_hosts: str | None) -> list[str]:
    """The exact Host headers the UI answers (``certstudy/ui_hosts.py``), as MLflow's arguments.
    Beyond loopback an explicit list is required (MLflow's default admits ``localhost`` and private
    addresses, so a request from another machine could claim ``Host: localhost``), and one that
    admits a loopback name is refused; on loopback the default is this machine's own names."""
    from certstudy.errors import SpecError
    from certstudy.ui_hosts import allowed_host_headers, loopback_host_headers

    on_loopback = _loopback(host)
    if allowed_hosts is None:
        if on_loopback:
            return ["--allowed-hosts", ",".join(loopback_host_headers(port))]
        raise SpecError(
            "--allowed-hosts",
            "",
            None,
            f"required with --host {host}: the Host headers the UI answers to, e.g. myhost.example:5000 "
            f"(the MLflow UI has no authentication)",
        )
    try:
        headers = allowed_host_headers(allowed_hosts, port, bind_loopback=on_loopback)
    except ValueError as exc:
        raise SpecError("--allowed-hosts", "", allowed_hosts, str(exc)) from None
    return ["--allowed-hosts", ",".join(headers)]


UI_START_TIMEOUT_S = 180.0
# MLflow 3.17's UI opens experiments in its GenAI view unless the browser chose otherwise (a setting
# kept in the browser) or the URL says ``workflowType``, which the UI keeps while one navigates.
ML_VIEW = "workflowType=machine_learning"
UI_LISTED_EXPERIMENTS = 10
UI_LOG_DIR = ".ui"  # <workdir>/.ui/mlflow-ui-<port>.log: the server's own output, off the console


def _ui_answers(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Waits until the UI server answers ``/health`` (True), exits, or ``timeout_s`` passes."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return False


def _study_link(workdir: Workdir, study: str, url: str) -> str | None:
    from certstudy.study.records.export import study_tracker
    from certstudy.study.records.launched import study_spec

    spec = study_spec(workdir, study)
    tracker = study_tracker(workdir, spec)
    exp = tracker.client.get_experiment_by_name(spec.experiment_name)
    parent = tracker.latest_study_run(exp.experiment_id, spec.name) if exp else None
    if parent is None:
        return None
    return (
        f"study {spec.name}: its runs {url}/#/experiments/{exp.experiment_id}/runs?{ML_VIEW}, its parent run "
        f"{url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}?{ML_VIEW}"
    )


def cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the work directory's store. Every certstudy experiment is tagged to open on
    its runs first; the server's output goes to ``<workdir>/.ui/``; the URL is printed once the
    server answers."""
    port = _free_port(args.host, args.port)
    extra = _check_ui_exposure(args.host, port, args.allowed_hosts)
    workdir = Workdir.resolve(args.workdir)
    workdir.ensure()
    family, address = _bind_address(args.host)
    url = f"http://[{address}]:{port}" if family == socket.AF_INET6 else f"http://{address}:{port}"
    if not _loopback(args.host):
        err_console.print(
            f"warning: the MLflow UI has no authentication: anyone who can reach {args.host}:{port} can read, change "
            f"and delete every run of {workdir.root} (answering Host headers {args.allowed_hosts} only)",
            highlight=False,
        )
    link = _study_link(workdir, args.study, url) if args.study else None
    experiments: list[tuple[str, str]] = []
    if (workdir.root / "mlflow.db").is_file():
        from certstudy.study.records.stored_sqlite import existing_store
        from certstudy.study.records.tracking import Tracker

        experiments = Tracker(existing_store(workdir.tracking_uri, "MLflow tracking store")).mark_study_experiments()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        workdir.tracking_uri,
        "--default-artifact-root",
        workdir.artifact_root.as_uri(),
        "--host",
        address,
        "--port",
        str(port),
        *extra,
    ]
    log_path = workdir.root / UI_LOG_DIR / f"mlflow-ui-{port}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())  # never leave the server behind
    try:
        if not _ui_answers(url, server, UI_START_TIMEOUT_S):
            server.terminate()
            server.wait(timeout=30)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise CertstudyError(f"the MLflow UI did not start ({collapse(tail[0], 200)}); its log: {log_path}")
        console.print(
            f"MLflow UI for {workdir.root} at {url}/#/experiments?{ML_VIEW}  (Ctrl-C to stop; its log: {log_path})",
            highlight=False,
            soft_wrap=True,
        )
        for name, experiment_id in experiments[:UI_LISTED_EXPERIMENTS]:
            console.print(
                f"  {name}: {url}/#/experiments/{experiment_id}/runs?{ML_VIEW}", highlight=False, soft_wrap=True
            )
        if len(experiments) > UI_LISTED_EXPERIMENTS:
            console.print(f"  ({len(experiments) - UI_LISTED_EXPERIMENTS} older experiments in the list)")
        if link:
            console.print(link, highlight=False, soft_wrap=True)
        sys.stdout.flush()
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait(timeout=30)
        return 0


COMMANDS = {
    "validate": cmd_validate,
    "launch": cmd_launch,
    "resume": cmd_resume,
    "status": cmd_status,
    "dashboard": cmd_dashboard,
    "export": cmd_export,
    "run": cmd_run,
    "ui": cmd_ui,
}


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, not guessed from mode bits: a root process
    ignores them, a read-only mount does not)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".certstudy-write-check-"):
            return True
    except OSError:
        return False


WRITING_COMMANDS = frozenset({"launch", "resume", "run", "dashboard", "export", "ui"})


def _check_arguments(args: argparse.Namespace) -> None:
    """Misuse that argparse cannot see, refused before anything is read or written: a work directory
    that is a file or (for commands that write) read-only, a port out of range, ``-o`` naming a folder."""
    from certstudy.errors import SpecError

    root = Workdir.resolve(getattr(args, "workdir", None)).root
    if root.exists() and not root.is_dir():
        raise SpecError("--workdir", "", str(root), "is not a directory")
    if args.command in WRITING_COMMANDS and root.is_dir() and not _writable(root):
        raise SpecError("--workdir", "", str(root), f"is not writable, and {args.command} writes there")
    for flag in ("study", "--study"):
        name = getattr(args, flag.lstrip("-"), None)
        if isinstance(name, str) and not re.fullmatch(NAME_PATTERN, name):
            raise SpecError(flag, "", name, "a study name: letters, digits, '_', '.', '-', at most 100 characters")
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise SpecError("--port", "", port, "a TCP port is 1-65535")
    for flag in ("--tracking-uri", "--optuna-storage"):
        uri = getattr(args, flag[2:].replace("-", "_"), None)
        if uri is not None:
            from certstudy.study.spec.store_urls import check_optuna_storage, check_tracking_uri, shown_uri

            check = check_tracking_uri if flag == "--tracking-uri" else check_optuna_storage
            try:
                check(uri)
            except ValueError as exc:
                raise SpecError(flag, "", shown_uri(uri), str(exc)) from None
    output = getattr(args, "output", None)
    if output is not None and Path(output).is_dir():
        raise SpecError("-o/--output", "", str(output), "is a directory; give a file path")


READING_COMMANDS = frozenset({"status", "dashboard", "export", "ui"})
# MLflow's HTTP client retries 7 times with a doubling back-off (minutes against a dead server); a
# command that only reads gives up sooner. A study keeps MLflow's defaults (and its own outage wait).
READING_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
READING_HTTP_TIMEOUT_S = "10"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in READING_COMMANDS:
        for name, value in {**READING_HTTP, "MLFLOW_HTTP_REQUEST_TIMEOUT": READING_HTTP_TIMEOUT_S}.items():
            os.environ.setdefault(name, value)
    try:
        _check_arguments(args)
        return COMMANDS[args.command](args)
    except CertstudyError as exc:
        err_console.print(
            f"error: {elide_middle(str(exc), ERROR_LINE_LIMIT)}", highlight=False, markup=False, soft_wrap=True
        )
        return exc.exit_code
    except Exception as exc:
        message = disk_full_message(exc, str(Workdir.resolve(getattr(args, "workdir", None)).root))
        if message is None:
            raise
        err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        return 130


def console_main() -> None:
    """The ``certstudy`` command: ``main``, then exit without the interpreter's last full garbage
    collection. After a study the process holds millions of objects (torch, MLflow, SQLAlchemy,
    plotly), and that collection alone kept the shell waiting 1.5 to 2 s after the last line.
    ``gc.freeze`` moves them out of its reach; exit handlers and module teardown still run."""
    code = main()
    sys.stdout.flush()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console_main()
