"""Where a store URL points: whether it is sqlite (of any driver) and, if so, which file.

One home for this reading, so the readers that must never create a store (``stored_sqlite``), the
probes run before a study starts (``store_probe``) and the schema's checks (``spec``) agree.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

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
