"""Secrets in store URLs: found whatever the syntax, and never printed or recorded.

A store URL is recorded with a study (``stores.json``, Optuna attributes, MLflow tags, lock files)
and printed in its commands, so it must carry no secret. Parsers disagree on where userinfo ends:
``urllib.parse.urlsplit`` stops at the first ``/``, ``?`` or ``#``, while SQLAlchemy (which opens
the database) reads ``postgresql://u:pa/ss@host`` as password ``pa/ss``. So the userinfo here is
everything between ``://`` and the *last* ``@`` in the URL, which covers every reading; query
parameters whose name says password, secret or token, and any fragment, count as secrets too.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|credential", re.IGNORECASE)
MASK = "***"


def _split(uri: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo-or-empty, rest)`` of a URL (the userinfo up to the last ``@``), or None."""
    scheme, sep, after = uri.partition("://")
    if not sep:
        return None
    userinfo, at, rest = after.rpartition("@")
    return (scheme + sep, userinfo, rest) if at else (scheme + sep, "", after)


def secret_parts(uri: str) -> list[str]:
    """What in ``uri`` is a secret: ``"password"`` (userinfo after a ``:``), ``"query parameter X"``,
    ``"fragment"``; empty when there is none."""
    split = _split(uri)
    if split is None:
        return []
    found: list[str] = []
    _, userinfo, rest = split
    if ":" in userinfo and userinfo.split(":", 1)[1]:
        found.append("password")
    path_query, _, fragment = rest.partition("#")
    _, _, query = path_query.partition("?")
    for name, _value in parse_qsl(query, keep_blank_values=True):
        if SECRET_PARAM.search(name):
            found.append(f"query parameter {name!r}")
    if fragment:
        found.append("fragment")
    return found


def redacted(uri: str) -> str:
    """``uri`` with its password, secret query values and fragment replaced by ``***``."""
    split = _split(uri)
    if split is None:
        return uri
    head, userinfo, rest = split
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + MASK
    path_query, hash_, fragment = rest.partition("#")
    path, q, query = path_query.partition("?")
    if q:
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(n + eq + (MASK if eq and SECRET_PARAM.search(n) else v) for n, eq, v in pairs)
    return head + (userinfo + "@" if userinfo else "") + path + q + query + (hash_ + MASK if hash_ else "")


def redacted_argv(argv: list[str]) -> list[str]:
    """A command line fit to record: each argument (or ``--flag=value``'s value) that is a URL, redacted."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if eq and flag.startswith("--"):
            out.append(flag + eq + redacted(value))
        else:
            out.append(redacted(arg))
    return out
