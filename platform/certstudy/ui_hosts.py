"""The Host headers ``certstudy ui`` answers: parsed as host names and addresses, never as patterns.

MLflow's host check compares a Host header exactly with each allowed entry that has no ``*``, and
with ``fnmatch`` (where ``[...]`` is a character class) with each one that has. So every entry
certstudy passes is an exact ``host`` or ``host:port`` in canonical form (lower case, no trailing
dot, IPv6 in brackets, the UI's port spelled out), and a wildcard, a character class or an empty
entry is refused. Beyond loopback, entries that any client can claim (loopback and unspecified
addresses, ``localhost`` and its subdomains, IPv4-mapped loopback) are refused too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class AllowedHost:
    host: str  # canonical: lower-case name without trailing dot, dotted IPv4, or [IPv6]
    port: int | None

    def headers(self, ui_port: int) -> list[str]:
        """The exact Host header values this entry admits (without a port, the UI's own port and none)."""
        if self.port is not None:
            return [f"{self.host}:{self.port}"]
        return [self.host, f"{self.host}:{ui_port}"]

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host.strip("[]"))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 without brackets) can only mean this machine, or
    any of its addresses: ``localhost`` and ``*.localhost``, 127/8, ::1, the unspecified addresses,
    and IPv4-mapped forms of those."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_loopback or address.is_unspecified


def parse_host(entry: str) -> AllowedHost:
    """One ``--allowed-hosts`` entry as a host and optional port; ``ValueError`` saying why not."""
    text = entry.strip()
    if not text:
        raise ValueError("an empty entry")
    if any(c in text for c in "*?"):
        raise ValueError("a pattern; give exact host names or addresses (wildcards would widen the check)")
    port: int | None = None
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("an IPv6 address without its closing ]")
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError:
            raise ValueError(f"[{inside}] is not an IPv6 address") from None
        host = f"[{address.compressed}]"
        if rest:
            port = _port(rest)
    else:
        if "[" in text or "]" in text:
            raise ValueError("brackets only enclose an IPv6 address")
        if text.count(":") > 1:
            raise ValueError("an IPv6 address must be in brackets, e.g. [2001:db8::1]:5000")
        name, sep, rest = text.partition(":")
        if sep:
            port = _port(":" + rest)
        host = _name_or_ipv4(name)
    return AllowedHost(host, port)


def _port(text: str) -> int:
    digits = text[1:] if text.startswith(":") else ""
    if not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise ValueError(f"{text!r} is not :PORT with a port of 1-65535")
    return int(digits)


def _name_or_ipv4(name: str) -> str:
    lowered = name.lower()
    canonical = lowered[:-1] if lowered.endswith(".") else lowered
    try:
        return str(ipaddress.IPv4Address(canonical))
    except ValueError:
        pass
    labels = canonical.split(".")
    if len(canonical) > 253 or not all(LABEL.match(label) for label in labels):
        raise ValueError(f"{name!r} is neither a host name nor an IPv4 address")
    if labels[-1].isdigit() or re.fullmatch(r"0x[0-9a-f]+", labels[-1]):
        raise ValueError(f"{name!r} reads as a numeric address; write it as dotted IPv4")
    return canonical


def allowed_host_headers(entries: str, ui_port: int, *, bind_loopback: bool) -> list[str]:
    """The exact Host headers for MLflow's check, from a comma-separated ``--allowed-hosts``;
    ``ValueError`` naming the first refused entry. Beyond loopback (``bind_loopback`` false) an
    entry any client could claim is refused."""
    headers: list[str] = []
    for entry in entries.split(","):
        try:
            parsed = parse_host(entry)
        except ValueError as exc:
            raise ValueError(f"{entry.strip()!r}: {exc}") from None
        if not bind_loopback and parsed.loopback:
            raise ValueError(
                f"{entry.strip()!r}: admits a loopback Host header, which any machine can send; "
                f"name this machine's address instead"
            )
        headers += [h for h in parsed.headers(ui_port) if h not in headers]
    return headers


def loopback_host_headers(ui_port: int) -> list[str]:
    """What a UI bound to loopback answers when no list is given: this machine's own names, exactly."""
    return [h for name in ("localhost", "127.0.0.1", "[::1]") for h in (name, f"{name}:{ui_port}")]
