"""A TOML table reader that remembers where it is, so every error names file and key."""

from __future__ import annotations

import math
from typing import Any

from router.config.urls import url_problem


class ConfigError(Exception):
    """A configuration the daemon refuses to start with."""


class Table:
    """Reads one TOML table, remembering its key path for error messages."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        self.source = source
        self.path = path
        if not isinstance(data, dict):
            raise self.error("", "must be a table")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        where = ".".join(p for p in (self.path, key) if p) or "<top level>"
        return ConfigError(f"{self.source}: {where}: {message}")

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key)
        if value is None:
            if required or default is None:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise self.error(key, "must not contain control characters")
        return value

    def optional_string(self, key: str) -> str | None:
        return None if self._get(key) is None else self.string(key, required=True)

    def url(self, key: str, default: str | None = None) -> str:
        value = self.string(key, default, required=default is None)
        problem = url_problem(value)
        if problem is not None:
            raise self.error(key, f"{problem}, got {value!r}")
        return value.rstrip("/") if key == "public_url" else value

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be an integer")
        if not minimum <= value <= maximum:
            raise self.error(key, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.error(key, "must be a positive number")
        return float(value)

    def numbers(self, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in value
        ):
            raise self.error(key, "must be a list of non-negative numbers of seconds")
        return tuple(float(v) for v in value)

    def table(self, key: str) -> Table:
        value = self._get(key)
        return Table(self.source, self._sub(key), {} if value is None else value)

    def tables(self, key: str) -> list[Table]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, "must be an array of tables ([[" + key + "]])")
        return [Table(self.source, f"{self._sub(key)}[{i}]", v) for i, v in enumerate(value)]

    def _sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def done(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise self.error(extra[0], "unknown key")
