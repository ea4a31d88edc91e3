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


def _register() -> tuple[str | None, str | None]:
    """The VFS's name once registered with the sqlite3 module's SQLite, or why it is not."""
    if _wal_vfs is None:
        return None, None  # not built: nothing to say beyond that
    try:
        import _sqlite3

        return _wal_vfs.register(_sqlite3.__file__), None
    except (ImportError, AttributeError, OSError) as exc:
        return None, str(exc)


def usable() -> bool:
    """Whether the extension is built and registers with the sqlite3 module's SQLite (it
    cannot where that SQLite is linked into the module, out of the extension's reach)."""
    return _register()[0] is not None


def writer_vfs() -> str | None:
    """The name of the VFS to open the writer's connection with, registered on first use;
    None for the default VFS."""
    log = structlog.get_logger("router.store")
    name, reason = _register()
    if name is not None:
        log.info("store_wal_writes", kind="coalesced")
    elif reason is None:
        log.info("store_wal_writes", kind="page_by_page")
    else:
        log.warning("store_wal_writes", kind="page_by_page", reason=reason)
    return name
