"""Whether the store can commit, and every write it could not.

A write fails for one of two kinds of reasons. The store itself may be unable to commit: the
disk is full, an I/O error, the file is read-only, locked by another process, or was deleted
or replaced under the daemon. Then nothing can be acknowledged that is not on disk, so the
store is *failing* until a commit proves otherwise: intake answers 503 and routing waits.
Or one write is refused for what it holds (a constraint), while the store commits the rest:
that write's conversation stops, the store does not fail.

The writer thread records failures; the loop reads them (plain attributes, each written
whole) and is the only one to clear them, once recovery has made memory match the disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from router.io.metrics import Metrics

__all__ = ["StoreHealth", "StoreReplaced", "WriteRefused", "failure_reason"]


class WriteRefused(Exception):
    """A write the router itself declined to attempt, because an earlier one failed: not a
    failure of the store, and not counted as one."""


class StoreReplaced(sqlite3.DatabaseError):
    """The store's file was deleted or replaced under the daemon: commits would go to a file
    the next start never reads."""


# SQLite's primary result codes that mean the store, not the write, is at fault.
_STORE_CODES = {
    5: "locked",  # SQLITE_BUSY: another process holds the lock past busy_timeout
    6: "locked",  # SQLITE_LOCKED
    7: "io",  # SQLITE_NOMEM
    8: "readonly",  # SQLITE_READONLY
    10: "io",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "full",  # SQLITE_FULL: "database or disk is full"
    14: "io",  # SQLITE_CANTOPEN
    15: "io",  # SQLITE_PROTOCOL
    26: "corrupt",  # SQLITE_NOTADB
}


def failure_reason(exc: BaseException) -> tuple[str, bool]:
    """The metric's `reason` for a failed write, and whether the store itself is at fault."""
    if isinstance(exc, StoreReplaced):
        return "replaced", True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _STORE_CODES:
            return _STORE_CODES[code & 0xFF], True
        if isinstance(exc, sqlite3.IntegrityError):
            return "constraint", False
        if type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
            return "io", True  # raised without a result code: the engine could not go on
    return "error", False


class StoreHealth:
    def __init__(self, now: Callable[[], float], metrics: Metrics | None = None) -> None:
        self._now = now
        self._metrics = metrics
        self._lock = threading.Lock()  # the count is bumped on the writer thread and the loop
        self.failures = 0  # writes (and reads) that failed since the daemon started
        self.failing_since: float | None = None  # the store cannot commit, since then
        self.last_error: str | None = None
        self.replaced: str | None = None  # why the file is no longer the one opened
        self.listeners: list[Callable[[], None]] = []  # told (on the writer thread) of a failure

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def failed(self, exc: BaseException, writes: int = 1) -> bool:
        """Count `writes` that failed with `exc`; True when the store itself is at fault, which
        makes it failing until `recovered`."""
        reason, store_fault = failure_reason(exc)
        with self._lock:
            self.failures += writes
            self.last_error = str(exc)
            if store_fault and self.failing_since is None:
                self.failing_since = self._now()
        if self._metrics is not None:
            self._metrics.store_failures(reason).inc(writes)
            if store_fault:
                self._metrics.store_failing.set(1)
        for listener in list(self.listeners):
            listener()
        return store_fault

    def read_failed(self, exc: BaseException) -> None:
        """A read the router needed failed: counted, and the store is failing if it is to
        blame, as for a write."""
        self.failed(exc)

    def mark_replaced(self, problem: str) -> None:
        """The file is not the one opened: failing until the daemon restarts."""
        if self.replaced is None:
            self.replaced = problem
            self.failed(StoreReplaced(problem))

    def recovered(self) -> None:
        """A commit succeeded and recovery has brought memory back in line with the disk."""
        if self.replaced is not None:
            return  # only a restart opens the file the path names now
        self.failing_since = None
        if self._metrics is not None:
            self._metrics.store_failing.set(0)
