"""Scale: memory per conversation, activation of a passivated one, SIGTERM to exit.

    python -m bench.scale [--case memory|activation|shutdown|all] [--conversations N]
                          [--no-passivation] [--breakdown] [--breakdown-conversations 20000]
                          [--activation-conversations 20000] [--activation-max-live 1000]
                          [--activations 1000] [--concurrency 64] [--window 64]

memory      N conversations (default 100,000), each opened by one customer message that is
            delivered to a fake bot in another process (bench.throughput's: answers 200,
            counts). Driven below HTTP: one `RouteChannel` told to the core per message, the
            path intake takes once an event is stored (as tests/test_actor_scale.py does), at
            most `--window` messages ahead of the bot. The daemon's RSS after minus before,
            divided by N: once with `max_live` >= N (all resident), once with the default
            `max_live` (passivation). `--breakdown` adds a tracemalloc run on fewer
            conversations: bytes per conversation by allocation site.
activation  Conversations opened, then the daemon restarted on the same store with a small
            `max_live`, so all are passivated (state only on disk); then one message at a time
            to passivated ones, timed where the daemon's edge sees it (see `TimedEdge`).
shutdown    `router serve` as a real process, N conversations opened over HTTP, then SIGTERM,
            timed until the process has exited.

Each case runs in a fresh process, so that memory one freed (and the allocator kept) or
threads one started never show in another's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import linecache
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from actors.runtime import Scheduler
from bench.throughput import CHECKOUT, TOKEN, free_port, router_config, spawn, wait_up
from router.cli import configure_logging, tune_interpreter
from router.config.settings import load_config
from router.daemon import Router
from router.domain.commands import RouteChannel
from router.domain.events import CustomerEvent
from router.domain.rules import route_channel_event
from router.domain.state import conversation_key
from router.io.edge import Answer, IoEdge
from router.io.effects import Attempt, Effect, Load, Loaded, Persist
from router.io.records import InboxDone

ROOT = Path(__file__).resolve().parent.parent
RESULT = "RESULT "
# Messages told but not yet at the bot, by default: as many as the HTTP clients of the
# shutdown case (and of bench.throughput) keep in flight.
WINDOW = 64
# Opened and settled before the first measurement: connections, caches and code paths that
# any daemon has warmed up after its first minutes are not charged to the conversations.
WARMUP = 1000
LOST_AFTER_S = 5.0  # quiet this long and still short of messages: they were dropped
FRAMES = 6  # tracemalloc depth: enough to reach a project line from library code


# -- processes and their figures -------------------------------------------------------------


def proc_status(pid: int | str, name: str) -> int:
    """A field of /proc/PID/status as a number (kB fields in bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            number, _, unit = value.strip().partition(" ")
            return int(number) * (1024 if unit == "kB" else 1)
    raise KeyError(name)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FakeBot:
    """bench.throughput's fake bot, in its own process so that its work and memory are not
    the daemon's."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.url = f"{base}/bot"

    async def received(self) -> int:
        async with self.session.get(f"{self.base}/count") as answer:
            return int((await answer.json())["received"])


@contextlib.asynccontextmanager
async def fake_bot(session: aiohttp.ClientSession) -> AsyncIterator[FakeBot]:
    port = free_port()
    proc = spawn("-m", "bench.throughput", "--serve-bot", str(port))
    try:
        bot = FakeBot(session, f"http://127.0.0.1:{port}")
        await wait_up(session, f"{bot.base}/count")
        yield bot
    finally:
        stop_process(proc)


def write_config(
    directory: Path, bot_url: str, max_live: int | None, port: int = 0, debug_port: int = 0
) -> Path:
    """bench.throughput's daemon config; `max_live` None keeps the daemon's default."""
    text = router_config(port, debug_port, bot_url, directory / "router.db")
    if max_live is not None:
        text += f"[conversations]\nmax_live = {max_live}\n"
    path = directory / "router.toml"
    path.write_text(text)
    return path


def count_deliveries(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])


# -- an in-process daemon, driven below HTTP ----------------------------------------------------


class Opener:
    """Tells the core what intake tells it for a stored customer message: a `RouteChannel`
    for the asset's route. No inbox row is written, so the figures are of the conversations
    alone; the `InboxDone` of each step then updates no row."""

    def __init__(self, router: Router, bot: FakeBot, window: int, told: int = 0) -> None:
        asset = router.config.asset("asset")
        assert asset is not None
        route = route_channel_event(router.config, asset)
        assert route is not None
        self.router = router
        self.bot = bot
        self.asset = asset
        self.route = route
        self.window = window
        self.told = told  # every message told is one the bot receives

    def key(self, user: str) -> str:
        return conversation_key(self.asset.id, user, self.route.service, self.route.target)

    def tell(self, user: str) -> int:
        """Its number: the message is `m-<number>`, its (unwritten) inbox row `<number>`."""
        self.told += 1
        n = self.told
        # Its own dict and text per message, as a parsed request body would have.
        fields = {"Message": f"hello from {user}", "MessageType": "text", "Media": ""}
        event = CustomerEvent(n, "Incoming message", f"m-{n}", fields)
        message = RouteChannel(self.route, self.asset.id, self.asset.channel, user, event)
        self.router.core.tell(message)
        return n

    async def open(self, users: Iterable[str]) -> None:
        """One message for each user, at most `window` ahead of the bot; returns once they
        are all told."""
        received = await self.bot.received()
        for user in users:
            while self.told - received >= self.window:
                await asyncio.sleep(0.002)
                received = await self.bot.received()
            self.tell(user)


def named(prefix: str, count: int) -> Iterable[str]:
    """User names made as they are told, so the bench holds no list of them."""
    return (f"{prefix}-{n}" for n in range(count))


async def settle(router: Router, bot: FakeBot, expected: int, timeout: float) -> dict[str, Any]:
    """Until the bot has every message, no delivery is owed and the core is loading,
    retiring and restarting nothing: a quiet daemon, with at most `max_live` resident."""
    max_live = router.config.conversations.max_live
    seen: tuple[int, int, dict[str, Any]] = (0, 0, {})
    idle_since: float | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                received = await bot.received()
                owed = await router.store.read(count_deliveries)
                view = await router.inspect("core")
                seen = (received, owed, view)
                busy = view["loading"] + view["retiring"] + view["restarting"]
                if not owed and not busy:
                    if received >= expected and view["resident"] <= max_live:
                        return view
                    # Nothing owed, nothing under way, and still short: those are lost.
                    idle_since = idle_since or time.perf_counter()
                    if time.perf_counter() - idle_since > LOST_AFTER_S:
                        raise RuntimeError(
                            f"{expected - received:,} of {expected:,} messages never reached "
                            f"the bot, with nothing owed or under way (see the daemon's log)"
                        )
                else:
                    idle_since = None
                await asyncio.sleep(0.02)
    except TimeoutError:
        received, owed, view = seen
        raise TimeoutError(
            f"not quiet after {timeout:.0f}s: bot received {received:,} of {expected:,}, "
            f"{owed:,} deliveries owed, core {view}"
        ) from None


def settle_timeout(conversations: int) -> float:
    return 120.0 + conversations / 500


class CountingEdge(IoEdge):
    """The daemon's edge, counting the loads the core asks of it: one per conversation the
    core has to read from the store (its state only on disk), more when it reads again."""

    loads = 0

    def submit(self, effect: Effect) -> None:
        if isinstance(effect, Load):
            self.loads += 1
        super().submit(effect)


E = TypeVar("E", bound=CountingEdge)
_tuned: list[bool] = []


@contextlib.asynccontextmanager
async def workspace() -> AsyncIterator[tuple[Path, FakeBot]]:
    """A directory for the store and a fake bot in another process; logging set up as
    `router serve` sets it up (to stderr, which the orchestrator keeps in a file)."""
    configure_logging("json", "info")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        async with aiohttp.ClientSession() as session, fake_bot(session) as bot:
            yield Path(tmp), bot


@contextlib.asynccontextmanager
async def daemon(
    directory: Path, bot: FakeBot, max_live: int | None, edge: type[E]
) -> AsyncIterator[tuple[Router, E]]:
    """A daemon on this process's loop, with its store in `directory`, started and tuned as
    `router serve` starts and tunes one."""
    config = load_config(write_config(directory, bot.url, max_live))
    router = Router(config)
    counted = edge(router.store, router.clock, config.delivery.timeout_s, router.metrics)
    router.edge = counted
    await router.start()
    if not _tuned:  # once a process: it changes the interpreter, not the daemon
        tune_interpreter()
        _tuned.append(True)
    try:
        yield router, counted
    finally:
        await router.stop()


# -- (e) memory per conversation ------------------------------------------------------------


async def memory_case(
    conversations: int, max_live: int | None, breakdown: bool, window: int
) -> dict[str, Any]:
    async with (
        workspace() as (directory, bot),
        daemon(directory, bot, max_live, CountingEdge) as (router, edge),
    ):
        opener = Opener(router, bot, window)
        await opener.open(named("warm", WARMUP))
        await settle(router, bot, opener.told, settle_timeout(WARMUP))
        threads_before = threading.active_count()
        gc.collect()
        rss_before = proc_status("self", "VmRSS")
        snapshot_before: tracemalloc.Snapshot | None = None
        if breakdown:
            tracemalloc.start(FRAMES)
            snapshot_before = tracemalloc.take_snapshot()
        loads_before = edge.loads
        started = time.perf_counter()
        await opener.open(named("user", conversations))
        view = await settle(router, bot, opener.told, settle_timeout(conversations))
        opened_s = time.perf_counter() - started
        gc.collect()
        result: dict[str, Any] = {
            "conversations": conversations,
            "max_live": router.config.conversations.max_live,
            "resident": view["resident"],
            "received": await bot.received(),
            "opened_per_s": conversations / opened_s,
            "loads": edge.loads - loads_before,
            "threads_before": threads_before,
        }
        if snapshot_before is not None:
            snapshot_after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            growth = traced_growth(snapshot_before, snapshot_after)
            result["traced_per_conversation"] = growth / conversations
            result["sites"] = allocation_sites(snapshot_before, snapshot_after, conversations)
        else:
            result["rss_before"] = rss_before
            result["rss_after"] = proc_status("self", "VmRSS")
            result["rss_peak"] = proc_status("self", "VmHWM")
        result["threads_after"] = threading.active_count()
        stop_started = time.perf_counter()
        await router.stop()
        result["stop_s"] = time.perf_counter() - stop_started
        return result


def _own(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Without what tracemalloc itself allocated to make the snapshots."""
    return snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


def traced_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    return sum(stat.size_diff for stat in _own(after).compare_to(_own(before), "filename"))


def _in_project(filename: str) -> bool:
    return filename.startswith(str(ROOT) + os.sep) and "site-packages" not in filename


def _short(filename: str) -> str:
    """Relative to the project, to site-packages, or to the standard library."""
    if _in_project(filename):
        return os.path.relpath(filename, ROOT)
    if "site-packages/" in filename:
        return filename.rpartition("site-packages/")[2]
    if "/lib/python3" in filename:
        return filename.rpartition("/lib/python3")[2].partition("/")[2]
    return filename


def site_label(traceback: tracemalloc.Traceback) -> str:
    """Where the memory was allocated and, when that is library or generated code (a
    dataclass `__init__` is `<string>`), the project line that led there: the line to
    change is the project's."""
    frames = list(traceback)  # oldest first
    inner = frames[-1]
    caller = next((f for f in reversed(frames) if _in_project(f.filename)), None)
    here = f"{_short(inner.filename)}:{inner.lineno}"
    if caller is None or caller is inner:
        return f"{here}  {_code(inner)}"
    return f"{here} <- {_short(caller.filename)}:{caller.lineno}  {_code(caller)}"


def _code(frame: tracemalloc.Frame) -> str:
    """The line itself, read now: the files may change after the run."""
    text = linecache.getline(frame.filename, frame.lineno).strip()
    return text if len(text) <= 60 else text[:57] + "..."


def allocation_sites(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, conversations: int, top: int = 15
) -> list[tuple[str, float, float]]:
    """(site, bytes per conversation, blocks per conversation), largest first."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for stat in _own(after).compare_to(_own(before), "traceback"):
        entry = totals[site_label(stat.traceback)]
        entry[0] += stat.size_diff
        entry[1] += stat.count_diff
    ranked = sorted(totals.items(), key=lambda item: item[1][0], reverse=True)[:top]
    return [(label, size / conversations, count / conversations) for label, (size, count) in ranked]


# -- (f) activation latency -------------------------------------------------------------------


@dataclass
class Marks:
    """perf_counter() times of one message for one conversation, as the edge saw it."""

    lookup: str
    inbox_id: int
    told: float
    load: float | None = None  # the core found no running actor and asked for a load
    loaded: float | None = None  # the store answered; `Loaded` is told to the core
    handled: float | None = None  # the actor handled it: the step's writes reached the edge
    attempt: float | None = None  # the step is durable; the bot's endpoint starts the attempt
    answered: float | None = None  # the bot's 200 is back
    done: asyncio.Event = field(default_factory=asyncio.Event)


class TimedEdge(CountingEdge):
    """The daemon's edge, noting when the watched conversation's effects pass through it.

    Every step of a conversation leaves its actor here (loads, writes with what follows
    them, delivery attempts), so the times need no change to the actors; away from the
    watched conversation it is the plain edge plus one attribute test per effect.
    """

    watching: Marks | None = None

    def submit(self, effect: Effect) -> None:
        marks = self.watching
        if marks is not None:
            now = time.perf_counter()
            match effect:
                case Load(lookup=lookup) if lookup == marks.lookup and marks.load is None:
                    marks.load = now
                case Persist(writes=writes) if marks.handled is None:
                    # The step that handled the message acknowledges its inbox row.
                    if any(
                        isinstance(w, InboxDone) and w.inbox_id == marks.inbox_id for w in writes
                    ):
                        marks.handled = now
                case Attempt(delivery=delivery) if marks.attempt is None and self._watched(
                    marks, delivery.body
                ):
                    marks.attempt = now
                case _:
                    pass
        super().submit(effect)

    @staticmethod
    def _watched(marks: Marks, body: Any) -> bool:
        """The bot's copy of the watched message: it carries the customer's Messageid."""
        return isinstance(body, dict) and body.get("Messageid") == f"m-{marks.inbox_id}"

    def _loaded(self, load: Load, done: asyncio.Future[Loaded]) -> None:
        super()._loaded(load, done)
        marks = self.watching
        if marks is not None and load.lookup == marks.lookup and marks.loaded is None:
            marks.loaded = time.perf_counter()

    async def exchange(self, url: str, token: str | None, body: Any, **headers: Any) -> Answer:
        answer = await super().exchange(url, token, body, **headers)
        marks = self.watching
        if marks is not None and marks.answered is None and self._watched(marks, body):
            marks.answered = time.perf_counter()
            marks.done.set()
        return answer


async def one_message(router: Router, opener: Opener, edge: TimedEdge, user: str) -> Marks:
    """One customer message, timed; returns once the daemon is quiet again, so that no two
    messages overlap."""
    told = time.perf_counter()
    # Telling only queues: nothing runs until this coroutine awaits, so the marks are set
    # before the daemon can reach any of them.
    marks = Marks(f"key:{opener.key(user)}", opener.tell(user), told)
    edge.watching = marks
    async with asyncio.timeout(30):
        await marks.done.wait()
        edge.watching = None
        # Queued behind every write made so far (the step's delivery removed, the evicted
        # actor's retirement): once it commits, they have too.
        await router.store.write(lambda conn: None)
        scheduler = Scheduler.current()
        while not scheduler.idle:
            await asyncio.sleep(0)
    return marks


async def activation_case(
    conversations: int, max_live: int, activations: int, window: int
) -> dict[str, Any]:
    """The conversations are opened under a daemon that keeps them all resident, which is
    then stopped, and the measured daemon starts on the same store with the small
    `max_live`: every conversation is then passivated (state only on disk, nothing of it in
    memory). Opening them under the small `max_live` directly ends in the same state, but
    with a thousand new conversations in flight the core re-reads every load under way at
    each retirement, and setting up takes minutes instead of seconds."""
    async with workspace() as (directory, bot):
        async with daemon(directory, bot, conversations, CountingEdge) as (router, _):
            opener = Opener(router, bot, window)
            await opener.open(named("user", conversations))
            await settle(router, bot, opener.told, settle_timeout(conversations))
        async with daemon(directory, bot, max_live, TimedEdge) as (router, edge):
            opener = Opener(router, bot, window, opener.told)
            order = [
                f"user-{n}" for n in random.Random(1).sample(range(conversations), conversations)
            ]
            # Fill the resident set (no eviction yet), so each measured activation also
            # evicts the least recently used, as a daemon at its limit does.
            await opener.open(order[:max_live])
            await settle(router, bot, opener.told, settle_timeout(max_live))
            cold: list[Marks] = []
            users: list[str] = []
            skipped = 0
            for user in order[max_live:]:
                if len(cold) == activations:
                    break
                marks = await one_message(router, opener, edge, user)
                if marks.load is None:  # not an activation: it was resident
                    skipped += 1
                    continue
                cold.append(marks)
                users.append(user)
            # The newest half of those again: still resident (the others are ahead of them
            # in the eviction order), so the same path without the load and the eviction.
            warm = [
                marks
                for user in users[-min(activations, max_live // 2) :]
                if (marks := await one_message(router, opener, edge, user)).load is None
            ]
            view = await settle(router, bot, opener.told, settle_timeout(conversations))
            return {
                "conversations": conversations,
                "max_live": max_live,
                "resident": view["resident"],
                "skipped": skipped,
                "cold": [marks_row(m) for m in cold],
                "warm": [marks_row(m) for m in warm],
            }


def marks_row(marks: Marks) -> dict[str, float | None]:
    """Milliseconds since the tell."""

    def since(at: float | None) -> float | None:
        return None if at is None else (at - marks.told) * 1000

    return {
        "load": since(marks.load),
        "loaded": since(marks.loaded),
        "handled": since(marks.handled),
        "attempt": since(marks.attempt),
        "answered": since(marks.answered),
    }


# -- (h) SIGTERM to exit ------------------------------------------------------------------------


async def post_customers(
    session: aiohttp.ClientSession, url: str, conversations: int, concurrency: int
) -> int:
    """One customer message for each of `conversations` users, from `concurrency` clients
    taking the next user in turn; how many were accepted (202)."""
    users = iter(range(conversations))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        for n in users:
            body = {
                "Event": "Incoming message",
                "Userid": f"user-{n}",
                "Message": f"hello from user-{n}",
                "MessageType": "text",
                "Messageid": f"m-{n}",
            }
            async with session.post(url, json=body, headers=headers) as answer:
                await answer.read()
                accepted += answer.status == 202

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return accepted


def stopped_at(log: Path) -> float | None:
    """Wall time of the daemon's `router_stopped` line: its `router.stop()` has returned."""
    for line in log.read_bytes().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == "router_stopped":
                return datetime.fromisoformat(str(entry["timestamp"])).timestamp()
    return None


async def shutdown_case(conversations: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            fake_bot(session) as bot,
        ):
            port, debug_port = free_port(), free_port()
            config = write_config(Path(tmp), bot.url, conversations, port, debug_port)
            log = Path(tmp) / "router.log"
            with log.open("wb") as stderr:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "router.cli", "serve", "--config", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    cwd=CHECKOUT,
                )
            try:
                debug = f"http://127.0.0.1:{debug_port}"
                await wait_up(session, f"{debug}/healthz")
                rss_before = proc_status(proc.pid, "VmRSS")
                started = time.perf_counter()
                url = f"http://127.0.0.1:{port}/v1/channels/asset/events"
                accepted = await post_customers(session, url, conversations, concurrency)
                store = Path(tmp) / "router.db"
                view = await until_quiet(session, debug, bot, store, accepted)
                opened_s = time.perf_counter() - started
                rss_after = proc_status(proc.pid, "VmRSS")
                threads = proc_status(proc.pid, "Threads")
                signalled_at = time.time()
                signalled = time.perf_counter()
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=120)
                exit_s = time.perf_counter() - signalled
            finally:
                stop_process(proc)
            stopped = stopped_at(log)
            return {
                "conversations": conversations,
                "accepted": accepted,
                "resident": view["resident"],
                "opened_per_s": accepted / opened_s,
                "rss_before": rss_before,
                "rss_after": rss_after,
                "threads": threads,
                "exit_s": exit_s,
                "stop_s": None if stopped is None else stopped - signalled_at,
                "returncode": code,
            }


async def until_quiet(
    session: aiohttp.ClientSession, debug: str, bot: FakeBot, store: Path, expected: int
) -> dict[str, Any]:
    """Until the bot has every message, none is owed (read from the store file itself) and
    the core is loading and retiring nothing."""

    def owed() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            return count_deliveries(conn)

    async with asyncio.timeout(settle_timeout(expected)):
        while True:
            if await bot.received() >= expected and not owed():
                async with session.get(f"{debug}/debug/directory") as answer:
                    view: dict[str, Any] = await answer.json()
                if not view["loading"] and not view["retiring"]:
                    return view
            await asyncio.sleep(0.05)


# -- the orchestrator ---------------------------------------------------------------------------


def run_worker(args: list[str], timeout: float) -> dict[str, Any]:
    """A case in a fresh process (its own process group, so the fake bot it starts goes
    with it if it has to be killed); its stderr is shown only when it fails."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.scale", "--worker", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
            cwd=CHECKOUT,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise SystemExit(
                f"bench.scale worker {args} did not finish in {timeout:.0f}s"
            ) from None
        if proc.returncode != 0:
            stderr.seek(0)
            tail = stderr.read()[-4000:].decode(errors="replace")
            raise SystemExit(f"bench.scale worker {args} failed ({proc.returncode}):\n{tail}")
    for line in out.decode().splitlines():
        if line.startswith(RESULT):
            found: dict[str, Any] = json.loads(line.removeprefix(RESULT))
            found["elapsed_s"] = time.perf_counter() - started
            return found
    raise SystemExit(f"bench.scale worker {args} gave no result")


def mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report_memory(args: argparse.Namespace) -> None:
    n = args.conversations
    print(
        "(e) memory per conversation: driven below HTTP, one RouteChannel told to the core per "
        "conversation (intake's path once an event is stored, as tests/test_actor_scale.py), "
        f"at most {args.window} ahead of the bot; each message delivered to a fake bot in "
        "another process, counted there. RSS is the daemon process's (VmRSS), after gc.collect()",
        flush=True,
    )
    timeout = 600 + n / 100
    runs: list[tuple[int | None, str]] = [(n, "all resident")]
    if args.passivation:
        runs.append((None, "default passivation"))
    for max_live, label in runs:
        worker = ["memory", "--conversations", str(n), "--window", str(args.window)]
        if max_live is not None:  # room for the warm-up's conversations too
            worker += ["--max-live", str(max_live + WARMUP)]
        r = run_worker(worker, timeout)
        grown = r["rss_after"] - r["rss_before"]
        print(
            f"  max_live {r['max_live']:>9,} ({label}): {n:,} opened at "
            f"{r['opened_per_s']:,.0f}/s ({r['loads'] / n:,.1f} store loads per conversation), "
            f"bot received {r['received'] - WARMUP:,} (+{WARMUP:,} warm-up), resident "
            f"{r['resident']:,}\n"
            f"    RSS {mib(r['rss_before'])} -> {mib(r['rss_after'])} "
            f"(peak {mib(r['rss_peak'])}): {grown / n:,.0f} B per conversation\n"
            f"    threads {r['threads_before']} before, {r['threads_after']} at the end; "
            f"router.stop() {r['stop_s']:.2f} s  ({r['elapsed_s']:.0f} s)",
            flush=True,
        )
    if args.breakdown:
        n = args.breakdown_conversations
        r = run_worker(
            [
                *("memory", "--conversations", str(n), "--max-live", str(n + WARMUP)),
                *("--window", str(args.window), "--breakdown"),
            ],
            600 + n / 20,
        )
        print(
            f"  tracemalloc, {n:,} resident: {r['traced_per_conversation']:,.0f} B traced per "
            f"conversation (Python allocations only; {r['elapsed_s']:.0f} s); "
            f"top {len(r['sites'])} sites:\n"
            f"    {'B/conv':>7} {'blocks':>6}  site [<- project line that led there]"
        )
        for label, size, count in r["sites"]:
            print(f"    {size:>7,.0f} {count:>6.2f}  {label}")


def report_activation(args: argparse.Namespace) -> None:
    r = run_worker(
        [
            "activation",
            "--conversations",
            str(args.activation_conversations),
            "--max-live",
            str(args.activation_max_live),
            "--activations",
            str(args.activations),
            "--window",
            str(args.window),
        ],
        900,
    )
    cold, warm = r["cold"], r["warm"]
    print(
        f"(f) activation, in process below HTTP: {r['conversations']:,} conversations opened, "
        f"the daemon restarted on that store with max_live {r['max_live']:,} (all passivated: "
        f"state only on disk) and filled with {r['max_live']:,} of them; then one message "
        f"each, one at a time, to {len(cold):,} passivated ones (each loaded from the store "
        f"and evicting the least recently used; {r['skipped']:,} skipped as resident), then "
        f"again to {len(warm):,} of them while resident. ms from the tell to the core:",
        flush=True,
    )

    def line(name: str, values: list[float]) -> None:
        print(
            f"  {name:<48} p50 {percentile(values, 0.5):6.2f}  p90 {percentile(values, 0.9):6.2f}"
            f"  p99 {percentile(values, 0.99):6.2f}  max {max(values):6.2f}"
        )

    def column(rows: list[dict[str, Any]], end: str, start: str | None = None) -> list[float]:
        return [row[end] - (row[start] if start else 0.0) for row in rows]

    line("activation: tell -> actor has handled it", column(cold, "handled"))
    if all(row["loaded"] is not None for row in cold):
        line("  core routes it, asks the edge for a load", column(cold, "load"))
        line("  store read on its thread, Loaded told", column(cold, "loaded", "load"))
        line("  core starts the actor, the actor handles it", column(cold, "handled", "loaded"))
    line("passivated: tell -> durable, bot attempt starts", column(cold, "attempt"))
    line("passivated: tell -> bot's 200 back", column(cold, "answered"))
    line("resident:   tell -> actor has handled it", column(warm, "handled"))
    line("resident:   tell -> durable, bot attempt starts", column(warm, "attempt"))
    line("resident:   tell -> bot's 200 back", column(warm, "answered"))


async def report_shutdown(args: argparse.Namespace) -> None:
    r = await shutdown_case(args.conversations, args.concurrency)
    n = r["conversations"]
    grown = r["rss_after"] - r["rss_before"]
    stop = "not logged" if r["stop_s"] is None else f"{r['stop_s']:.2f} s"
    print(
        f"(h) SIGTERM to exit: `router serve` in its own process, max_live {n:,}; {r['accepted']:,}"
        f" of {n:,} conversations opened over HTTP ({args.concurrency} clients) at "
        f"{r['opened_per_s']:,.0f}/s, resident {r['resident']:,}\n"
        f"  daemon RSS {mib(r['rss_before'])} -> {mib(r['rss_after'])}: {grown / n:,.0f} B per "
        f"conversation (HTTP path: requests parsed, inbox rows written); threads {r['threads']}\n"
        f"  SIGTERM -> exit {r['exit_s']:.2f} s (exit code {r['returncode']}); "
        f"SIGTERM -> router_stopped logged {stop}",
        flush=True,
    )


def worker(args: argparse.Namespace) -> None:
    result: dict[str, Any]
    if args.worker == "memory":
        max_live = args.max_live or None
        result = asyncio.run(memory_case(args.conversations, max_live, args.breakdown, args.window))
    else:
        result = asyncio.run(
            activation_case(args.conversations, args.max_live, args.activations, args.window)
        )
    print(RESULT + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--case", choices=("memory", "activation", "shutdown", "all"), default="all"
    )
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument(
        "--passivation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="memory: also the run with the default max_live (long for a million)",
    )
    parser.add_argument("--breakdown", action="store_true", help="add the tracemalloc run")
    parser.add_argument("--breakdown-conversations", type=int, default=20_000)
    parser.add_argument("--activation-conversations", type=int, default=20_000)
    parser.add_argument("--activation-max-live", type=int, default=1_000)
    parser.add_argument("--activations", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64, help="HTTP clients (shutdown)")
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help="messages told ahead of the bot when driving below HTTP (memory, activation)",
    )
    parser.add_argument("--worker", choices=("memory", "activation"), help=argparse.SUPPRESS)
    parser.add_argument("--max-live", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    cases: Iterable[str] = (
        ("memory", "activation", "shutdown") if args.case == "all" else (args.case,)
    )
    steps: dict[str, Callable[[], None]] = {
        "memory": lambda: report_memory(args),
        "activation": lambda: report_activation(args),
        "shutdown": lambda: asyncio.run(report_shutdown(args)),
    }
    print(f"bench.scale on {os.cpu_count()} cpus, python {sys.version.split()[0]}", flush=True)
    for case in cases:
        started = time.perf_counter()
        steps[case]()
        print(f"  ({case}: {time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
