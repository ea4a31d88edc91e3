"""The SQLite store (WAL): everything the router accepted, on disk before it is acknowledged.

Writes are committed in groups: whatever has queued up while the last commit was on its way
to disk is one transaction. A group of quick writes (the statements of one message's path: a
few rows each) runs its statements on the loop, where they cost microseconds, and hands only
the COMMIT and its fsync to a native thread that never takes the GIL (`commit_thread`; the
Python writer thread where it is not built, and to fail a group whose COMMIT failed); any
other group runs on the writer thread whole. The two never overlap: the next group starts
once the last has committed. If one caller's work raises, the group is committed again on
the thread, each work inside its own savepoint, so that one bad write fails alone. The
writer's connection writes the WAL through a VFS that hands a COMMIT's pages to the kernel in
a few large writes (`wal_vfs`). Reads use a second connection on a second thread; WAL lets
them see every commit without waiting for the writer.

An early write (`write_early`: an event's intake row) is acted on as soon as it
has run inside its group, and that group's COMMIT waits one loop hop, so that the writes it
set off (the message's step) join the same transaction and the same fsync. If such a group
fails, the router hears of it first (`on_ran_ahead`: it fences its actors) and every write
queued behind it is refused (`RanAhead`).

Every failed write is counted in `health`; one the store is to blame for (full disk, I/O
error, read-only or locked file, or the file deleted or replaced, checked before each
commit) makes it failing until the daemon's recovery has seen a commit succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import structlog

from router.io.commit_thread import Committer, commit_error, outcome_of, start_commit_thread
from router.io.disk import FileIdentity, make_private
from router.io.health import StoreHealth, StoreReplaced, WriteRefused
from router.io.metrics import Metrics
from router.io.records import beat
from router.io.wal_vfs import writer_vfs

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
Batch = list[tuple[Work, "Settles"]]
# A pending write: its work, the future that settles once it is durable, whether it is
# quick, and what to call with its result as soon as it has run inside its group
# (`write_early`).
Pending = tuple[Work, "Settles", bool, "_Then | None"]
# A quick group whose statements have run: its writes, their outcomes so far, when it
# started, and whether any was acted on before its commit.
OpenGroup = tuple[Batch, list["Outcome"], float, bool]


class Settles(Protocol):
    """What hears a write's outcome: a future, or a call made in its place (`write_then`)."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class _Then:
    """An early write's `then`, called once: inside its group, or once durable."""

    __slots__ = ("call", "called")

    def __init__(self, call: Callable[[Any], None]) -> None:
        self.call = call
        self.called = False


class _Direct:
    """Settled in place of a future (`write_then`): the outcome goes straight to one call."""

    __slots__ = ("call", "log", "settled")

    def __init__(self, call: Callable[[Exception | None], None], log: Any) -> None:
        self.call = call
        self.log = log
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, _result: object) -> None:
        self._settle(None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    def _settle(self, error: Exception | None) -> None:
        self.settled = True
        _hand_over(self.log, self.call, error)


def _hand_over(log: Any, call: Callable[[Any], None], value: Any) -> None:
    """A caller's `then`: what it raises is the caller's fault, not the store's, and the
    group (and the other writes' calls) go on."""
    try:
        call(value)
    except Exception:
        log.exception("store_then_failed")


class RanAhead(WriteRefused):
    """Refused: queued behind a group whose rows were acted on before their commit, and
    that commit failed. What follows from those rows must not land."""


GROUP_LIMIT = 512
READ_BATCH = 64
# How long a group waits for a write lock another process holds before it fails as locked.
BUSY_TIMEOUT_S = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    inbox_id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    source_id TEXT NOT NULL,
    dedupe_key TEXT,
    body BLOB,
    status TEXT NOT NULL DEFAULT 'pending',
    received_at REAL NOT NULL,
    UNIQUE (source, source_id, dedupe_key)
);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (status) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS inbox_poisoned ON inbox (inbox_id) WHERE status = 'poisoned';
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    conv_key TEXT NOT NULL,
    status TEXT NOT NULL,
    state BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_key ON conversations (conv_key, status);
CREATE TABLE IF NOT EXISTS ccsp_sessions (
    ccsp_conversation_id TEXT PRIMARY KEY,
    ccsp TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    status TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    dest_kind TEXT NOT NULL,
    dest_id TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    next_attempt_at REAL,
    last_error TEXT,
    reason TEXT,
    parked_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_conversation ON deliveries (conversation_id, delivery_id);
CREATE INDEX IF NOT EXISTS deliveries_dest ON deliveries (dest_kind, dest_id, status);
CREATE TABLE IF NOT EXISTS integrations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    access_token TEXT NOT NULL,
    webhook_token TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbound (
    asset TEXT NOT NULL,
    user TEXT NOT NULL,
    message_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (asset, user, message_id)
);
CREATE TABLE IF NOT EXISTS webhook_tokens (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    token TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
"""

# Columns added after a table was first created, before the schema had a version:
# (table, column, declaration).
ADDED_COLUMNS = (
    ("deliveries", "reason", "TEXT"),
    ("deliveries", "parked_at", "REAL"),
    ("inbox", "conversation_id", "TEXT"),
    ("inbox", "error", "TEXT"),
)


class StoreTooNew(sqlite3.DatabaseError):
    """The file was written by a newer version of the router, whose schema this one does not
    know: refusing it is safer than reading rows half-understood."""


def _version_1(conn: sqlite3.Connection) -> None:
    """The schema as first versioned; a store from before versions gains what it lacks."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    for table, column, declaration in ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _version_2(conn: sqlite3.Connection) -> None:
    """Transcripts move out of the conversation's state into rows of their own, so that a
    resident conversation does not carry them and a message does not rewrite them."""
    conn.execute(
        "CREATE TABLE transcript (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "conversation_id TEXT NOT NULL, entry BLOB NOT NULL)"
    )
    conn.execute("CREATE INDEX transcript_conversation ON transcript (conversation_id, seq)")
    rows = conn.execute("SELECT conversation_id, state FROM conversations").fetchall()
    for cid, state in rows:
        for entry in orjson.loads(state).get("transcript", ()):
            conn.execute(
                "INSERT INTO transcript (conversation_id, entry) VALUES (?, ?)",
                (cid, orjson.dumps(entry)),
            )


def _version_3(conn: sqlite3.Connection) -> None:
    """One row the daemon rewrites to learn whether the store commits again after failing."""
    conn.execute("CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)")


def _version_4(conn: sqlite3.Connection) -> None:
    """What retention and erasure look up: closed conversations by age, a conversation's
    agent sessions."""
    conn.execute(
        "CREATE INDEX conversations_closed ON conversations (updated_at) WHERE status = 'closed'"
    )
    conn.execute("CREATE INDEX ccsp_sessions_conversation ON ccsp_sessions (conversation_id)")


def _version_5(conn: sqlite3.Connection) -> None:
    """Secrets being replaced, each good until its overlap ends: kept on disk so that a
    restart within the overlap does not refuse a peer that has not changed over yet."""
    conn.execute(
        "CREATE TABLE retired_secrets (kind TEXT NOT NULL, owner TEXT NOT NULL, "
        "value TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (kind, owner, value))"
    )


# Migration N brings a store from `PRAGMA user_version` N-1 to N. Append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _version_1,
    _version_2,
    _version_3,
    _version_4,
    _version_5,
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to the current schema, one numbered
    step at a time, each recorded in `PRAGMA user_version` as it completes."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreTooNew(
            f"schema version {version} was written by a newer router; this one knows up to "
            f"{len(MIGRATIONS)}"
        )
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        # One transaction per step, its version number included: a crash leaves the store
        # at the step before or the step after, never between.
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def connect(path: Path, vfs: str | None = None) -> sqlite3.Connection:
    """A connection to the store's file, through `vfs` when one is named (`wal_vfs`)."""
    if vfs is None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    else:
        uri = f"{path.absolute().as_uri()}?vfs={vfs}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL syncs the WAL at every commit before its frames are published to readers, which
    # is what lets the writer's VFS hold them until that sync.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Store:
    def __init__(
        self, path: Path, metrics: Metrics | None = None, now: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.metrics = metrics
        self.now = now
        self.busy_timeout_s = BUSY_TIMEOUT_S
        # Owned by the loop: writes waiting for the next group, and whether a group is on
        # its way to disk (the write connection is the commit thread's until it lands).
        self._pending: deque[Pending] = deque()
        # The quick group whose statements have run on the loop and whose COMMIT waits a
        # moment for the writes that follow from it (`_seal`).
        self._open: OpenGroup | None = None
        # The early writes of a group the writer thread runs whole, whose `then` waits for
        # its commit (`_then_once_durable`).
        self._thens_at_commit: list[tuple[Settles, _Then]] = []
        # Called on the loop, before anything else hears of it, when a group fails whose
        # writes were made known before their commit (`write_early`).
        self.on_ran_ahead: Callable[[BaseException], None] = lambda error: None
        self._quick = False  # whether quick groups may run their statements on the loop
        self._closed = False
        self._busy = False
        self._flush_handle: asyncio.Handle | None = None
        self._drained: list[asyncio.Future[None]] = []
        self._conn: sqlite3.Connection | None = None
        # The quick groups' COMMIT on a native thread, where one runs (`commit_thread`); the
        # loop that watches it; the group it is committing.
        self._native: Committer | None = None
        self._native_loop: asyncio.AbstractEventLoop | None = None
        self._native_open: OpenGroup | None = None
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._queue_lock = threading.Lock()  # `_closed` set, or a job queued, never between
        self._writer: threading.Thread | None = None
        # Reads: one thread, fed a queue; what it finds is handed back a batch at a time.
        self._reads: queue.SimpleQueue[_Read | None] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._read_conn: sqlite3.Connection | None = None
        # The read connection serves the reader thread and start-up's reads on the loop.
        self._read_lock = threading.Lock()
        # The debug port's reads: their own connection and thread, made on first use.
        self._aside: ThreadPoolExecutor | None = None
        self._aside_conn: sqlite3.Connection | None = None
        self.health = StoreHealth(now, metrics)
        self.identity: FileIdentity | None = None
        self._log = structlog.get_logger("router.store")

    def open(self) -> None:
        """Create the file and schema; sqlite3/OS errors go to the caller, who names the path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        make_private(self.path)
        conn = connect(self.path)
        self.identity = FileIdentity.of(self.path)
        migrate(conn)
        vfs = writer_vfs()
        if vfs is not None:
            # The writer's VFS holds WAL frames until the commit's sync, so its connection
            # must never spill frames mid-transaction (kept from it below); a migration may
            # outgrow the cache, and runs on the default VFS before it.
            conn.close()
            conn = connect(self.path, vfs)
        # A lock held by another process must never stall the loop: the loop's BEGIN fails
        # at once, and the group waits for the lock on the writer thread instead. That holds
        # in WAL mode only, where a commit never waits for readers; on a file system that
        # keeps the file in another mode, every group runs on the writer thread.
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        self._quick = mode == "wal"
        if self._quick:
            conn.execute("PRAGMA busy_timeout=0")
            # Nor must a disk that stalls, so the loop's statements make no writes to a file
            # (the WAL index, a shared mapping, aside): dirty pages past the cache would be
            # spilled to the WAL mid-transaction, and the journal of the savepoint that late
            # writes join in to a temporary file past 64 KiB. Both stay in memory, as large as
            # the transaction (a group holds at most GROUP_LIMIT writes by key; the writer
            # thread's own work goes in batches), until the COMMIT on its thread, and
            # SQLite's memory shrinks back to its cache after it.
            conn.execute("PRAGMA cache_spill=OFF")
            conn.execute("PRAGMA temp_store=MEMORY")
        self._conn = conn
        if self._quick:
            self._native = start_commit_thread(conn, self.path, self.identity)
        self._writer = threading.Thread(target=self._write_loop, name="store-write", daemon=True)
        self._writer.start()
        self._read_conn = connect(self.path)
        self._reader = threading.Thread(target=self._read_loop, name="store-read", daemon=True)
        self._reader.start()

    def write(
        self, work: Callable[[sqlite3.Connection], T], *, quick: bool = False
    ) -> asyncio.Future[T]:
        """Queue `work` for the next group commit; the future resolves once it is durable.

        `quick` work writes a few rows by key and nothing else: it may run on the loop.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(_closed_store())
            return future
        self._enqueue((work, future, quick, None))
        return future

    def write_then(
        self, work: Callable[[sqlite3.Connection], Any], then: Callable[[Exception | None], None]
    ) -> None:
        """A quick write whose outcome is heard by `then` (None once durable, or the error),
        called on the loop where the commit is reported, in the order the writes were made:
        no future to settle and no loop hop between the commit and what follows from it."""
        done = _Direct(then, self._log)
        if self._closed:  # heard as a future's failure would be: after the caller's turn
            asyncio.get_running_loop().call_soon(done.set_exception, _closed_store())
            return
        self._enqueue((work, done, True, None))

    def write_early(
        self, work: Callable[[sqlite3.Connection], T], then: Callable[[T], None]
    ) -> asyncio.Future[T]:
        """A quick write whose result is acted on before it is durable.

        `then` is called on the loop with the work's result as soon as the work has run
        inside its group, before the COMMIT, which waits a loop hop for what `then` set off
        (an event routed to its conversation, whose step is written in time to join the same
        group and the same fsync). Nothing outside the process may hear of it before the
        future settles. If the group fails, `on_ran_ahead` is called first and every write
        queued behind it fails too: they may follow from a write that is not on disk. A
        group that cannot run on the loop calls `then` once it is durable instead.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(_closed_store())
            return future
        self._enqueue((work, future, True, _Then(then)))
        return future

    def _enqueue(self, pending: Pending) -> None:
        self._pending.append(pending)
        if not self._busy and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self) -> None:
        """Until every write made so far has committed (or failed)."""
        if self._busy or self._pending:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drained.append(waiter)
            await waiter

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self.read_soon(work)

    def read_soon(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """`read` as a future, for a caller that goes on from a callback instead of a task."""
        assert self._read_conn is not None or self._closed, "store is not open"
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(_closed_store())
            return future
        self._reads.put((work, future))
        return future

    async def read_aside(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """A slow scan (a filter over every conversation, for people looking at the daemon,
        or the directory's filter of identities at start and at a recovery) waits on its own
        thread, never in front of the reads that intake and conversation loads wait on."""
        if self._aside is None:
            self._aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-look")
        return await asyncio.get_running_loop().run_in_executor(self._aside, self._look, work)

    def _look(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._aside_conn is None:
            self._aside_conn = connect(self.path)
        return work(self._aside_conn)

    def read_now(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """A read on the caller's thread: start-up's, and recovery's while the doors are open."""
        return self._locked(work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._read_conn
        assert conn is not None, "store is not open"
        with self._read_lock:
            return work(conn)

    def probe(self) -> asyncio.Future[None]:
        """A real commit, however little is written: whether the store commits again."""
        now = self.now()
        return self.write(lambda conn: beat(conn, now))

    def check_identity(self) -> str | None:
        """Whether the path still names the file opened; one that does not makes the store
        failing for good (a restart opens the file the path names now)."""
        problem = None if self.identity is None else self.identity.problem(self.path)
        if problem is not None:
            self.health.mark_replaced(problem)
        return problem

    def close(self) -> None:
        """After `drain`: a write or read made from now on fails as made on a closed store."""
        with self._queue_lock:
            self._closed = True
        native, self._native = self._native, None
        if native is not None:
            native.stop()  # after the commit it was asked for, if any
            if self._native_loop is not None:
                # Heard on the loop, then let go of: its eventfd closes with it.
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._native_loop.call_soon_threadsafe(self._native_closed, native)
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._reader is not None:
            self._reads.put(None)
            self._reader.join()
            self._reader = None
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None
        if self._aside is not None:
            self._aside.shutdown(wait=True)
            self._aside = None
        if self._aside_conn is not None:
            self._aside_conn.close()
            self._aside_conn = None

    def _native_closed(self, native: Committer) -> None:
        assert self._native_loop is not None
        self._native_loop.remove_reader(native.fileno())
        self._native_done(native)

    def _read_loop(self) -> None:
        """Reads in the order asked, each answer handed back with those found alongside it:
        one wake-up of the loop per batch, not one per read."""
        while True:
            item = self._reads.get()
            batch: list[_Read] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= READ_BATCH:
                    break
                try:
                    item = self._reads.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._answer(batch)
            if item is None:
                return

    def _answer(self, batch: list[_Read]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for work, future in batch:
            settled = by_loop.setdefault(future.get_loop(), [])
            try:
                settled.append((future, self._locked(work), None))
            except Exception as exc:
                settled.append((future, None, exc))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(_settle_all, settled)

    # -- the group commit: the loop's side -------------------------------------------------

    def _flush(self) -> None:
        """Start the next group: its statements here when every work in it is quick, the
        COMMIT on the native thread (`_seal`); otherwise the whole group on the writer
        thread."""
        self._flush_handle = None
        if self._busy or not self._pending:
            return
        if self._conn is None or self._closed:  # nothing will commit these any more
            while self._pending:
                _, future, _, _ = self._pending.popleft()
                if not future.done():
                    future.set_exception(_closed_store())
            self._wake_drained()
            return
        size = min(len(self._pending), GROUP_LIMIT)
        taken = [self._pending.popleft() for _ in range(size)]
        batch: Batch = [(work, future) for work, future, _, _ in taken]
        self._busy = True
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self._quick and all(quick for _, _, quick, _ in taken):
            outcomes = self._statements(self._conn, batch)
            if isinstance(outcomes, list):
                early = self._ran(taken, outcomes)
                self._open = (batch, outcomes, started, early)
                if early:
                    # The COMMIT waits a hop: the actors told by what just ran take their
                    # turns, and their writes (an event's step, behind its row) join it.
                    loop.call_soon(self._seal)
                else:
                    self._seal()
                return
            if outcomes is _RAISED:  # one work raised: straight to a savepoint each
                self._then_once_durable(taken)
                self._to_writer(lambda: self._commit(batch, started, loop, apart=True), batch)
                return
        self._then_once_durable(taken)
        self._to_writer(lambda: self._commit(batch, started, loop), batch)

    def _seal(self) -> None:
        """Run the quick writes queued since the group's statements, in order, inside the
        same transaction, then hand its COMMIT to the native thread (or the writer thread)."""
        assert self._open is not None
        batch, outcomes, started, early = self._open
        self._open = None
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is None or self._closed:  # closed without a drain: nothing will commit these
            self._abandon(batch, _closed_store(), early)
            return
        try:
            joining: list[Pending] = []
            while self._pending and self._pending[0][2] and len(batch) + len(joining) < GROUP_LIMIT:
                joining.append(self._pending.popleft())
            if joining:
                more = self._joined(conn, [(work, future) for work, future, _, _ in joining])
                if more is None:  # no savepoint: they go to the next group
                    self._pending.extendleft(reversed(joining))
                else:
                    early = self._ran(joining, more) or early
                    batch = batch + [(work, future) for work, future, _, _ in joining]
                    outcomes = outcomes + more
        except Exception as exc:  # the store's own fault: the group fails, the store goes on
            self._log.error("store_commit_fault", error=repr(exc), batch=len(batch))
            self._abandon(batch, exc, early)
            return
        # Where the native thread does not take it (none runs, the file was replaced, the
        # store is closing), the writer thread does; its queue fails the group once closed.
        native = self._native
        group = (batch, outcomes, started, early)
        if (
            native is not None
            and self.health.replaced is None
            and self._commit_natively(native, loop, group)
        ):
            return
        self._to_writer(
            lambda: self._commit_prepared(batch, outcomes, started, loop, early), batch, early
        )

    def _commit_natively(
        self, native: Committer, loop: asyncio.AbstractEventLoop, group: OpenGroup
    ) -> bool:
        """Whether the native thread took the COMMIT; not when the store closes meanwhile
        or the loop is not the one that watches the thread."""
        if self._native_loop is None:
            loop.add_reader(native.fileno(), self._native_done, native)
            self._native_loop = loop
        elif self._native_loop is not loop:
            return False
        assert self._native_open is None
        self._native_open = group
        try:
            native.commit()
        except RuntimeError:  # stopped by `close`: no commit will come
            self._native_open = None
            return False
        return True

    def _native_done(self, native: Committer) -> None:
        """The native thread's COMMIT is done: settled here when it landed; when it did not,
        `_commit_prepared` on the writer thread fails the group as if its own COMMIT had
        failed, or checks the file again and says why it is not the store's, with the
        rollback."""
        outcome = outcome_of(native)
        if outcome is None or self._native_open is None:
            return
        batch, outcomes, started, early = self._native_open
        self._native_open = None
        if not outcome.replaced and outcome.rc == 0:
            self._observe(len(batch), started)
            self._committed(outcomes)
            return
        failed = None if outcome.replaced else commit_error(outcome)
        if self._closed:  # no writer thread now
            error = failed or _closed_store()
            self._committed([(future, None, error) for _, future in batch], early)
            return
        loop = asyncio.get_running_loop()
        self._to_writer(
            lambda: self._commit_prepared(batch, outcomes, started, loop, early, failed),
            batch,
            early,
        )

    def _to_writer(self, job: Callable[[], None], batch: Batch, early: bool = False) -> None:
        """Queue a job for the writer thread, or fail its group when the store is closing:
        `close` sets `_closed` under the same lock before it queues the writer's end, so a
        job queued here always runs before that end."""
        with self._queue_lock:
            if not self._closed:
                self._queue.put(job)
                return
        self._abandon(batch, _closed_store(), early)

    def _abandon(self, batch: Batch, error: Exception, early: bool) -> None:
        """Fail an open group on the loop, its transaction rolled back (by `close` itself,
        once closing: the connection is being closed on another thread)."""
        conn = self._conn
        if conn is not None and not self._closed:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        self._committed([(future, None, error) for _, future in batch], early)

    def _ran(self, taken: list[Pending], outcomes: list[Outcome]) -> bool:
        """Call the `then` of each early write that ran; whether there was any."""
        early = False
        for (_, _, _, then), (_, result, error) in zip(taken, outcomes, strict=True):
            if then is not None and not then.called and error is None:
                early = True
                self._call(then, result)
        return early

    def _then_once_durable(self, taken: list[Pending]) -> None:
        """Early writes in a group the writer thread runs whole: each `then` waits for the
        commit (an early write that ran on the loop has had its `then` called)."""
        self._thens_at_commit = [
            (future, then) for _, future, _, then in taken if then is not None and not then.called
        ]

    def _then_at_commit(self, outcomes: list[Outcome]) -> None:
        """Before the group's futures settle, so that whoever awaits one wakes to find its
        `then` done, as when it runs inside the group; never for one that failed, or whose
        caller gave up waiting."""
        waiting, self._thens_at_commit = self._thens_at_commit, []
        if not waiting:
            return
        thens = {id(future): then for future, then in waiting}
        for future, result, error in outcomes:
            then = thens.get(id(future))
            # Done before it settles: its caller cancelled it.
            if then is not None and error is None and not future.done() and not then.called:
                self._call(then, result)

    def _call(self, then: _Then, result: Any) -> None:
        then.called = True
        _hand_over(self._log, then.call, result)

    def _ran_ahead(self, error: BaseException) -> None:
        """A group failed whose writes were made known before their commit: whatever
        followed from them is queued behind it, or made from now on, and must not land."""
        try:
            self.on_ran_ahead(error)
        except Exception:
            self._log.exception("store_ran_ahead_failed")
        refused = RanAhead(f"not written: an earlier write it may follow from failed: {error}")
        while self._pending:
            _, future, _, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(refused)

    def _joined(self, conn: sqlite3.Connection, batch: Batch) -> list[Outcome] | None:
        """Late writes in a savepoint of the open transaction, so that one that raises takes
        back only them, never the writes already made known. It then fails with its own
        error, never tried again (a step's write that failed has fenced the actors, and must
        be heard of as failed), and the others are done again, each in its own savepoint.
        None when even a savepoint cannot be taken: they go to the next group."""
        try:
            conn.execute("SAVEPOINT joining")
        except sqlite3.Error:
            return None
        outcomes, raised = _run_works(conn, batch)
        with contextlib.suppress(sqlite3.Error):
            if raised is None:
                conn.execute("RELEASE joining")
                return outcomes
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK TO joining")
            conn.execute("RELEASE joining")
        if raised is None:
            return None
        index, error = raised
        outcomes = _each_apart(conn, batch[:index])
        outcomes.append((batch[index][1], None, error))
        outcomes += _each_apart(conn, batch[index + 1 :])
        self._counted(outcomes)
        return outcomes

    def _statements(self, conn: sqlite3.Connection, batch: Batch) -> list[Outcome] | object:
        """The group's statements, inside its transaction; `_BUSY` when the lock is held
        elsewhere and `_RAISED` when a work raises, for the writer thread to do the group
        again the careful way."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return _BUSY
        outcomes, raised = _run_works(conn, batch)
        if raised is not None:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return _RAISED
        return outcomes

    def _committed(self, outcomes: list[Outcome], ran_ahead: bool = False) -> None:
        """`ran_ahead`: the group failed whole, and some of its rows had been acted on."""
        failed = next((error for _, _, error in outcomes if error is not None), None)
        if failed is not None and ran_ahead:
            self._ran_ahead(failed)
        self._then_at_commit(outcomes)
        _settle_all(outcomes)
        self._busy = False
        if self._pending:
            # Not at once: what just settled wakes its waiters, and they tell actors, whose
            # turns run in a callback scheduled after this one. Two hops later, the writes
            # those turns make (the step of an event routed once durable, right behind its
            # row) join the next group instead of waiting a whole commit for the one after.
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)
        else:
            self._wake_drained()

    def _flush_soon(self) -> None:
        self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _wake_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- the group commit: the writer thread's side ----------------------------------------

    def _write_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job()

    def _commit_prepared(
        self,
        batch: Batch,
        outcomes: list[Outcome],
        started: float,
        loop: asyncio.AbstractEventLoop,
        ran_ahead: bool,
        failed: sqlite3.Error | None = None,
    ) -> None:
        """`failed`: the native thread's COMMIT failed so; the group fails here as if it had
        failed here, with its rollback."""
        conn = self._conn
        assert conn is not None
        lost = True
        try:
            if failed is not None:
                raise failed
            self._check_file()
            conn.execute("COMMIT")
            lost = False
        except sqlite3.Error as exc:
            outcomes = self._failed(conn, batch, exc)
        except Exception as exc:
            outcomes = self._fault(conn, batch, exc)
        self._report(outcomes, len(batch), started, loop, ran_ahead and lost)

    def _commit(
        self,
        batch: Batch,
        started: float,
        loop: asyncio.AbstractEventLoop,
        *,
        apart: bool = False,
    ) -> None:
        conn = self._conn
        assert conn is not None
        try:
            if apart:
                outcomes = self._commit_apart(conn, batch)
            else:
                try:
                    outcomes = self._commit_together(conn, batch)
                except _WorkFailed:
                    # One caller's work raised: commit the others without it, each in a
                    # savepoint so that a bad write fails alone. Rare, so the common group
                    # pays for no savepoints.
                    outcomes = self._commit_apart(conn, batch)
                else:
                    self._counted(outcomes)
        except sqlite3.Error as exc:
            outcomes = self._failed(conn, batch, exc)
        except Exception as exc:
            outcomes = self._fault(conn, batch, exc)
        self._report(outcomes, len(batch), started, loop)

    def _fault(self, conn: sqlite3.Connection, batch: Batch, exc: Exception) -> list[Outcome]:
        """Not SQLite's error but the store's own: the group fails, and its callers hear so,
        rather than waiting for ever on a writer thread that died."""
        self._log.error("store_commit_fault", error=repr(exc), batch=len(batch))
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return [(future, None, exc) for _, future in batch]

    def _report(
        self,
        outcomes: list[Outcome],
        size: int,
        started: float,
        loop: asyncio.AbstractEventLoop,
        ran_ahead: bool = False,
    ) -> None:
        self._observe(size, started)
        # One wake-up of the loop per commit, not one per write in it.
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(self._committed, outcomes, ran_ahead)

    def _observe(self, size: int, started: float) -> None:
        if self.metrics is not None:
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self.metrics.commit_batch.observe(size)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting up to `busy_timeout_s` for a write lock held elsewhere."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # or an extended code
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _commit_together(self, conn: sqlite3.Connection, batch: Batch) -> list[Outcome]:
        outcomes: list[Outcome] = []
        self._begin(conn)
        for work, future in batch:
            try:
                outcomes.append((future, work(conn), None))
            except Exception as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise _WorkFailed from exc
        self._check_file()
        conn.execute("COMMIT")
        return outcomes

    def _commit_apart(self, conn: sqlite3.Connection, batch: Batch) -> list[Outcome]:
        try:
            self._begin(conn)
            outcomes = _each_apart(conn, batch)
            self._check_file()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            return self._failed(conn, batch, exc)
        self._counted(outcomes)
        return outcomes

    def _check_file(self) -> None:
        """Before a commit: the path must still name the file this connection writes to,
        or the commit would land where the next start never looks."""
        problem = self.health.replaced
        if problem is None and self.identity is not None:
            problem = self.identity.problem(self.path)
            if problem is not None:
                self.health.replaced = problem
        if problem is not None:
            raise StoreReplaced(problem)

    def _counted(self, outcomes: list[Outcome]) -> None:
        """Every write that failed on its own, but not one the router refused to attempt."""
        for _, _, error in outcomes:
            if error is not None and not isinstance(error, WriteRefused):
                self.health.failed(error)

    def _failed(self, conn: sqlite3.Connection, batch: Batch, exc: sqlite3.Error) -> list[Outcome]:
        first = not self.health.failing
        # Before the next batch: a write queued after this one must find the store failing.
        self.health.failed(exc, writes=len(batch))
        if first:  # then counted, not logged, until the store commits again
            self._log.error("store_commit_failed", error=str(exc), batch=len(batch))
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return [(future, None, exc) for _, future in batch]


def _closed_store() -> sqlite3.ProgrammingError:
    return sqlite3.ProgrammingError("the store is closed")


_BUSY = object()  # the loop's BEGIN found the write lock held elsewhere
_RAISED = object()  # a work raised on the loop


class _WorkFailed(Exception):
    """A caller's work raised inside a shared transaction, which is rolled back."""


Outcome = tuple[Settles, Any, BaseException | None]
_Read = tuple[Work, asyncio.Future[Any]]


def _each_apart(conn: sqlite3.Connection, batch: Batch) -> list[Outcome]:
    """Each work in its own savepoint, so that one that raises fails alone."""
    outcomes: list[Outcome] = []
    for work, future in batch:
        conn.execute("SAVEPOINT work")
        try:
            result = work(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO work")
            outcomes.append((future, None, exc))
        else:
            outcomes.append((future, result, None))
        conn.execute("RELEASE work")
    return outcomes


def _run_works(
    conn: sqlite3.Connection, batch: Batch
) -> tuple[list[Outcome], tuple[int, Exception] | None]:
    """Each work's result, in order, up to the first that raises: its index and error, for
    the caller to undo."""
    outcomes: list[Outcome] = []
    for index, (work, future) in enumerate(batch):
        try:
            outcomes.append((future, work(conn), None))
        except Exception as exc:
            return outcomes, (index, exc)
    return outcomes, None


def _settle_all(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
