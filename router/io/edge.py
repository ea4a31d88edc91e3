"""The I/O edge: the one place that touches the network, the disk and the timers.

Actors hand it effects from their own threads; it runs them on the aiohttp loop and reports
back by telling actors. Writes are committed before anything that follows from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import pykka
import structlog

from router.domain.commands import Ref
from router.domain.events import DeliveryOutcome
from router.io.clock import Clock, Timer
from router.io.effects import (
    Attempt,
    AttemptResult,
    Effect,
    Load,
    Loaded,
    Persist,
    ReadTranscript,
    Tell,
    TellAt,
    TranscriptRead,
)
from router.io.health import WriteRefused
from router.io.http1 import AnswerTooLarge, Http1Client, PeerError
from router.io.metrics import Metrics
from router.io.records import (
    Write,
    apply_writes,
    conversation_deliveries,
    get_conversation,
    open_conversation,
    transcript,
)
from router.io.signing import webhook_headers
from router.io.store import Store

ATTEMPTS_PER_DESTINATION = 64
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "conversation-router"

# How an attempt ended, as counted: a 2xx, another status, no answer in time, anything else.
Outcome = Literal["ok", "http_error", "timeout", "error"]


class Answer(NamedTuple):
    """How a call went. `error` is safe to store and log; `status` is the peer's, when it
    answered at all; `wait` is what a 429 asked for, in whole seconds."""

    ok: bool
    error: str | None
    outcome: Outcome
    payload: bytes = b""
    status: int | None = None
    wait: float | None = None

    @property
    def throttled(self) -> bool:
        return self.status == 429


class StoreFenced(WriteRefused):
    """A write refused because an earlier one failed, or while the store cannot commit."""


class IoEdge:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        timeout_s: float,
        metrics: Metrics,
        *,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        attempts_per_destination: int = ATTEMPTS_PER_DESTINATION,
    ) -> None:
        self.store = store
        self.clock = clock
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_answer_bytes = max_answer_bytes
        self.attempts_per_destination = attempts_per_destination
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.client: Http1Client | None = None
        # Attempts in flight, by a number of their own, so that each can leave as it ends.
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._attempts_made = 0
        self._timers: set[Timer] = set()
        self._closing = False
        self._timers_off = False
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.id_prefix = ""  # the store's, set at start-up: see `webhook_id`
        # Secrets being replaced, by (kind, destination key): the daemon's rotation answers.
        self.retired: Callable[[str, str], tuple[str, ...]] = lambda kind, dest: ()
        # After a failed write: route nothing until the daemon's recovery (or a restart) has
        # made the actors match the disk again. Writes are numbered as actors make them; the
        # fence stands at the first that failed or was refused, so a write made before it
        # still commits when its group is redone without it.
        self._writes_made = 0
        self._fence_at: int | None = None
        self.fenced_since: float | None = None
        self.on_fence: Callable[[], None] = lambda: None  # the daemon's recovery, on the loop
        self.log = structlog.get_logger("router.edge")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.client = Http1Client(user_agent=USER_AGENT)
        # Intake routes an event as soon as its row is written, before the commit; if that
        # commit fails, what followed from it must not land, nor be carried out.
        self.store.on_ran_ahead = lambda error: self._fence("intake_commit_failed", str(error))

    def quiesce(self) -> None:
        """No more timers: retries due during shutdown resume from the store next start."""
        self._timers_off = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def stop(self) -> None:
        self.quiesce()
        self._closing = True
        # Writes already queued finish; attempts in flight are abandoned and resume on restart.
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()  # any cancelled before its first step never ran its `finally`
        if self.client is not None:
            await self.client.close()
            self.client = None

    def submit(self, effect: Effect) -> None:
        loop = self.loop
        if loop is None or self._closing:
            return
        if self.loop_thread == threading.get_ident():
            self._run(effect)  # writes reach the store's queue in the order actors made them
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            loop.call_soon_threadsafe(self._run, effect)

    def _run(self, effect: Effect) -> None:
        if self._closing or self.fenced:
            return
        match effect:
            case Persist(writes=writes, then=then):
                # Heard where the commit is reported, in the order the steps were written, so
                # what follows from each step also runs in that order, with no hop between.
                self.store.write_then(
                    self._fenced_write(writes), lambda error: self._after(error, then)
                )
            case Attempt():
                self._spawn(effect)
            case Load():
                self._load(effect)
            case ReadTranscript(conversation_id=cid, reply_to=reply_to):
                # Through the writer: it sees every message the conversation wrote before.
                read = self.store.write(lambda conn: transcript(conn, cid))
                read.add_done_callback(lambda done: self._transcript_read(done, reply_to))
            case Tell() | TellAt():
                self._tell(effect)

    def _spawn(self, attempt: Attempt) -> None:
        """The task leaves `_tasks` itself as it ends (`_attempt`'s `finally`): a done
        callback would cost every attempt one more turn of the loop."""
        self._attempts_made += 1
        number = self._attempts_made
        self._tasks[number] = asyncio.get_running_loop().create_task(self._attempt(attempt, number))

    @property
    def fenced(self) -> bool:
        return self._fence_at is not None

    def resume(self) -> None:
        """Lift the fence, for actors started again from the disk once the old ones, which
        ran ahead of it, are gone (`router.recovery`)."""
        self._fence_at = None
        self.fenced_since = None
        self._timers_off = False

    def _fenced_write(self, writes: tuple[Write, ...]) -> Callable[[sqlite3.Connection], None]:
        """Runs inside the group commit, in the order the steps were written, so a failure
        fences every step written after it, and a step refused while the store fails fences
        those after it before they are tried."""

        self._writes_made += 1
        number = self._writes_made

        def work(conn: sqlite3.Connection) -> None:
            fence = self._fence_at
            if fence is not None and number > fence:
                raise StoreFenced("an earlier write failed; routing resumes once it is redone")
            try:
                if self.store.health.failing:
                    raise StoreFenced("the store cannot commit; routing resumes once it does")
                apply_writes(conn, writes)
            except Exception:
                if fence is None or number < fence:
                    self._fence_at = number
                raise

        return work

    def _after(self, error: Exception | None, then: tuple[Tell | TellAt, ...]) -> None:
        if self._closing:
            return
        if error is not None:
            # A step that is not on disk must have no consequence, and neither may any step
            # after it: they are all redone, in order, from the store once it commits again
            # (or at the next start). The daemon reports itself degraded meanwhile.
            self._fence("persist_failed", str(error))
            return
        for item in then:
            self._tell(item)

    def _transcript_read(
        self, done: asyncio.Future[tuple[dict[str, Any], ...]], reply_to: Ref
    ) -> None:
        if done.cancelled() or self._closing:
            return
        error = done.exception()
        if error is not None:
            if not isinstance(error, WriteRefused):  # refused, not failed: nothing to count
                self.store.health.read_failed(error)
            self._fence("store_read_failed", str(error))  # the handover waits for recovery
            return
        with contextlib.suppress(pykka.ActorDeadError):
            reply_to.tell(TranscriptRead(done.result()))

    def _tell(self, item: Tell | TellAt) -> None:
        if isinstance(item, TellAt):
            if self._timers_off:
                return

            def fire() -> None:
                self._timers.discard(timer)
                self._tell(Tell(item.ref, item.message))

            timer = self.clock.call_at(item.at, fire)
            self._timers.add(timer)
            return
        try:
            item.ref.tell(item.message)
        except pykka.ActorDeadError:
            # An endpoint a reload stopped meanwhile: its conversation must still hear back.
            if item.undeliverable is not None:
                self._tell(item.undeliverable)

    def _load(self, load: Load) -> None:
        """A callback, not a task: a load is one read and one tell, and a new conversation
        costs one of them."""
        kind, _, value = load.lookup.partition(":")
        reader = get_conversation if kind == "id" else open_conversation

        def read(conn: sqlite3.Connection) -> Loaded:
            found = reader(conn, value)
            if found is None:
                return Loaded(load.lookup, None)
            owed = conversation_deliveries(conn, found.conversation_id)
            return Loaded(load.lookup, found, tuple(d for d in owed if d.status != "dead"))

        self.store.read_soon(read).add_done_callback(lambda done: self._loaded(load, done))

    def _loaded(self, load: Load, done: asyncio.Future[Loaded]) -> None:
        if done.cancelled() or self._closing:
            return
        error = done.exception()
        if error is None:
            answer = done.result()
        else:
            self.store.health.read_failed(error)
            self._fence("store_read_failed", str(error))  # its events wait for recovery
            answer = Loaded(load.lookup, None, failed=True)
        with contextlib.suppress(pykka.ActorDeadError):
            load.reply_to.tell(answer)

    def fence(self, event: str, error: str) -> None:
        """Route nothing more until recovery: what the actors hold may not be on disk."""
        self._fence(event, error)

    def _fence(self, event: str, error: str) -> None:
        if self.fenced_since is None:
            self.log.error(event, error=error, fenced=True)
            self.fenced_since = self.clock.now()
        if self._fence_at is None:
            self._fence_at = self._writes_made  # every write made from now on is refused
        self.on_fence()

    async def _attempt(self, attempt: Attempt, number: int) -> None:
        try:
            delivery = attempt.delivery
            slots = self._slots.setdefault(
                delivery.dest.key, asyncio.Semaphore(self.attempts_per_destination)
            )
            started = time.perf_counter()
            try:
                async with slots:
                    started = time.perf_counter()  # the attempt leaves now, not while it waited
                    answer = await self.exchange(
                        attempt.url,
                        attempt.access_token,
                        delivery.body,
                        webhook_id=self.webhook_id(delivery.delivery_id),
                        secret=attempt.signing_secret,
                        dest=delivery.dest.key,
                    )
            except Exception as exc:  # whatever went wrong, the lane must hear back
                self.log.exception("delivery_attempt_crashed", **_about(attempt))
                answer = Answer(False, _safe_error(exc, attempt.url, attempt.access_token), "error")
            ok, error, outcome, wait = answer.ok, answer.error, answer.outcome, answer.wait
            kind = delivery.dest.kind
            self.metrics.attempts(kind, outcome).inc()
            self.metrics.attempt_seconds(kind, outcome).observe(time.perf_counter() - started)
            if not ok:
                self.log.info("delivery_attempt_failed", **_about(attempt), error=error)
            try:
                attempt.reply_to.tell(
                    AttemptResult(delivery, attempt.conversation, ok, error, answer.throttled, wait)
                )
            except pykka.ActorDeadError:
                # Its endpoint stopped (a reload removed the destination): the lane must hear back
                # all the same, or it would wait for this answer forever.
                told = DeliveryOutcome(
                    delivery.delivery_id, delivery.dest.key, ok, True, error, False, wait
                )
                with contextlib.suppress(pykka.ActorDeadError):
                    attempt.conversation.tell(told)
        finally:
            self._tasks.pop(number, None)

    def webhook_id(self, delivery_id: int) -> str:
        """A delivery's `webhook-id`: the same on every retry, replay and release, and, with
        the store's own prefix, never the same as another store's."""
        return f"msg_{self.id_prefix}{delivery_id}"

    async def exchange(
        self,
        url: str,
        token: str | None,
        body: Any,
        *,
        webhook_id: str | None = None,
        secret: str | None = None,
        dest: str | None = None,
    ) -> Answer:
        """POST JSON and read the answer.

        While `dest`'s secrets are being replaced, the call carries a signature for each
        signing secret in force, and a peer that refuses the bearer token (401, 403) is asked
        again with each retired one: it may not have changed over yet.
        """
        data = orjson.dumps(body)  # the bytes sent are the bytes signed
        # Each value once: an attempt made before a change back to an earlier value would
        # otherwise present it twice.
        retired_secrets = self.retired("signing", dest) if dest else ()
        retired_tokens = self.retired("token", dest) if dest and token else ()
        secrets = tuple(dict.fromkeys((secret, *retired_secrets)))
        tokens = tuple(dict.fromkeys((token, *retired_tokens)))
        for token in tokens:
            answer = await self._exchange(url, token, data, webhook_id, secrets)
            if answer.status not in (401, 403):
                break
        return answer

    async def _exchange(
        self,
        url: str,
        token: str | None,
        data: bytes,
        webhook_id: str | None,
        secrets: tuple[str | None, ...],
    ) -> Answer:
        """One POST. A redirect is a failed attempt: following it would send the message
        (and, for a 307, the access token) somewhere nobody configured, or turn it into a GET.
        """
        assert self.client is not None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if webhook_id is not None:
            headers |= webhook_headers(webhook_id, self.clock.now(), data, *secrets)
        try:
            reply = await self.client.post(
                url, headers, data, timeout=self.timeout_s, cap=self.max_answer_bytes
            )
        except AnswerTooLarge as exc:
            return Answer(False, str(exc), "error")
        except TimeoutError:
            return Answer(False, f"no answer within {self.timeout_s}s", "timeout")
        except (PeerError, ValueError, OSError) as exc:
            # ValueError: a header or URL that cannot be sent.
            return Answer(False, _safe_error(exc, url, token), "error")
        status, payload = reply.status, reply.body
        if 200 <= status < 300:
            return Answer(True, None, "ok", payload, status)
        if status == 429:
            asked = retry_after(reply.headers.get("retry-after"), self.clock.now())
            if asked is None:
                return Answer(False, "HTTP 429", "http_error", payload, status)
            wait = float(math.ceil(asked))
            error = f"HTTP 429, retry after {wait:.0f}s"
            return Answer(False, error, "http_error", payload, status, wait)
        return Answer(False, f"HTTP {status}", "http_error", payload, status)


def _about(attempt: Attempt) -> dict[str, Any]:
    """What an attempt's log lines say it is about."""
    delivery = attempt.delivery
    return {
        "conversation_id": delivery.conversation_id,
        "integration": attempt.integration,
        "asset": attempt.asset,
        "delivery_id": delivery.delivery_id,
        "dest": delivery.dest.key,
    }


def retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


# A URL in free text: scheme, then everything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"<>]*")

_REDACTED = "***"


def _safe_error(exc: BaseException, url: str, token: str | None) -> str:
    """An exception as an attempt's error, with no credentials left in it.

    Errors are stored with the delivery, shown on the debug port and logged, while the
    destination URL may carry a password or a key in its query, and an error's text may quote
    the URL.
    """
    text = _URL_IN_TEXT.sub(lambda m: _strip_url(m.group(0)), f"{type(exc).__name__}: {exc}")
    for secret in _url_secrets(url, token):
        text = text.replace(secret, _REDACTED)
    return text


def _strip_url(found: str) -> str:
    """The URL without its userinfo, query and fragment."""
    scheme, _, rest = found.partition("://")
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _url_secrets(url: str, token: str | None) -> list[str]:
    """The access token and the destination's password, query and query values."""
    try:
        parts = urlsplit(url)
        found = [parts.password, parts.query, *(v for _, v in parse_qsl(parts.query))]
    except ValueError:
        found = []
    found.append(token)
    secrets = {s for s in found if s} | {unquote(s) for s in found if s}
    # Longest first, so that a secret containing another is replaced whole.
    return sorted(secrets, key=len, reverse=True)
