"""The disk: while the store cannot commit, intake answers 503 with Retry-After, every failure
is counted and shown, and once a commit succeeds routing resumes by itself, in order.

Failures are SQLite's own, on a real file: a page limit (`max_page_count`) makes a write
that needs more room fail with SQLITE_FULL, "database or disk is full"; another connection
holding the write lock makes the writer's transaction fail with SQLITE_BUSY; a trigger that
refuses a row fails one write alone. Time is the test's clock: the store is checked again
only when the test moves it on.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import router.daemon as daemon_module
from router.io import records
from tests.clock import ManualClock
from tests.conftest import ASSET_TOKEN, Daemon, Peers, StartRouter, execute
from tests.store_faults import fail_before_commit
from tests.test_metrics import scrape, value

DB = "router.db"
REFUSE_DELIVERIES = (
    "CREATE TRIGGER refuse BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'refused'); END"
)


def db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


async def customer(daemon: Daemon, text: str, message_id: str, user: str = "u1") -> Any:
    """The raw answer: status, headers and body."""
    body = {"Event": "Incoming message", "Userid": user, "Message": text, "Messageid": message_id}
    async with daemon.session.post(
        f"{daemon.public}/v1/channels/fb-page-1/events",
        json=body,
        headers={"Authorization": f"Bearer {ASSET_TOKEN}"},
    ) as answer:
        return answer.status, dict(answer.headers), await answer.json()


async def health(daemon: Daemon) -> dict[str, Any]:
    status, body = await daemon.get_debug("/healthz")
    assert status == (200 if body["status"] == "ok" else 503)
    return dict(body)


async def until_health(daemon: Daemon, status: str, **expected: str) -> dict[str, Any]:
    """Until /healthz says `status` with the `expected` fields; the writer thread and the
    loop learn of a failure a moment apart."""
    found: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal found
        found = await health(daemon)
        return found["status"] == status and all(found[k] == v for k, v in expected.items())

    await daemon.until(reached)
    return found


async def advance(daemon: Daemon, clock: ManualClock, seconds: float) -> None:
    """Move time on once the store's next check is due: the failure that arms it may reach
    the loop a moment after the writer saw it."""

    async def armed() -> bool:
        return daemon.router.watch.armed

    await daemon.until(armed)
    clock.advance(seconds)


def assert_refused(answer: Any) -> None:
    status, headers, body = answer
    assert (status, body["error"]) == (503, "store_unavailable"), answer
    assert int(headers["Retry-After"]) >= 1


async def fill_up(daemon: Daemon, tmp_path: Path) -> None:
    """A disk with room for small writes but not for a delivery: every delivery row drags a
    megabyte along, past the writer's page limit."""
    await execute(
        tmp_path / DB,
        "CREATE TABLE ballast (b BLOB)",
        "CREATE TRIGGER heavy AFTER INSERT ON deliveries "
        "BEGIN INSERT INTO ballast VALUES (zeroblob(1000000)); END",
    )

    def limit(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 50}")

    await daemon.router.store.write(limit)


async def free_up(daemon: Daemon, tmp_path: Path) -> None:
    await execute(tmp_path / DB, "DROP TRIGGER heavy")
    await daemon.router.store.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))


async def test_a_full_disk_refuses_intake_with_503_and_routing_resumes_by_itself(
    start_router: StartRouter, peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the directory's filter of identities on disk is read and built: never on the
    # loop, which goes on answering health checks while a recovery rebuilds it.
    built_on: list[str] = []

    def open_keys(conn: sqlite3.Connection) -> Any:
        built_on.append(threading.current_thread().name)
        return records.open_keys(conn)

    monkeypatch.setattr(daemon_module, "open_keys", open_keys)
    clock = ManualClock()
    daemon = await start_router(clock=clock)
    await daemon.customer("m1", "m1")
    await peers.bot.wait_for(1)
    await fill_up(daemon, tmp_path)
    # Stored and acknowledged, then routing it needs room the disk does not have.
    assert (await customer(daemon, "m2", "m2"))[0] == 202
    found = await until_health(daemon, "degraded", store="failing", routing="held")
    assert found["intake"] == "refused"
    assert found["store_failures"] >= 1 and found["since"] is not None
    assert "full" in found["error"]
    # Nothing is acknowledged that is not on disk: refused at once, before any write.
    failures = found["store_failures"]
    assert_refused(await customer(daemon, "m3", "m3"))
    assert (await health(daemon))["store_failures"] == failures
    samples = await scrape(daemon)
    assert value(samples, "router_store_failures_total", reason="full") == failures
    assert value(samples, "router_store_failing") == 1
    assert [b["Message"] for b in peers.bot.bodies] == ["m1"]

    await free_up(daemon, tmp_path)
    with capture_logs() as logs:
        await advance(daemon, clock, 1)
        found = await until_health(daemon, "ok")
    [recovered] = [e for e in logs if e["event"] == "store_recovered"]
    assert recovered["actors_restarted"] is True
    assert len(built_on) == 2  # at the start, and again by the recovery
    assert threading.current_thread().name not in built_on
    assert found["store_failures"] >= failures
    # What was accepted before the failure is routed, before anything accepted after it.
    assert (await customer(daemon, "m4", "m4"))[0] == 202
    assert (await customer(daemon, "m3", "m3"))[0] == 202  # the refused one, sent again
    await peers.bot.wait_for(4)
    assert [b["Message"] for b in peers.bot.bodies] == ["m1", "m2", "m4", "m3"]
    assert value(await scrape(daemon), "router_store_failing") == 0


async def test_a_locked_store_answers_503_counts_each_failure_and_resumes(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = await start_router(clock=clock)
    daemon.router.store.busy_timeout_s = 0.05
    holder = db(tmp_path / DB)
    # Another process holds the write lock (taken off the loop: see `execute`).
    await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
    try:
        assert_refused(await customer(daemon, "m1", "m1"))  # its own write failed: never 500
        found = await health(daemon)
        assert (found["status"], found["store"], found["store_failures"]) == (
            "degraded",
            "failing",
            1,
        )
        assert_refused(await customer(daemon, "m1", "m1"))  # refused without trying
        await advance(daemon, clock, 1)  # one heartbeat, which fails too

        async def probed() -> bool:
            return (await health(daemon))["store_failures"] == 2

        await daemon.until(probed)
        assert value(await scrape(daemon), "router_store_failures_total", reason="locked") == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with capture_logs() as logs:
        await advance(daemon, clock, 1)
        assert await until_health(daemon, "ok") == {"status": "ok", "store_failures": 2}
    # Nothing had been refused but intake: no actor held anything the disk lacks.
    [recovered] = [e for e in logs if e["event"] == "store_recovered"]
    assert recovered["actors_restarted"] is False
    assert (await customer(daemon, "m1", "m1"))[0] == 202
    [got] = await peers.bot.wait_for(1)
    assert got["Message"] == "m1"


async def test_events_accepted_while_a_write_is_refused_are_routed_in_order_after_it(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = await start_router(clock=clock)
    await daemon.customer("a1", "a1")
    await daemon.customer("b1", "b1", user="u2")
    await peers.bot.wait_for(2)
    await execute(tmp_path / DB, REFUSE_DELIVERIES)
    # One write refused for what it holds: the store still commits, so intake goes on.
    for i in range(2, 6):
        assert (await customer(daemon, f"a{i}", f"a{i}"))[0] == 202
        assert (await customer(daemon, f"b{i}", f"b{i}", user="u2"))[0] == 202
    found = await until_health(daemon, "degraded")
    assert (found["store"], found["routing"], found["intake"]) == ("ok", "held", "open")
    assert len(peers.bot.bodies) == 2
    await execute(tmp_path / DB, "DROP TRIGGER refuse")
    await advance(daemon, clock, 1)
    await until_health(daemon, "ok")
    assert (await customer(daemon, "a6", "a6"))[0] == 202
    await peers.bot.wait_for(11)
    for user, prefix in (("u1", "a"), ("u2", "b")):
        got = [b["Message"] for b in peers.bot.bodies if b["Message"][0] == prefix]
        expected = [f"{prefix}{i}" for i in range(1, 7 if prefix == "a" else 6)]
        assert got == expected, user


async def test_a_store_file_deleted_under_the_daemon_is_a_failing_store_never_a_new_one(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    clock = ManualClock()
    daemon = await start_router(clock=clock)
    await daemon.customer("m1", "m1")
    await peers.bot.wait_for(1)
    for name in (DB, f"{DB}-wal", f"{DB}-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    found = await until_health(daemon, "degraded")
    assert (found["store"], found["intake"]) == ("replaced", "refused")
    assert "deleted" in found["error"]
    assert_refused(await customer(daemon, "m2", "m2"))
    assert not daemon.router.watch.armed  # only a restart opens the file the path names now
    clock.advance(60)
    assert (await health(daemon))["store"] == "replaced"
    samples = await scrape(daemon)
    assert (value(samples, "router_store_failures_total", reason="replaced") or 0) >= 1
    assert not (tmp_path / DB).exists()  # nothing was written anywhere the next start reads


async def test_a_store_file_replaced_under_the_daemon_refuses_intake(
    start_router: StartRouter, tmp_path: Path
) -> None:
    daemon = await start_router(clock=ManualClock())
    path = tmp_path / DB
    os.rename(path, tmp_path / "moved.db")
    path.write_bytes((tmp_path / "moved.db").read_bytes())
    assert_refused(await customer(daemon, "m1", "m1"))
    found = await health(daemon)
    assert found["store"] == "replaced" and "replaced" in found["error"]


async def test_customers_writing_through_failures_and_recoveries_lose_and_repeat_nothing(
    start_router: StartRouter, peers: Peers, tmp_path: Path
) -> None:
    """Each customer sends one message at a time and sends it again after a 503: every
    message arrives once, in order, whatever the recoveries interrupted."""
    clock = ManualClock()
    daemon = await start_router(clock=clock)
    users, count = [f"user-{n}" for n in range(5)], 12
    refused = 0

    async def send(user: str) -> None:
        nonlocal refused
        for i in range(count):
            while True:
                status, _, _ = await customer(daemon, f"{user}:{i}", f"{user}-{i}", user)
                if status in (200, 202):
                    break
                assert status == 503
                refused += 1
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.002)

    senders = asyncio.gather(*(send(user) for user in users))
    for n in range(3):
        await execute(tmp_path / DB, REFUSE_DELIVERIES)
        # One more delivery to write, should the customers already be done.
        assert (await customer(daemon, "poke", f"poke-{n}", "poker"))[0] == 202
        await until_health(daemon, "degraded")
        await execute(tmp_path / DB, "DROP TRIGGER refuse")
        await advance(daemon, clock, 60)
        await until_health(daemon, "ok")
    await senders
    await peers.bot.wait_for(len(users) * count, timeout=20)
    await asyncio.sleep(0.1)  # a second copy of anything would arrive within this
    for user in users:
        got = [
            (r.body["Message"], r.headers["webhook-id"])
            for r in peers.bot.received
            if r.body["Message"].startswith(f"{user}:")
        ]
        # At least once: a delivery whose success the fence kept off the disk is made again
        # (the same delivery, by its webhook-id), right after itself; never routed twice.
        once = [item for n, item in enumerate(got) if n == 0 or got[n - 1] != item]
        assert [message for message, _ in once] == [f"{user}:{i}" for i in range(count)], got


async def test_a_message_whose_commit_fails_after_it_was_routed_is_never_sent_and_comes_again(
    start_router: StartRouter, peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its row and its step were written, and its conversation had moved on, but the COMMIT
    failed (an fsync error, which cannot be made here: the file check before the COMMIT
    fails instead). The sender hears 503, the bot nothing, and the message sent again
    arrives once."""
    clock = ManualClock()
    daemon = await start_router(clock=clock)
    store = daemon.router.store
    check_file = store._check_file
    failures = [sqlite3.OperationalError("disk I/O error")]

    def once() -> None:
        if failures:
            raise failures.pop()
        check_file()

    fail_before_commit(monkeypatch, store, once)
    with capture_logs() as logs:
        assert_refused(await customer(daemon, "m1", "m1"))
        await until_health(daemon, "degraded")
    assert any(e["event"] == "intake_commit_failed" for e in logs)
    await advance(daemon, clock, 1)
    await until_health(daemon, "ok")
    assert (await customer(daemon, "m1", "m1"))[0] == 202
    [got] = await peers.bot.wait_for(1)
    assert got["Message"] == "m1"
    [row] = await execute(daemon.router.store.path, "SELECT status FROM inbox")
    assert row[0] == "done"

    cid = str(got["Conversationid"])

    async def settled() -> bool:
        return (await daemon.conversation(cid))["deliveries"] == []

    await daemon.until(settled)  # its answer is recorded: nothing is owed to the bot
    assert [r.body["Message"] for r in peers.bot.received] == ["m1"]
