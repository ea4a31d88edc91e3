"""A bot on a raw socket that can fail the way real servers fail, below what aiohttp lets a
handler do: cut a body short, trickle headers, never end a body, redirect.

Each request gets the next scripted fault, then plain 200s; bodies answered 200 are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@dataclass
class FaultyBot:
    faults: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = orjson.loads(await reader.readexactly(length)) if length else {}
                if await self._answer(body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        """True when the connection is to be dropped."""
        if body.get("Event") != "Verify":
            self.attempts += 1
        fault = self.faults.pop(0) if self.faults else "ok"
        if fault == "ok":
            if body.get("Event") == "Verify":
                answer = orjson.dumps({"challenge": body.get("challenge")})
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + b"Content-Length: %d\r\n\r\n" % len(answer)
                    + answer
                )
            else:
                self.received.append(body)
                writer.write(OK)
            await writer.drain()
            return False
        if fault.startswith("status:"):
            # "status:429|Retry-After: 120": a status, and any headers after a bar.
            status, *headers = fault.removeprefix("status:").split("|")
            extra = b"".join(h.encode() + b"\r\n" for h in headers)
            writer.write(
                b"HTTP/1.1 %d Scripted\r\n%sContent-Length: 0\r\n\r\n" % (int(status), extra)
            )
            await writer.drain()
            return False
        if fault == "silent":
            await asyncio.sleep(2)  # longer than the attempt's timeout
            return True
        if fault == "reset_mid_body":
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok"')
            await writer.drain()
            writer.transport.abort()  # an RST, not a clean close
            return True
        if fault == "slow_headers":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
            return True
        if fault == "slow_body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
            for byte in b'{"ok":true}':
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
            return True
        if fault == "endless_body":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 4096
            while True:  # until the router gives up on it and hangs up
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.001)
        if fault == "redirect":
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return False
        if fault == "invalid_json":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n"
                b"{nope"
            )
            await writer.drain()
            return False
        raise AssertionError(f"unknown fault {fault!r}")
