"""The store's file on disk: who may read it, and whether it is still the file the daemon
opened.

The store holds access tokens, webhook tokens and customers' transcripts, so its files are
the daemon user's alone (0600). SQLite gives the `-wal` and `-shm` files the mode of the
database file, so making that one private before SQLite opens it covers all three; files
left by an earlier version with a wider mode are narrowed when the daemon starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PRIVATE", "FileIdentity", "make_private", "store_files"]

PRIVATE = 0o600


def store_files(path: Path) -> tuple[Path, Path, Path]:
    """The database file and the two SQLite keeps beside it in WAL mode."""
    return path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def make_private(path: Path) -> None:
    """Create the database file 0600 if it is missing, and narrow every store file that
    exists to 0600, whatever the umask."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE))
    for found in store_files(path):
        try:
            if found.stat().st_mode & 0o777 != PRIVATE:
                os.chmod(found, PRIVATE)
        except FileNotFoundError:
            continue  # the -wal and -shm files come with the first connection


@dataclass(frozen=True)
class FileIdentity:
    """Which file a path named when the store opened it (device and inode). An open SQLite
    connection keeps writing to the file it opened even after the path is deleted or
    replaced, so commits would go where the next start never looks."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        found = path.stat()
        return cls(found.st_dev, found.st_ino)

    def problem(self, path: Path) -> str | None:
        """Why `path` is no longer this file, or None while it is."""
        try:
            now = FileIdentity.of(path)
        except FileNotFoundError:
            return f"the store file {path} was deleted under the running daemon"
        except OSError as exc:
            return f"the store file {path} cannot be checked: {exc.strerror}"
        if now != self:
            return f"the store file {path} was replaced under the running daemon"
        return None
