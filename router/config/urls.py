"""What makes a destination URL usable, in one place for every door that accepts one."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

# A DNS name: dot-separated labels of letters, digits, '-' and '_' (service names use it).
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def url_problem(value: str) -> str | None:
    """Why `value` cannot be delivered to, as the end of a sentence; None if it can.

    Only an absolute http(s) URL that names a host is reachable; anything else would fail
    every attempt later, far from the operator who typed it.
    """
    if any(c.isspace() for c in value):
        return "must not contain whitespace"
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must be absolute and name a host, e.g. https://bot.example/hook"
    if not _valid_host(parts.hostname):
        return f"names a host that is not a valid name or address: {parts.hostname!r}"
    if _port(parts) == 0:
        return "must have a port from 1 to 65535, if it has one"
    return None


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def has_credentials(value: str) -> bool:
    """Whether the URL carries user:password@ (which deliveries send as Basic auth)."""
    return "@" in urlsplit(value).netloc


def _port(parts: SplitResult) -> int | None:
    """The port, with 0 for one that is not a number or out of range."""
    try:
        return parts.port
    except ValueError:
        return 0
