"""What a reload would change: the running configuration against a newly read file.

Pure comparisons, so that a reload decides everything it can before it touches the store or
an actor. Two kinds of difference come out:

- keys the running daemon has already built into its parts (the listeners, the store, the
  delivery schedule every conversation was given, the directory's limits), and any other
  key outside the tables of ids: they need a restart, and a file that changes one is
  refused whole, so that what runs is always one file's settings and never half of two;
- the tables of ids (integrations, CCSPs, flows, assets, services) and the admin token, which
  the daemon reads where it uses them: each id is added, changed (which keys) or removed.

Changes name keys, never values: the values of integrations and CCSPs include access tokens,
and a log line must not carry one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Protocol

from router.config.shapes import Config

__all__ = ["RELOADABLE", "ConfigChanges", "TableChanges", "config_changes", "restart_keys"]

# The tables of ids, by their name in the file and the Config attribute that holds them.
TABLES = {
    "integrations": "integrations",
    "ccsp": "ccsps",
    "flows": "flows",
    "assets": "assets",
    "services": "services",
}
# Read where they are used, at each request or event, so a reload applies them. Every
# other key needs a restart, including a section added later until it is made reloadable:
# applying a key that some part read once would leave the file and the daemon disagreeing.
RELOADABLE = frozenset({*TABLES.values(), "admin_token", "secret_overlap_s", "limits", "source"})
# Config attributes that are not named as in the file.
FILE_KEYS = {
    "store_path": "store.path",
    "admin_token": "admin.token",
    "secret_overlap_s": "admin.secret_overlap_s",
}


class _Item(Protocol):
    @property
    def id(self) -> str: ...


@dataclass(frozen=True)
class TableChanges:
    """One table's ids: added, changed (with the keys that differ) and removed, in file
    order (removed ones in the running file's order)."""

    added: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.added:
            found["added"] = list(self.added)
        if self.changed:
            found["changed"] = {item: list(keys) for item, keys in self.changed.items()}
        if self.removed:
            found["removed"] = list(self.removed)
        return found


@dataclass(frozen=True)
class ConfigChanges:
    """Every table's changes, and whether the admin token changed."""

    tables: dict[str, TableChanges]
    admin_token: bool = False

    def __bool__(self) -> bool:
        return self.admin_token or any(self.tables.values())

    def table(self, name: str) -> TableChanges:
        return self.tables.get(name, TableChanges())

    def summary(self) -> dict[str, Any]:
        """For the log line: what changed, by table, without a value."""
        found: dict[str, Any] = {name: t.summary() for name, t in self.tables.items() if t}
        if self.admin_token:
            found["admin"] = {"changed": ["token"]}
        return found


def restart_keys(running: Config, new: Config) -> list[str]:
    """The keys that differ and that only a restart applies, as the file names them
    (`server.port`, `store.path`), in the order of `Config`."""
    keys = []
    for section in fields(Config):
        if section.name in RELOADABLE:
            continue
        before, after = getattr(running, section.name), getattr(new, section.name)
        if is_dataclass(before):
            keys += [
                f"{section.name}.{f.name}"
                for f in fields(before)
                if getattr(before, f.name) != getattr(after, f.name)
            ]
        elif before != after:
            keys.append(FILE_KEYS.get(section.name, section.name))
    return keys


def config_changes(running: Config, new: Config) -> ConfigChanges:
    return ConfigChanges(
        tables={
            name: _table_changes(getattr(running, attr), getattr(new, attr))
            for name, attr in TABLES.items()
        },
        admin_token=running.admin_token != new.admin_token,
    )


def _table_changes(running: Iterable[_Item], new: Iterable[_Item]) -> TableChanges:
    before = {item.id: item for item in running}
    after = {item.id: item for item in new}
    changed = {
        item_id: keys
        for item_id, item in after.items()
        if item_id in before and (keys := _differing(before[item_id], item))
    }
    return TableChanges(
        added=tuple(i for i in after if i not in before),
        changed=changed,
        removed=tuple(i for i in before if i not in after),
    )


def _differing(old: Any, new: Any) -> tuple[str, ...]:
    return tuple(f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name))
