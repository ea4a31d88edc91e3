"""The load test's bot, contact center, channel and flow: they react and they record.

Run as its own process (`python -m router.loadtest.peers --port P --spec JSON`) so that the
router, the customers and the peers do not share one interpreter. What arrived is kept as
(mid, stream, seq, destination); what the peers themselves got accepted is kept the same way
as the customers' sends, so the verdict treats both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router.loadtest.mix import Mix
from router.loadtest.verdict import COPIES

Record = tuple[str, str, int]  # mid, stream, seq


def stamp(mid: str) -> str:
    """The text a message carries: its id and when it left, on the machine's monotonic clock
    (the same in every process here, so the receiver can time the leg)."""
    return f"{mid} {time.monotonic():.6f}"


def unstamp(text: object) -> tuple[str, str, int, float] | None:
    """(mid, stream, seq, sent_at) from a stamped text, None for anything else."""
    if not isinstance(text, str):
        return None
    mid, _, at = text.partition(" ")
    kind, _, rest = mid.partition(".")
    name, _, seq = rest.rpartition(".")
    try:
        return mid, f"{kind}.{name}", int(seq), float(at)
    except ValueError:
        return None


@dataclass(frozen=True)
class Spec:
    """Where the router takes the peers' own calls."""

    bot_webhook: str | None
    ccsp_webhook: str | None
    channel_events: str | None
    asset_token: str
    mix: Mix
    seed: int = 1


@dataclass
class Recorder:
    arrivals: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    sent: list[Record] = field(default_factory=list)
    excused: set[str] = field(default_factory=set)
    latencies: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    inflight: int = 0
    # Kept as they change, so that the driver can poll "is everything in?" cheaply.
    _arrived: set[str] = field(default_factory=set)
    _owed: set[str] = field(default_factory=set)

    def arrive(self, mid: str, stream: str, seq: int, dest: str, conversation: str) -> None:
        self.arrivals.append((mid, stream, seq, dest, conversation))
        if dest not in COPIES:  # a copy to the bot is not the delivery that was owed
            self._arrived.add(mid)
            self._owed.discard(mid)

    def arrived(self, text: object, dest: str, conversation: str, leg: str | None) -> str | None:
        found = unstamp(text)
        if found is None:
            return None
        mid, stream, seq, sent_at = found
        self.arrive(mid, stream, seq, dest, conversation)
        if leg is not None:
            now = time.monotonic()
            self.latencies.setdefault(leg, []).append((now, (now - sent_at) * 1000))
        return mid

    def accepted(self, mid: str, stream: str, seq: int) -> None:
        self.sent.append((mid, stream, seq))
        self.expect((mid,))

    def expect(self, mids: Iterable[str]) -> None:
        self._owed.update(m for m in mids if m not in self._arrived)

    def excuse(self, mid: str) -> None:
        self.excused.add(mid)
        self._owed.discard(mid)

    @property
    def missing(self) -> int:
        return len(self._owed)


@dataclass
class LoadPeers:
    spec: Spec
    session: aiohttp.ClientSession
    record: Recorder = field(default_factory=Recorder)
    quiet: bool = False
    bot_state: dict[str, str] = field(default_factory=dict)  # conversation -> bot|agent|closed
    closing: set[str] = field(default_factory=set)  # agent sessions the agent has closed
    counters: Counter[str] = field(default_factory=Counter)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    reported: dict[str, Record | None] = field(default_factory=dict)  # outbound Messageid
    random: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.random.seed(self.spec.seed)

    # -- sending, one sender per stream at a time --------------------------------------

    def react(self, stream: str, work: Coroutine[Any, Any, None]) -> None:
        async def serially() -> None:
            lock = self.locks.setdefault(stream, asyncio.Lock())
            self.record.inflight += 1
            try:
                async with lock:
                    await work
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.record.errors[f"peer call: {type(exc).__name__}"] += 1
            finally:
                self.record.inflight -= 1

        if self.quiet:
            work.close()
            return
        task = asyncio.create_task(serially())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def next_mid(self, kind: str, name: str) -> tuple[str, str, int]:
        stream = f"{kind}.{name}"
        self.counters[stream] += 1
        seq = self.counters[stream]
        return f"{stream}.{seq}", stream, seq

    async def post(self, url: str | None, body: dict[str, Any], what: str, **headers: str) -> bool:
        if url is None:
            return False
        async with self.session.post(
            url, data=orjson.dumps(body), headers={"Content-Type": "application/json", **headers}
        ) as answer:
            payload = await answer.read()
            if answer.status == 202:
                return True
            if answer.status == 200:  # a duplicate: accepted before, not a new message
                self.record.errors[f"{what}: duplicate"] += 1
                return False
            code = orjson.loads(payload).get("error", "") if payload[:1] == b"{" else ""
            self.record.errors[f"{what}: {answer.status} {code}".strip()] += 1
            return False

    # -- the bot -------------------------------------------------------------------------

    async def bot(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        event = body.get("Event")
        cid = str(body.get("Conversationid", ""))
        self.record.received["bot"] += 1
        if event == "Verify":
            return web.json_response({"challenge": body.get("challenge")})
        if event == "Message Delivery":
            self._report_arrived(body, "bot", cid)
        elif event in ("Agent Session Closed", "Handover Failed"):
            for withdrawn in body.get("Unanswered") or ():
                self.record.excuse(str(withdrawn))  # the contract withdraws them, and says so
            closed = str(body.get("CCSPConversationid", ""))
            self.record.arrive(f"x.{closed}.1", f"x.{closed}", 1, "bot", cid)
            self.bot_state[cid] = "bot"
        elif body.get("ConversationType") == "CCSP":
            text = body.get("Message") or body.get("PostbackPayload")
            self.record.arrived(text, "bot-copy", cid, None)
        elif event in ("Incoming message", "FB POSTBACK"):
            text = (
                body.get("Message") if event == "Incoming message" else body.get("PostbackPayload")
            )
            if self.record.arrived(text, "bot", cid, "intake_to_bot") is not None:
                self._bot_reacts(cid)
        return web.json_response({"ok": True})

    def _bot_reacts(self, cid: str) -> None:
        mix = self.spec.mix
        if self.quiet or self.bot_state.get(cid, "bot") != "bot":
            return
        roll = self.random.random()
        if roll < mix.handover:
            self.bot_state[cid] = "agent"
            self.react(f"bot.{cid}", self._handover(cid))
        elif roll < mix.handover + mix.bot_close:
            self.bot_state[cid] = "closed"
            self.react(f"bot.{cid}", self._bot_close(cid))
        elif roll < mix.handover + mix.bot_close + mix.reply:
            self.react(f"bot.{cid}", self._reply(cid))

    async def _reply(self, cid: str) -> None:
        mid, stream, seq = self.next_mid("r", cid)
        body = {"eventid": "1001", "conversation_id": cid, "message": stamp(mid), "Messageid": mid}
        if await self.post(self.spec.bot_webhook, body, "bot reply"):
            self.record.accepted(mid, stream, seq)

    async def _handover(self, cid: str) -> None:
        mid, stream, seq = self.next_mid("h", cid)
        body = {"Event": "Handover", "conversation_id": cid, "lt": stamp(mid)}
        if await self.post(self.spec.bot_webhook, body, "handover"):
            self.record.accepted(mid, stream, seq)
        else:
            self.bot_state[cid] = "bot"

    async def _bot_close(self, cid: str) -> None:
        if await self.post(
            self.spec.bot_webhook, {"Event": "Close", "conversation_id": cid}, "bot close"
        ):
            self.counters["bot closes"] += 1

    def _report_arrived(self, body: dict[str, Any], dest: str, conversation: str) -> None:
        message_id = str(body.get("Messageid", ""))
        if body.get("DeliveryStatus") == "Failed" and message_id.startswith("r."):
            self.record.excuse(message_id)  # a reply refused when processed
            return
        found = self.reported.get(message_id)
        if found is not None:
            self.record.arrive(*found, dest, conversation)

    # -- the contact center ---------------------------------------------------------------

    async def ccsp(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        event = body.get("Event")
        ccid = str(body.get("Conversationid", ""))
        self.record.received["ccsp"] += 1
        if event == "Handover":
            if self.record.arrived(body.get("lt"), "ccsp", ccid, "handover_to_ccsp") is not None:
                self.react(f"agent.{ccid}", self._agent_says(ccid))
        elif event == "Close":
            self.counters["sessions closed by the router"] += 1
        elif event == "Message Delivery":
            self._report_arrived(body, "ccsp", ccid)
        else:
            text = body.get("Message") or body.get("PostbackPayload")
            if self.record.arrived(text, "ccsp", ccid, "intake_to_ccsp") is not None:
                self._agent_reacts(ccid)
        return web.json_response({"ok": True})

    def _agent_reacts(self, ccid: str) -> None:
        mix = self.spec.mix
        if ccid in self.closing:
            return
        roll = self.random.random()
        if roll < mix.agent_close:
            self.closing.add(ccid)
            self.react(f"agent.{ccid}", self._agent_close(ccid))
        elif roll < mix.agent_close + mix.agent_reply:
            self.react(f"agent.{ccid}", self._agent_says(ccid))

    async def _agent_says(self, ccid: str) -> None:
        mid, stream, seq = self.next_mid("a", ccid)
        body = {"Event": "Agent message", "Conversationid": ccid, "Message": stamp(mid)}
        if await self.post(self.spec.ccsp_webhook, body, "agent message"):
            self.record.accepted(mid, stream, seq)

    async def _agent_close(self, ccid: str) -> None:
        body = {"Event": "Close", "Conversationid": ccid}
        if await self.post(self.spec.ccsp_webhook, body, "agent close"):
            self.record.accepted(f"x.{ccid}.1", f"x.{ccid}", 1)  # the bot hears of it

    # -- the channel and the flow -----------------------------------------------------------

    async def channel(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.record.received["channel"] += 1
        mid = self.record.arrived(body.get("Message"), "channel", "", None)
        if mid is not None:
            leg = {"r": "reply_to_channel", "a": "agent_to_channel"}.get(mid[0])
            found = unstamp(body.get("Message"))
            if leg is not None and found is not None:
                now = time.monotonic()
                self.record.latencies.setdefault(leg, []).append((now, (now - found[3]) * 1000))
            message_id = str(body.get("Messageid", ""))
            repeat = message_id in self.reported
            if not self.quiet and not repeat and self.random.random() < self.spec.mix.report:
                user = str(body.get("Userid", ""))
                self.reported[message_id] = None  # one report per message, however it arrives
                self.react(f"channel.{user}", self._report(user, message_id))
        return web.json_response({"ok": True})

    async def _report(self, user: str, message_id: str) -> None:
        mid, stream, seq = self.next_mid("d", user)
        self.reported[message_id] = (mid, stream, seq)
        body = {
            "Event": "Message Delivery",
            "Userid": user,
            "Messageid": message_id,
            "DeliveryStatus": "Delivered",
        }
        auth = f"Bearer {self.spec.asset_token}"
        if await self.post(self.spec.channel_events, body, "delivery report", Authorization=auth):
            self.record.accepted(mid, stream, seq)

    async def flow(self, request: web.Request) -> web.Response:
        await request.read()
        self.record.received["flow"] += 1
        return web.json_response({"ok": True})

    # -- control, for the driver ------------------------------------------------------------

    async def progress(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "received": dict(self.record.received),
                "inflight": self.record.inflight,
                "missing": self.record.missing,
                "arrivals": len(self.record.arrivals),
            }
        )

    async def expect(self, request: web.Request) -> web.Response:
        """The driver's accepted messages, and from now on no new reactions."""
        self.record.expect(orjson.loads(await request.read()))
        self.quiet = True
        return web.json_response({"ok": True})

    async def report(self, request: web.Request) -> web.Response:
        record = self.record
        body = {
            "arrivals": record.arrivals,
            "sent": record.sent,
            "excused": sorted(record.excused),
            "latencies": record.latencies,
            "errors": dict(record.errors),
            "received": dict(record.received),
            "counters": {k: v for k, v in self.counters.items() if " " in k},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")


SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def peers_app(spec: Spec) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    holder: dict[str, LoadPeers] = {}

    async def session_ctx(app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        ) as session:
            app[SESSION] = session
            holder["peers"] = LoadPeers(spec, session)
            yield
            for task in list(holder["peers"].tasks):
                task.cancel()

    def route(name: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            handler = getattr(holder["peers"], name)
            answer: web.Response = await handler(request)
            return answer

        return handle

    app.cleanup_ctx.append(session_ctx)
    for name in ("bot", "ccsp", "channel", "flow"):
        app.router.add_post(f"/{name}", route(name))
    app.router.add_get("/lt/progress", route("progress"))
    app.router.add_post("/lt/expect", route("expect"))
    app.router.add_get("/lt/report", route("report"))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="the load test's peers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True, help="JSON: Spec's fields, mix as an object")
    args = parser.parse_args()
    raw = orjson.loads(args.spec)
    spec = Spec(**{**raw, "mix": Mix(**raw["mix"])})
    web.run_app(peers_app(spec), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
