"""The store's group commit: quick writes run their statements on the loop and only the
COMMIT on the writer thread, yet a lock held elsewhere never stalls the loop, what a group
runs there writes to no file however large it is, a work that raises fails alone, and
`drain` waits for every write made before it. An early write (an intake row) is acted on
before its commit, which waits a hop for what follows from it.

Each test opens a real store on disk, on the test's own loop, below the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.io import commit_thread
from router.io.metrics import Metrics
from router.io.store import GROUP_LIMIT, RanAhead, Store
from tests.store_faults import fail_before_commit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store(tmp_path / "router.db")
    opened.open()
    await opened.write(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY)"))
    try:
        yield opened
    finally:
        await opened.drain()
        await asyncio.get_running_loop().run_in_executor(None, opened.close)


def note(n: int) -> object:
    return lambda c: c.execute("INSERT INTO notes VALUES (?)", (n,)).rowcount


async def notes(store: Store) -> list[int]:
    rows = await store.read(lambda c: c.execute("SELECT n FROM notes ORDER BY n").fetchall())
    return [row[0] for row in rows]


async def test_a_write_lock_held_elsewhere_leaves_the_loop_free_and_the_write_waits_for_it(
    store: Store, tmp_path: Path
) -> None:
    """The loop's BEGIN fails at once and the group waits on the writer thread: the loop goes
    on, and is what releases the lock here. Were the loop waiting on the lock itself, the
    ROLLBACK below could never run and the write would fail as locked."""
    store.busy_timeout_s = 60.0
    holder = sqlite3.connect(tmp_path / "router.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        written = store.write(note(1), quick=True)
        for _ in range(3):
            await asyncio.sleep(0)  # the group has been started and handed to the thread
        assert not written.done()
        holder.execute("ROLLBACK")
        assert await written == 1
    finally:
        holder.close()
    assert await notes(store) == [1]


async def test_a_lock_held_past_the_timeout_fails_the_group_as_locked(
    store: Store, tmp_path: Path
) -> None:
    store.busy_timeout_s = 0.05
    holder = sqlite3.connect(tmp_path / "router.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as refused:
            await store.write(note(1), quick=True)
        assert refused.value.sqlite_errorcode == sqlite3.SQLITE_BUSY
        assert store.health.failing
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_quick_work_that_raises_fails_alone_and_the_rest_of_its_group_commits(
    store: Store,
) -> None:
    def refuse(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO notes VALUES (2)")
        raise ValueError("refused")

    made = [store.write(note(1), quick=True), store.write(refuse, quick=True)]
    made.append(store.write(note(3), quick=True))
    first, second, third = await asyncio.gather(*made, return_exceptions=True)
    assert (first, third) == (1, 1)
    assert isinstance(second, ValueError)
    assert await notes(store) == [1, 3]  # the refused work's own row went with it
    assert not store.health.failing


async def test_quick_and_other_writes_commit_in_the_order_they_were_made(store: Store) -> None:
    made = [store.write(note(n), quick=n % 2 == 0) for n in range(1, 7)]
    await store.drain()
    assert all(future.done() for future in made)
    assert await notes(store) == [1, 2, 3, 4, 5, 6]


async def test_writes_made_by_what_a_commit_settles_join_the_group_right_after_it(
    tmp_path: Path,
) -> None:
    """A bot event's step (told to an actor once its row is durable, written in that actor's
    turn) goes to disk in the group after the row's, not one later: the next group waits
    for the turns that the settled writes set off."""
    metrics = Metrics()
    store = Store(tmp_path / "router.db", metrics)
    store.open()
    await store.write(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY)"))
    loop = asyncio.get_running_loop()
    later: list[asyncio.Future[Any]] = []

    def next_step(_: object) -> None:  # the handler tells an actor; its turn comes after
        loop.call_soon(lambda: later.append(store.write(note(3), quick=True)))

    row = store.write(note(1), quick=True)
    row.add_done_callback(next_step)
    await asyncio.sleep(0)  # the group holding the row is on its way to disk
    waiting = store.write(note(2), quick=True)  # made meanwhile: the next group
    await asyncio.gather(row, waiting)
    await store.drain()
    assert [future.result() for future in later] == [1]
    sizes = [
        s.value
        for m in metrics.registry.collect()
        if m.name == "router_store_commit_batch_size"
        for s in m.samples
        if s.name.endswith("_count")
    ]
    assert sizes == [3.0]  # the table, the row, then the waiting write and the step together
    await loop.run_in_executor(None, store.close)


def commit_sizes(metrics: Metrics) -> list[float]:
    """How many writes each commit held, as one histogram's count and sum."""
    found = {
        s.name: s.value
        for m in metrics.registry.collect()
        if m.name == "router_store_commit_batch_size"
        for s in m.samples
        if s.name.endswith(("_count", "_sum"))
    }
    return [
        found["router_store_commit_batch_size_count"],
        found["router_store_commit_batch_size_sum"],
    ]


async def test_writes_set_off_by_an_early_write_join_its_group_and_its_commit(
    tmp_path: Path,
) -> None:
    """An intake row's `then` routes its event; the step that follows, written in an actor's
    turn a hop later, goes to disk in the same commit as the row, and nothing settles
    before both are durable."""
    metrics = Metrics()
    store = Store(tmp_path / "router.db", metrics)
    store.open()
    await store.write(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY)"))
    loop = asyncio.get_running_loop()
    seen: list[object] = []
    step: list[asyncio.Future[Any]] = []

    def route(result: object) -> None:  # an actor's turn comes in a callback after this one
        seen.append(result)
        loop.call_soon(lambda: step.append(store.write(note(2), quick=True)))

    row = store.write_early(note(1), route)
    for _ in range(2):
        await asyncio.sleep(0)
    assert seen == [1] and not row.done()  # routed before it is durable
    assert await row == 1
    await store.drain()
    assert [future.result() for future in step] == [1]
    assert commit_sizes(metrics) == [2.0, 3.0]  # the table; then the row and its step
    await loop.run_in_executor(None, store.close)


async def test_an_early_write_that_does_not_land_takes_what_followed_with_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was routed from a row that never reached the disk must not land either: the
    router is told first (it fences its actors), then every write queued behind fails."""
    told: list[BaseException] = []
    store.on_ran_ahead = told.append
    loop = asyncio.get_running_loop()
    behind: list[asyncio.Future[Any]] = []

    def route(_: object) -> None:
        loop.call_soon(lambda: behind.append(store.write(note(3), quick=True)))
        behind.append(store.write(lambda c: c.execute("SELECT 1").fetchall()))  # not quick

    def broken_disk() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    fail_before_commit(monkeypatch, store, broken_disk)
    row = store.write_early(note(1), route)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await row
    assert [str(error) for error in told] == ["disk I/O error"]
    for future in behind:
        with pytest.raises(RanAhead, match="disk I/O error"):
            await future
    monkeypatch.undo()
    assert await store.write(note(4), quick=True) == 1
    assert await notes(store) == [4]


async def test_an_early_write_that_cannot_run_on_the_loop_is_acted_on_once_durable(
    store: Store, tmp_path: Path
) -> None:
    seen: list[object] = []
    holder = sqlite3.connect(tmp_path / "router.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the loop's BEGIN fails: the writer thread waits
        row = store.write_early(note(1), seen.append)
        for _ in range(3):
            await asyncio.sleep(0)
        assert seen == [] and not row.done()
        holder.execute("ROLLBACK")
        assert await row == 1
        assert seen == [1]  # acted on before whoever awaits the row hears of it
    finally:
        holder.close()


async def test_an_early_write_in_a_group_run_whole_is_acted_on_once_before_its_awaiter_wakes(
    store: Store,
) -> None:
    """A channel event's door routes the event itself if `then` has not: `then` must have
    run by the time the door wakes, or the event would be routed twice."""
    seen: list[object] = []
    store.write(note(1))  # not quick: the group goes to the writer thread whole
    row = store.write_early(note(2), seen.append)
    assert await row == 1  # its row count
    assert seen == [1]
    await store.drain()
    assert seen == [1]


async def early_then_late(store: Store, first: Any) -> list[asyncio.Future[Any]]:
    """An early row (note 1) whose `then` sets off a step, a turn later, that writes `first`
    and then note 2: the two late writes join the row's group."""
    loop = asyncio.get_running_loop()
    late: list[asyncio.Future[Any]] = []

    def route(_: object) -> None:
        def step() -> None:
            late.append(store.write(first, quick=True))
            late.append(store.write(note(2), quick=True))

        loop.call_soon(step)

    assert await store.write_early(note(1), route) == 1
    return late


async def test_a_late_write_that_raises_leaves_the_early_ones_and_goes_on_alone(
    store: Store,
) -> None:
    late = await early_then_late(store, lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await late[0]
    assert await late[1] == 1
    assert await notes(store) == [1, 2]


async def test_a_fault_of_the_stores_own_fails_the_group_and_the_writer_goes_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not SQLite's error: its callers hear of it instead of waiting on a dead thread."""

    def broken() -> None:
        raise RuntimeError("a bug in the store")

    fail_before_commit(monkeypatch, store, broken)
    with pytest.raises(RuntimeError):
        await store.write(note(1), quick=True)
    monkeypatch.undo()
    assert await store.write(note(2), quick=True) == 1
    assert await notes(store) == [2]


async def test_a_write_or_read_after_close_fails_instead_of_waiting_for_ever(
    tmp_path: Path,
) -> None:
    closed = Store(tmp_path / "router.db")
    closed.open()
    await closed.drain()
    await asyncio.get_running_loop().run_in_executor(None, closed.close)
    with pytest.raises(sqlite3.ProgrammingError):
        await closed.write(lambda c: None, quick=True)
    with pytest.raises(sqlite3.ProgrammingError):
        await closed.read(lambda c: None)
    heard: list[BaseException | None] = []  # a step's write, heard by a call
    closed.write_then(lambda c: None, heard.append)
    assert heard == []  # not inside the caller's turn
    await asyncio.sleep(0)
    assert len(heard) == 1 and isinstance(heard[0], sqlite3.ProgrammingError)


async def test_an_early_write_whose_waiter_gave_up_still_fences_what_followed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler cancelled at shutdown cancels the future it awaits: the group still knows
    that its rows were acted on."""
    told: list[BaseException] = []
    store.on_ran_ahead = told.append

    def broken_disk() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    fail_before_commit(monkeypatch, store, broken_disk)
    row = store.write_early(note(1), lambda _: None)
    await asyncio.sleep(0)
    row.cancel()
    await store.drain()
    assert [str(error) for error in told] == ["disk I/O error"]


async def test_a_late_write_that_raises_fails_with_its_error_and_is_not_tried_again(
    store: Store,
) -> None:
    """A step's write that raised has already fenced the actors: had it been tried again and
    passed, the fence would stand with nobody told of a failure."""
    tries: list[int] = []

    def flaky(conn: sqlite3.Connection) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise sqlite3.IntegrityError("refused")
        conn.execute("INSERT INTO notes VALUES (3)")

    late = await early_then_late(store, flaky)
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        await late[0]
    assert await late[1] == 1
    assert tries == [1]
    assert await notes(store) == [1, 2]


async def test_a_write_heard_by_a_call_hears_it_where_the_commit_lands_in_order(
    store: Store,
) -> None:
    """`write_then`, a step's write: each call hears its own outcome in the order the writes
    were made, inside the callback that reports the commit, before any future of the same
    group has woken its waiter."""
    heard: list[tuple[int, str | None]] = []

    def hear(n: int) -> Any:
        return lambda error: heard.append((n, None if error is None else type(error).__name__))

    def boom(_: sqlite3.Connection) -> None:
        raise ValueError("no")

    awaited = store.write(note(1), quick=True)
    awaited.add_done_callback(lambda _: heard.append((0, "future")))
    store.write_then(note(2), hear(2))
    store.write_then(boom, hear(3))
    store.write_then(note(4), hear(4))
    await store.drain()
    assert heard == [(2, None), (3, "ValueError"), (4, None), (0, "future")]
    assert await notes(store) == [1, 2, 4]


async def test_a_call_that_raises_does_not_keep_the_others_from_hearing(store: Store) -> None:
    heard: list[int] = []

    def broken(_: object) -> None:
        raise RuntimeError("the caller's own fault")

    with capture_logs() as logs:
        store.write_then(note(1), broken)
        store.write_then(note(2), lambda error: heard.append(2))
        await store.drain()
    assert heard == [2]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["store_then_failed"]


async def test_a_quick_group_larger_than_the_page_cache_writes_nothing_to_disk_before_its_commit(
    store: Store, tmp_path: Path
) -> None:
    """SQLite spills dirty pages to the WAL mid-transaction once they outgrow its cache: were
    it to, the loop running a large group's statements would wait on the disk's writes, which
    may stall. The pages stay in memory until the COMMIT, on the writer thread."""
    wal = tmp_path / "router.db-wal"
    await store.write(lambda c: c.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v BLOB)"))
    before = wal.stat().st_size
    during: list[int] = []
    assert GROUP_LIMIT > 500  # the 500 writes and the look at the WAL go in one group
    blob = bytes(8000)
    cache = await store.write(lambda c: c.execute("PRAGMA cache_size").fetchone()[0])
    assert 500 * len(blob) > (-1024 * cache if cache < 0 else 4096 * cache)  # outgrows it

    def put(k: int) -> object:
        return lambda c: c.execute("INSERT INTO blobs VALUES (?, ?)", (k, blob)).rowcount

    writes = [store.write(put(k), quick=True) for k in range(500)]
    writes.append(store.write(lambda c: during.append(wal.stat().st_size), quick=True))
    await asyncio.gather(*writes)
    assert during == [before]
    assert wal.stat().st_size > before + 500 * len(blob)
    count = await store.read(lambda c: c.execute("SELECT count(*) FROM blobs").fetchone()[0])
    assert count == 500


def sqlite_temp_files() -> list[str]:
    """SQLite's temporary files this process holds open (unlinked as soon as made)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if "etilqs_" in (target := str(fd.readlink())):
                found.append(target)
    return found


def rewrite(k: int) -> Callable[[sqlite3.Connection], int]:
    return lambda c: c.execute("UPDATE blobs SET v = ? WHERE k = ?", (bytes(3001), k)).rowcount


def rewrite_in_a_savepoint(conn: sqlite3.Connection, rows: int) -> list[str]:
    """Rewrite `rows` rows of `blobs` inside a savepoint of an open transaction; the
    temporary files open meanwhile."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("SAVEPOINT joining")
        for k in range(rows):
            rewrite(k)(conn)
        return sqlite_temp_files()
    finally:
        conn.execute("ROLLBACK")


async def test_writes_joining_a_group_in_a_savepoint_keep_its_journal_in_memory(
    store: Store, tmp_path: Path
) -> None:
    """The steps that join an early write's group go in a savepoint, whose journal SQLite
    writes to a temporary file once it passes 64 KiB: the loop would be writing to the disk.
    Here the joining writes rewrite 200 pages that were already on disk."""
    blob = bytes(3000)
    await store.write(lambda c: c.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v BLOB)"))
    await store.write(
        lambda c: c.executemany("INSERT INTO blobs VALUES (?, ?)", ((k, blob) for k in range(200)))
    )
    # The same on a connection as SQLite makes it: the look at the files sees the journal.
    plain = sqlite3.connect(tmp_path / "router.db", isolation_level=None)
    try:
        assert rewrite_in_a_savepoint(plain, 200)
    finally:
        plain.close()
    loop = asyncio.get_running_loop()
    during: list[list[str]] = []
    joined: list[asyncio.Future[Any]] = []

    def route(_: object) -> None:  # an actor's turn comes in a callback after this one
        def turn() -> None:
            joined.extend(store.write(rewrite(k), quick=True) for k in range(200))
            joined.append(store.write(lambda c: during.append(sqlite_temp_files()), quick=True))

        loop.call_soon(turn)

    await store.write_early(note(1), route)
    await asyncio.gather(*joined)
    assert during == [[]]
    assert (
        await store.read(lambda c: c.execute("SELECT sum(length(v)) FROM blobs").fetchone()[0])
        == 200 * 3001
    )


async def test_quick_groups_commit_on_the_native_thread(tmp_path: Path) -> None:
    """The install builds the commit thread: without it every group waits for the GIL on its
    way to disk (`router/io/commit_thread.py`)."""
    with capture_logs() as logs:
        native = Store(tmp_path / "router.db")
        native.open()
    try:
        assert [e["kind"] for e in logs if e["event"] == "store_commit_thread"] == ["native"]
        assert await native.write(lambda c: c.execute("CREATE TABLE notes (n)").rowcount) == -1
        assert await native.write(note(1), quick=True) == 1
        assert await notes(native) == [1]
    finally:
        await native.drain()
        await asyncio.get_running_loop().run_in_executor(None, native.close)


async def test_a_commit_that_fails_on_the_native_thread_fails_its_group_and_the_store_goes_on(
    store: Store,
) -> None:
    """A real COMMIT that fails (a deferred foreign key left broken): the group's writes
    fail with the error the sqlite3 module would raise, what followed from its early write
    is fenced, nothing of it lands, and the next group commits."""
    assert store._native is not None
    store._conn.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    told: list[BaseException] = []
    store.on_ran_ahead = told.append
    behind: list[asyncio.Future[Any]] = []

    def broken_reference(c: sqlite3.Connection) -> int:
        c.execute("CREATE TABLE IF NOT EXISTS parents (id INTEGER PRIMARY KEY)")
        c.execute(
            "CREATE TABLE IF NOT EXISTS children"
            " (parent REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        return c.execute("INSERT INTO children VALUES (42)").rowcount

    row = store.write_early(broken_reference, lambda _: behind.append(store.write(note(2))))
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY") as failed:
        await row
    assert failed.value.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
    assert [type(error) for error in told] == [sqlite3.IntegrityError]
    with pytest.raises(RanAhead):
        await behind[0]
    assert await store.write(note(3), quick=True) == 1
    assert await notes(store) == [3]
    tables = await store.read(lambda c: c.execute("SELECT name FROM sqlite_master").fetchall())
    assert "children" not in {name for (name,) in tables}


async def test_quick_groups_commit_on_the_writer_thread_where_no_native_thread_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extension cannot start (here: SQLite's functions not found): the store says so
    and commits on the Python writer thread, quick groups and failures alike."""

    def cannot_start(*args: object) -> None:
        raise OSError("SQLite's functions are not found")

    monkeypatch.setattr(commit_thread, "Committer", cannot_start)
    with capture_logs() as logs:
        python = Store(tmp_path / "router.db")
        python.open()
    try:
        [started] = [e for e in logs if e["event"] == "store_commit_thread"]
        assert (started["kind"], started["log_level"]) == ("python", "warning")
        assert python._native is None
        await python.write(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY)"))
        assert [await python.write(note(n), quick=True) for n in (1, 2)] == [1, 1]
        with pytest.raises(sqlite3.IntegrityError):
            await python.write(note(1), quick=True)
        assert await notes(python) == [1, 2]
    finally:
        await python.drain()
        await asyncio.get_running_loop().run_in_executor(None, python.close)


async def test_a_store_closed_with_a_native_commit_in_flight_settles_it(tmp_path: Path) -> None:
    """Closed without a drain: the commit asked for is done before the thread stops, and
    its writes hear of it; a write made after the close fails as made on a closed store."""
    closing = Store(tmp_path / "router.db")
    closing.open()
    await closing.write(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY)"))
    written = closing.write(note(1), quick=True)
    while closing._native_open is None:  # its COMMIT handed to the native thread
        await asyncio.sleep(0)
    await asyncio.get_running_loop().run_in_executor(None, closing.close)
    assert await asyncio.wait_for(written, 5) == 1
    with pytest.raises(sqlite3.ProgrammingError):
        await closing.write(note(2), quick=True)
    reopened = Store(tmp_path / "router.db")
    reopened.open()
    try:
        assert await notes(reopened) == [1]
    finally:
        await reopened.drain()
        await asyncio.get_running_loop().run_in_executor(None, reopened.close)
