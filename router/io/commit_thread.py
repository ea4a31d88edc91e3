"""The COMMIT of the store's quick groups on a native thread (`_commit.c`), which never takes
the GIL; where it cannot run, the Python writer thread commits as before.

A Python writer thread takes the GIL three times per group on a message's path (to wake, to
come back from the file check, to come back from the COMMIT's fsync), and each take waits
while the busy loop runs Python. The native thread checks the file and commits without it,
and tells the loop through an eventfd.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

import structlog

from router.io.disk import FileIdentity

try:
    from router.io._commit import Committer
except ImportError:  # built without a C compiler: the Python writer thread commits
    Committer = None  # type: ignore[assignment,misc]

__all__ = ["CommitOutcome", "Committer", "commit_error", "outcome_of", "start_commit_thread"]

# CPython's sqlite3.Connection holds its SQLite handle first after the object header in
# these versions; the extension reads it there, so it is used nowhere else.
# The thread's outcome and its stop rely on the GIL, so not on a build without it.
_KNOWN_LAYOUT = (
    sys.implementation.name == "cpython"
    and (3, 11) <= sys.version_info[:2] <= (3, 13)
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)


class CommitOutcome(NamedTuple):
    rc: int  # SQLite's result code of the COMMIT; 0 when it landed
    extended: int  # its extended code
    replaced: bool  # the file check failed: nothing was committed
    message: str


def start_commit_thread(
    conn: sqlite3.Connection, path: Path, identity: FileIdentity | None
) -> Committer | None:
    """A native commit thread on `conn`, or None where one cannot run (no compiled
    extension, an interpreter whose connection it cannot read, SQLite's functions not found,
    a handle that is not the store's file): then the Python writer thread commits."""
    log = structlog.get_logger("router.store")
    if Committer is None or not _KNOWN_LAYOUT or type(conn) is not sqlite3.Connection:
        log.info("store_commit_thread", kind="python")
        return None
    try:
        import _sqlite3

        check = (None, 0, 0) if identity is None else (str(path), identity.device, identity.inode)
        committer = Committer(conn, _sqlite3.__file__, *check)
    except (ImportError, AttributeError, OSError, ValueError, RuntimeError) as exc:
        log.warning("store_commit_thread", kind="python", reason=str(exc))
        return None
    if committer.filename() != os.path.realpath(path):
        committer.stop()
        log.warning("store_commit_thread", kind="python", reason="handle_mismatch")
        return None
    log.info("store_commit_thread", kind="native")
    return committer


def outcome_of(committer: Committer) -> CommitOutcome | None:
    """The outcome of the commit just finished, or None if none has since the last call."""
    got = committer.outcome()
    return None if got is None else CommitOutcome(*got)


# How CPython's sqlite3 module names an error by its primary result code; any other is a
# DatabaseError.
_OPERATIONAL = {1, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17}
_ERRORS: dict[int, type[sqlite3.Error]] = {
    2: sqlite3.InternalError,  # SQLITE_INTERNAL
    12: sqlite3.InternalError,  # SQLITE_NOTFOUND
    18: sqlite3.DataError,  # SQLITE_TOOBIG
    19: sqlite3.IntegrityError,  # SQLITE_CONSTRAINT
    20: sqlite3.IntegrityError,  # SQLITE_MISMATCH
    21: sqlite3.InterfaceError,  # SQLITE_MISUSE
    25: sqlite3.InterfaceError,  # SQLITE_RANGE
} | dict.fromkeys(_OPERATIONAL, sqlite3.OperationalError)


def commit_error(outcome: CommitOutcome) -> sqlite3.Error:
    """The exception the sqlite3 module would have raised for this failed COMMIT (but for
    SQLITE_NOMEM, which it raises as MemoryError: here an OperationalError, so that the
    store counts it as its own failure)."""
    error = _ERRORS.get(outcome.rc & 0xFF, sqlite3.DatabaseError)(
        outcome.message or f"COMMIT failed with SQLite result code {outcome.extended}"
    )
    error.sqlite_errorcode = outcome.extended
    error.sqlite_errorname = _error_name(outcome.extended)
    return error


_PRIMARY = [
    "OK",
    "ERROR",
    "INTERNAL",
    "PERM",
    "ABORT",
    "BUSY",
    "LOCKED",
    "NOMEM",
    "READONLY",
    "INTERRUPT",
    "IOERR",
    "CORRUPT",
    "NOTFOUND",
    "FULL",
    "CANTOPEN",
    "PROTOCOL",
    "EMPTY",
    "SCHEMA",
    "TOOBIG",
    "CONSTRAINT",
    "MISMATCH",
    "MISUSE",
    "NOLFS",
    "AUTH",
    "FORMAT",
    "RANGE",
    "NOTADB",
    "NOTICE",
    "WARNING",
]
# The extended codes the sqlite3 module names (each above 255, so none is also an
# authorizer's action code or a primary code).
_EXTENDED = {
    value: name
    for name in dir(sqlite3)
    if name.startswith("SQLITE_") and isinstance(value := getattr(sqlite3, name), int)
    if value > 255
}


def _error_name(code: int) -> str:
    if code in _EXTENDED:
        return _EXTENDED[code]
    primary = code & 0xFF
    return f"SQLITE_{_PRIMARY[primary]}" if primary < len(_PRIMARY) else "SQLITE_UNKNOWN"
