"""Slow clients: each opens a connection to a port on 127.0.0.1 and sends a request's headers
one byte a tick, without a token, never finishing them; when the server closes it, the client
opens another at its next tick. Run in-process (`run`) or as its own process:

    python -m tests.slowloris PORT --clients 500 --seconds 60 [--sources 10]

which prints one JSON object of figures when done. It stops by itself after `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field

# Started like a request to the admin API, then headers that never end.
HEAD = b"GET /v1/admin/integrations HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
FILLER = b"a"


@dataclass
class Figures:
    opened: int = 0  # connections the server accepted
    failed: int = 0  # connects that failed (refused, reset)
    closed_by_server: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # first line of what came back
    bytes_sent: int = 0


def source(index: int, sources: int) -> str:
    """Client `index`'s own loopback address: 127.0.0.2 upwards, `sources` of them."""
    return f"127.0.0.{2 + index % sources}"


async def client(port: int, address: str, tick: float, until: float, figures: Figures) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(address, 0)
            )
        except OSError:
            figures.failed += 1
            await asyncio.sleep(tick)
            continue
        figures.opened += 1
        answer = asyncio.ensure_future(reader.read(1024))
        sent = 0
        try:
            while loop.time() < until and not answer.done():
                piece = HEAD[sent : sent + 1] if sent < len(HEAD) else FILLER
                writer.write(piece)
                sent += 1
                figures.bytes_sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(answer), tick)
        except (OSError, ConnectionError):
            pass
        if answer.done():
            figures.closed_by_server += 1
            with contextlib.suppress(Exception):
                first = answer.result().split(b"\r\n", 1)[0].decode("latin-1") or "(closed)"
                figures.answers[first] = figures.answers.get(first, 0) + 1
        else:
            answer.cancel()
            with contextlib.suppress(BaseException):
                await answer
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def run(
    port: int, clients: int, seconds: float, *, tick: float = 1.0, sources: int = 1
) -> Figures:
    """`clients` slow clients for `seconds`, from `sources` loopback addresses."""
    figures = Figures()
    until = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(
        *(client(port, source(i, sources), tick, until, figures) for i in range(clients))
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tick", type=float, default=1.0)
    parser.add_argument("--sources", type=int, default=1)
    args = parser.parse_args()
    started = time.monotonic()
    figures = asyncio.run(
        run(args.port, args.clients, args.seconds, tick=args.tick, sources=args.sources)
    )
    print(json.dumps({**asdict(figures), "ran_s": round(time.monotonic() - started, 1)}))


if __name__ == "__main__":
    main()
