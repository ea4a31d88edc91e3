"""Identifiers: delivery numbers that keep creation order, opaque ids for everything else."""

from __future__ import annotations

import itertools
import secrets
import threading
import uuid


class Sequence:
    """Monotonic delivery ids, continued from the store's highest after a restart."""

    def __init__(self, start: int) -> None:
        self._counter = itertools.count(start + 1)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return next(self._counter)


def new_id() -> str:
    return str(uuid.uuid4())


def new_token() -> str:
    return secrets.token_urlsafe(24)
