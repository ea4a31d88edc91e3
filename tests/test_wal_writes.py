"""The writer's VFS (`router/io/_wal_vfs.c`): a group's WAL frames reach the kernel in a few
large writes before the COMMIT's sync, instead of two writes per page, and every frame held
for that is on disk once the commit is reported, whether read back by another connection,
checkpointed into the database, or found by a store opened afresh.

Each test opens a real store on disk, on the test's own loop, below the daemon.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from router.io import wal_vfs
from router.io.store import Store


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[Store]:
    store = Store(path)
    store.open()
    try:
        yield store
    finally:
        await store.drain()
        await asyncio.get_running_loop().run_in_executor(None, store.close)


def write_calls() -> int:
    """Write system calls this process has made (all its threads)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


async def run_script(script: str, *args: str) -> list[str]:
    """`script` in a Python process of its own, from the checkout: what it printed, its log
    lines first."""
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        cwd=Path(__file__).parents[1],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await done.communicate()
    assert done.returncode == 0, err.decode()
    return out.decode().splitlines()


def put(k: int, size: int) -> Callable[[sqlite3.Connection], int]:
    return lambda c: c.execute("INSERT INTO blobs VALUES (?, ?)", (k, bytes(size))).rowcount


async def one_group_of_pages(store: Store, first: int, pages: int) -> int:
    """Writes made while a group of quick writes, a page of rows each, commits."""
    before = write_calls()
    await asyncio.gather(
        *(store.write(put(k, 3000), quick=True) for k in range(first, first + pages))
    )
    return write_calls() - before


@pytest.fixture
def page_by_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(wal_vfs, "_wal_vfs", None)
    yield


async def test_a_groups_frames_reach_the_file_in_a_few_writes(tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with opened(tmp_path / "router.db") as store:
            await store.write(lambda c: c.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v)"))
            made = await one_group_of_pages(store, 0, 300)
            # What the VFS rests on: a sync of the WAL at every commit, before its frames
            # are published to readers.
            assert await store.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
    assert [e["kind"] for e in logs if e["event"] == "store_wal_writes"] == ["coalesced"]
    # 300 pages of frames are about 1.2 MB: some twenty writes of 64 KiB, where SQLite makes
    # two per page (see the next test).
    assert made < 100


async def test_without_the_extension_the_writer_writes_frames_page_by_page(
    tmp_path: Path, page_by_page: None
) -> None:
    with capture_logs() as logs:
        async with opened(tmp_path / "router.db") as store:
            await store.write(lambda c: c.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v)"))
            made = await one_group_of_pages(store, 0, 300)
            assert (
                await store.read(lambda c: c.execute("SELECT count(*) FROM blobs").fetchone()[0])
                == 300
            )
    assert [e["kind"] for e in logs if e["event"] == "store_wal_writes"] == ["page_by_page"]
    assert made > 500


def put_many(first: int, count: int, size: int) -> Callable[[sqlite3.Connection], None]:
    def work(c: sqlite3.Connection) -> None:
        c.executemany(
            "INSERT INTO blobs VALUES (?, ?)",
            ((k, bytes(size)) for k in range(first, first + count)),
        )

    return work


async def test_every_frame_held_is_on_disk_once_its_commit_is_reported(tmp_path: Path) -> None:
    """Groups small and past the VFS's hold (8 MiB: a transaction of 10 MB, partly written
    straight through; the writer then checkpoints on its own, reading the WAL back through the
    VFS), then read and checkpointed by a connection on the default VFS, and read by a store
    opened afresh on the file."""
    path = tmp_path / "router.db"
    async with opened(path) as store:
        await store.write(lambda c: c.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v)"))
        await one_group_of_pages(store, 0, 50)
        await store.write(put_many(50, 1250, 8000))
        await one_group_of_pages(store, 1300, 50)
        plain = sqlite3.connect(path)
        try:
            assert plain.execute("SELECT count(*), sum(length(v)) FROM blobs").fetchone() == (
                1350,
                100 * 3000 + 1250 * 8000,
            )
            busy, _, _ = plain.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0  # every frame went into the database
        finally:
            plain.close()
        assert (path.parent / "router.db-wal").stat().st_size == 0
        await one_group_of_pages(store, 1350, 50)
    async with opened(path) as again:
        rows = await again.read(lambda c: c.execute("SELECT count(*) FROM blobs").fetchone()[0])
        check = await again.read(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0])
    assert (rows, check) == (1400, "ok")


# A process whose files may not grow past a limit: a COMMIT whose held frames cannot be
# written out must fail, whichever call wrote them out (the sync, or a write past the hold),
# and the next one, with room again, must land whole.
_FILE_SIZE_LIMIT = """
import resource, signal, sqlite3, sys
from pathlib import Path
from router.io.store import connect
from router.io.wal_vfs import writer_vfs

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
path, rows, room = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
conn = connect(path, writer_vfs())
conn.execute("PRAGMA cache_spill=OFF")  # as the store's writer: a commit's frames in its commit
conn.execute("PRAGMA wal_autocheckpoint=0")
conn.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v)")
conn.execute("INSERT INTO blobs VALUES (0, zeroblob(3000))")
wal = path.parent / (path.name + "-wal")
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (wal.stat().st_size + room, hard))
conn.execute("BEGIN")
conn.executemany("INSERT INTO blobs VALUES (?, zeroblob(3000))", [(k,) for k in range(1, rows)])
try:
    conn.execute("COMMIT")
    print("committed")
except sqlite3.Error as exc:
    print(type(exc).__name__)
if conn.in_transaction:
    conn.execute("ROLLBACK")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
conn.execute("INSERT INTO blobs VALUES (1000000, zeroblob(3000))")
print(conn.execute("SELECT count(*) FROM blobs").fetchone()[0])
"""


@pytest.mark.parametrize(
    ("rows", "room"),
    [(300, 100_000), (2_600, 1_000_000)],
    ids=["written_out_at_the_sync", "written_out_past_the_hold"],
)
async def test_a_commit_whose_frames_cannot_be_written_fails_and_the_next_lands(
    tmp_path: Path, rows: int, room: int
) -> None:
    """About 1.2 MB of frames, held until the sync; then about 10 MB, written out when the
    hold (8 MiB) is full, before the sync."""
    path = tmp_path / "router.db"
    *logged, failed, count = await run_script(_FILE_SIZE_LIMIT, str(path), str(rows), str(room))
    assert any("store_wal_writes" in line and "coalesced" in line for line in logged)
    assert (failed, count) == ("OperationalError", "2")
    plain = sqlite3.connect(path)
    try:
        assert plain.execute("SELECT k FROM blobs ORDER BY k").fetchall() == [(0,), (1000000,)]
        assert plain.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        plain.close()


# SQLite pads a commit of a database that is not power-safe and writes its last frame again
# after the sync: such a database's WAL is never held, and no other after it in the process.
_NOT_POWERSAFE = """
import sqlite3, sys
from pathlib import Path
from router.io.wal_vfs import writer_vfs
from tests.test_wal_writes import write_calls

vfs = writer_vfs()
for name, query in (("a.db", "&psow=0"), ("b.db", "")):
    uri = (Path(sys.argv[1]) / name).absolute().as_uri() + f"?vfs={vfs}" + query
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v)")
    before = write_calls()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO blobs VALUES (?, zeroblob(3000))", [(k,) for k in range(300)])
    conn.execute("COMMIT")
    print(write_calls() - before)
    conn.close()
"""


async def test_a_database_that_is_not_powersafe_has_its_wal_written_page_by_page(
    tmp_path: Path,
) -> None:
    printed = await run_script(_NOT_POWERSAFE, str(tmp_path))
    padded, after = (int(line) for line in printed[-2:])  # after its log line
    assert (padded > 500, after > 500) == (True, True)
