"""The VFS of the store's writer connection (`_wal_vfs.c`): a COMMIT's WAL frames reach the
kernel in a few large writes, written out before the file's sync, instead of two small writes
per page. Only for a connection with `synchronous` FULL or EXTRA (`store.connect`): SQLite
then syncs the WAL at every commit before it publishes the commit's frames. Where the
extension is not built, or SQLite's default VFS cannot be wrapped, the writer uses the
default VFS: the same bytes on disk, written page by page.
"""

from __future__ import annotations

import structlog

try:
    from router.io import _wal_vfs
except ImportError:  # built without a C compiler
    _wal_vfs = None  # type: ignore[assignment]

__all__ = ["usable", "writer_vfs"]


def usable() -> bool:
    """Whether the extension is built and registers with the sqlite3 module's SQLite (it
    cannot where that SQLite is linked into the module, out of the extension's reach)."""
    if _wal_vfs is None:
        return False
    try:
        import _sqlite3

        _wal_vfs.register(_sqlite3.__file__)
    except (ImportError, AttributeError, OSError):
        return False
    return True


def writer_vfs() -> str | None:
    """The name of the VFS to open the writer's connection with, registered with the SQLite
    the sqlite3 module loaded on first use; None for the default VFS."""
    log = structlog.get_logger("router.store")
    if _wal_vfs is None:
        log.info("store_wal_writes", kind="page_by_page")
        return None
    try:
        import _sqlite3

        name = _wal_vfs.register(_sqlite3.__file__)
    except (ImportError, AttributeError, OSError) as exc:
        log.warning("store_wal_writes", kind="page_by_page", reason=str(exc))
        return None
    log.info("store_wal_writes", kind="coalesced")
    return name
