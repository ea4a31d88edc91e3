"""Checks across tables, which no single key's type can express.

They read the raw TOML tables rather than validated models, defensively, so that they run
even when the schema has found errors elsewhere in the file: a clash of ports is worth
reporting in the same pass as a misspelled key. A value of the wrong type is skipped here;
the schema has already reported it.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.config.problems import Problem
from router.config.shapes import Config, DebugConfig, ServerConfig

__all__ = [
    "Reference",
    "config_references",
    "create_store_directory",
    "cross_table_problems",
    "is_loopback",
    "reference_problems",
    "store_problems",
]

# Tables of items with an id, and what the id names in a message.
ID_TABLES = {
    "integrations": "integration",
    "ccsp": "ccsp",
    "flows": "flow",
    "assets": "asset",
    "services": "service",
}
RULE_REFERENCES = {"bot": "integration", "ccsp": "ccsp", "flow": "flow", "asset": "asset"}
ANY_HOST = frozenset({"", "0.0.0.0", "::"})  # a listener here takes the port on every host
LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class Reference:
    """A key that names an item of another table."""

    where: str
    kind: str
    target: str


def cross_table_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """Port clash, duplicate ids, and references to unknown ccsps, flows, assets, services.

    Bots are left to `check_references`: a rule may name one created over the admin API.
    """
    known = {
        kind: ids
        for key, kind in ID_TABLES.items()
        if kind != "integration" and (ids := _known_ids(raw.get(key, []))) is not None
    }
    return [
        *_port_problems(raw),
        *_debug_token_problems(raw),
        *_duplicate_problems(raw),
        *reference_problems(_raw_references(raw), known),
    ]


def reference_problems(
    references: Iterable[Reference], known: Mapping[str, set[str]]
) -> list[Problem]:
    """Each reference to an id its table lacks; kinds missing from `known` go unchecked."""
    problems = []
    for ref in references:
        ids = known.get(ref.kind)
        if ids is None or ref.target in ids:
            continue
        guess = difflib.get_close_matches(ref.target, sorted(ids), n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        problems.append(Problem(ref.where, f"unknown {ref.kind} {ref.target!r}{hint}"))
    return problems


def config_references(config: Config) -> Iterator[Reference]:
    for i, asset in enumerate(config.assets):
        yield Reference(f"assets[{i}].service", "service", asset.service)
    for si, service in enumerate(config.services):
        for ri, rule in enumerate(service.rules):
            for key, kind in RULE_REFERENCES.items():
                target = getattr(rule, key)
                if target is not None:
                    yield Reference(f"services[{si}].rules[{ri}].{key}", kind, target)


def store_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """Whether the store's directory exists or could be made, and is writable.

    Nothing is created here: a file refused for other reasons leaves no trace behind.
    """
    store = raw.get("store", {})
    path = store.get("path", str(Config.store_path)) if isinstance(store, dict) else None
    if not isinstance(path, str) or not path.strip():
        return []
    try:
        reason = _store_path_problem(Path(path))
    except OSError as exc:
        reason = f"cannot check {path}: {exc.strerror}"
    return [] if reason is None else [Problem("store.path", reason)]


def create_store_directory(path: Path) -> Problem | None:
    """Make a missing store directory, as the store itself does when the daemon starts."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Problem("store.path", f"cannot create directory {path.parent}: {exc.strerror}")
    return None


def _store_path_problem(path: Path) -> str | None:
    directory = existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == directory:
            return f"{directory} is not a directory"
        return f"cannot create directory {directory}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == directory:
            return f"directory {directory} is not writable"
        return f"cannot create directory {directory}: {existing} is not writable"
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not writable"
    return None


def _port_problems(raw: Mapping[str, Any]) -> list[Problem]:
    public = _listener(raw, "server", ServerConfig.host, ServerConfig.port)
    debug = _listener(raw, "debug", DebugConfig.host, DebugConfig.port)
    if public is None or debug is None or public[1] != debug[1] or public[1] == 0:
        return []  # port 0 asks the system for a free port: two of them never clash
    hosts = {public[0].strip().lower(), debug[0].strip().lower()}
    if len(hosts) > 1 and not hosts & ANY_HOST:
        return []
    on = " and ".join(sorted(hosts)) if len(hosts) > 1 else next(iter(hosts))
    reason = f"clashes with server.port: both listen on port {public[1]} ({on})"
    return [Problem("debug.port", reason)]


def is_loopback(host: str) -> bool:
    """Whether a listener on `host` is reachable from this machine only: 127.0.0.0/8, ::1
    or localhost. Any other name may resolve to an outside address."""
    host = host.strip().lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _debug_token_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """The debug port shows transcripts and the router's inner state: off loopback, only to
    whoever holds its token."""
    debug = _listener(raw, "debug", DebugConfig.host, DebugConfig.port)
    table = raw.get("debug", {})
    if debug is None or not isinstance(table, dict) or is_loopback(debug[0]):
        return []
    if table.get("token") is not None:
        return []  # present: the schema checks its type
    reason = (
        f"is required when debug.host is not a loopback address (127.0.0.0/8, ::1, "
        f"localhost), got host {debug[0]!r}"
    )
    return [Problem("debug.token", reason)]


def _listener(raw: Mapping[str, Any], key: str, host: str, port: int) -> tuple[str, int] | None:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        return None
    host, port = table.get("host", host), table.get("port", port)
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        return None
    return host, port


def _duplicate_problems(raw: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for key in ID_TABLES:
        first: dict[str, int] = {}
        for i, item_id in _ids(raw, key):
            if item_id in first:
                reason = f"duplicate id {item_id!r}, first used by {key}[{first[item_id]}]"
                problems.append(Problem(f"{key}[{i}].id", reason))
            else:
                first[item_id] = i
    return problems


def _raw_references(raw: Mapping[str, Any]) -> Iterator[Reference]:
    for i, asset in _tables(raw.get("assets")):
        if isinstance(service := asset.get("service"), str):
            yield Reference(f"assets[{i}].service", "service", service)
    for si, service in _tables(raw.get("services")):
        for ri, rule in _tables(service.get("rules")):
            for key, kind in RULE_REFERENCES.items():
                if isinstance(target := rule.get(key), str):
                    yield Reference(f"services[{si}].rules[{ri}].{key}", kind, target)


def _known_ids(value: object) -> set[str] | None:
    """The ids of a table, or None when the schema refuses its shape: a reference to an
    item that could not be read is not reported a second time as unknown."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return None
    ids = [item.get("id") for item in value]
    return set(ids) if all(isinstance(i, str) for i in ids) else None


def _ids(raw: Mapping[str, Any], key: str) -> Iterator[tuple[int, str]]:
    for i, item in _tables(raw.get(key)):
        if isinstance(item_id := item.get("id"), str):
            yield i, item_id


def _tables(value: object) -> Iterator[tuple[int, dict[str, Any]]]:
    """The tables of an array of tables, by index; anything else is the schema's to report."""
    if isinstance(value, list):
        yield from ((i, item) for i, item in enumerate(value) if isinstance(item, dict))
