"""Store URLs: where one points (sqlite of any driver, which file) and which a study may name.

One home for this reading and policy, so the readers that must never create a store, the probes
run before a study starts and the schema's checks agree. A store URL never carries a password.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from certstudy.url_secrets import redacted, secret_parts

SQLITE_HEADER = b"SQLite format 3\x00"


def is_sqlite(uri: str) -> bool:
    """Whether ``uri`` is a SQLAlchemy sqlite URL, with any driver (``sqlite+pysqlite://``)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.split("+", 1)[0].lower() == "sqlite"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URL of any driver (``sqlite:///rel``, ``sqlite:////abs``,
    ``sqlite+pysqlite:///...``, options after ``?`` dropped); None for any other URL and for an
    in-memory database (``sqlite://``, ``:memory:``, a ``file:`` URI), which holds no file."""
    if not is_sqlite(uri):
        return None
    rest = uri.partition("://")[2]
    path_part, _, query = rest.partition("?")
    if not path_part.startswith("/"):
        return None
    database = unquote(path_part[1:])
    if database in ("", ":memory:") or database.startswith("file:") or "mode=memory" in query:
        return None
    return Path(database)


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql")
"""MLflow tracking backends ``--tracking-uri`` may name (``postgresql+psycopg2://`` counts as postgresql)."""

FILE_TRACKING_SCHEMES = ("http", "https", "sqlite")
"""What a study file may name: a server, or a sqlite database inside the work directory. Any other
store is the user's choice on the command line (``--tracking-uri``), never a file's."""

OPTUNA_STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")
"""Optuna RDB storages ``launch --optuna-storage`` may name (SQLAlchemy URLs; default: sqlite in the
study's folder)."""


def tracking_scheme(uri: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql``."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


def shown_uri(uri: str) -> str:
    """``uri`` with any password, secret query value or fragment replaced by ``***``: what an error
    line may print (``certstudy/url_secrets.py``)."""
    return redacted(uri)


def refuse_password(uri: str) -> None:
    """A store's URI is recorded with the study (Optuna attributes, Ray's saved searcher, MLflow
    tags) and printed in its commands, so it must not carry a password in any syntax (userinfo,
    query, fragment): the database reads it from a password file instead (PostgreSQL: ``~/.pgpass``
    or ``$PGPASSFILE``; MLflow servers: ``$MLFLOW_TRACKING_PASSWORD``)."""
    found = secret_parts(uri)
    if found:
        raise ValueError(
            f"carries a secret ({', '.join(found)}) that the study's records would keep; put it in a password file "
            f"(PostgreSQL: ~/.pgpass or $PGPASSFILE; an MLflow server: $MLFLOW_TRACKING_PASSWORD)"
        )


def check_optuna_storage(uri: str) -> str:
    """An Optuna RDB storage URL (sqlite, PostgreSQL, MySQL) without a password."""
    if "://" not in uri:
        raise ValueError("must be a database URL (sqlite:///PATH, postgresql://USER@HOST:PORT/DB, mysql://...)")
    scheme = tracking_scheme(uri)
    if scheme not in OPTUNA_STORAGE_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; one of {', '.join(OPTUNA_STORAGE_SCHEMES)}")
    refuse_password(uri)
    refuse_in_memory(uri)
    return uri


def refuse_in_memory(uri: str) -> None:
    """An in-memory sqlite store keeps nothing past the process (MLflow would "succeed" and lose every
    record), so only a database file is a store."""
    if is_sqlite(uri) and sqlite_path(uri) is None:
        raise ValueError("an in-memory sqlite database keeps nothing; name a file: sqlite:///PATH")


def check_tracking_uri(uri: str, schemes: tuple[str, ...] = TRACKING_SCHEMES) -> str:
    """A tracking URI MLflow 3 can use (no file store) whose scheme is one of ``schemes``, without a
    password."""
    if uri.startswith("file:") or "://" not in uri:
        raise ValueError(
            "must be a database or server URI (sqlite:///..., postgresql://..., http://...); MLflow 3 file stores "
            "are not supported"
        )
    refuse_password(uri)
    scheme = tracking_scheme(uri)
    if scheme not in TRACKING_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; one of {', '.join(TRACKING_SCHEMES)}")
    if scheme not in schemes:
        raise ValueError(
            f"a study file may name an http(s):// server or a sqlite:/// database inside the work directory; "
            f"give a {scheme} store with --tracking-uri"
        )
    if schemes != FILE_TRACKING_SCHEMES:  # a study file's sqlite path is confined to the work directory instead
        refuse_in_memory(uri)
    return uri


def confined_sqlite_uri(uri: str, root: Path) -> str:
    """A study file's ``sqlite:///PATH`` as an absolute URI, PATH taken relative to the work directory
    ``root`` and required to stay inside it (raises ``ValueError`` otherwise)."""
    path = uri.split("://", 1)[1]
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db -> rel.db; sqlite:////abs -> /abs
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()) or target == root.resolve():
        raise ValueError(f"the database must be inside the work directory {root}; give others with --tracking-uri")
    return f"sqlite:///{target}"
