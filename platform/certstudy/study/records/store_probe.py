"""Whether a store answers, asked before anything starts, in one line and within a bounded time.

- an MLflow server (``http(s)://``) must answer ``/health`` within ``timeout_s``;
- a sqlite file that exists must be a sqlite database (``sqlite:////etc/passwd`` is refused), and
  an in-memory one is refused (it keeps nothing);
- any other database (PostgreSQL, MySQL) must accept a connection within ``timeout_s``, with its
  driver installed.

Light by design: ``requests`` and SQLAlchemy only, so ``launch`` can ask before it starts Ray.
"""

from __future__ import annotations

from certstudy.errors import CertstudyError, collapse
from certstudy.study.spec.store_urls import SQLITE_HEADER, is_sqlite, sqlite_path
from certstudy.url_secrets import redacted

DEFAULT_TIMEOUT_S = 10.0


class StoreUnreachable(CertstudyError):
    """A store named on the command line or in a study file does not answer; nothing was started."""

    exit_code = 2


def check_store(uri: str, what: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Raises ``StoreUnreachable`` naming ``what`` (e.g. ``--tracking-uri``) unless ``uri`` answers."""
    shown = redacted(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri, what, shown, timeout_s)
    elif is_sqlite(uri):
        _check_sqlite(uri, what)
    else:
        _check_database(uri, what, shown, timeout_s)


def _check_server(uri: str, what: str, shown: str, timeout_s: float) -> None:
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
    except requests.RequestException as exc:
        raise StoreUnreachable(
            f"{what}: {shown} is unreachable ({type(exc).__name__} within {timeout_s:.0f} s); start the MLflow "
            f"server or fix the URI"
        ) from None
    if response.status_code != 200:
        raise StoreUnreachable(
            f"{what}: {shown} answered /health with HTTP {response.status_code}; is it an MLflow server?"
        )


def _check_sqlite(uri: str, what: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        raise StoreUnreachable(f"{what}: {uri} is an in-memory sqlite database, which keeps nothing; name a file")
    if path.exists():
        try:
            with open(path, "rb") as fh:
                header = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreUnreachable(f"{what}: {path} cannot be read ({exc.strerror})") from None
        if not path.is_file() or (header and header != SQLITE_HEADER):
            raise StoreUnreachable(f"{what}: {path} exists and is not a sqlite database; name another file")


def _check_database(uri: str, what: str, shown: str, timeout_s: float) -> None:
    import sqlalchemy
    import sqlalchemy.exc

    scheme = uri.split("://", 1)[0]
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, int(timeout_s))})
    except ImportError as exc:
        raise StoreUnreachable(
            f"{what}: no database driver for {scheme}:// is installed ({exc.name or exc}); install it or use "
            f"another store"
        ) from None
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise StoreUnreachable(f"{what}: {shown} is not a database URL SQLAlchemy reads ({collapse(str(exc), 120)})")
    try:
        with engine.connect():
            pass
    except ImportError as exc:
        raise StoreUnreachable(f"{what}: no database driver for {scheme}:// is installed ({exc.name or exc})") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = exc.__cause__ or exc
        first = " ".join(str(cause).strip().splitlines()[:1]) or type(cause).__name__
        raise StoreUnreachable(f"{what}: {shown} does not answer ({collapse(first, 160)})") from None
    finally:
        engine.dispose()
