"""Opening a port: an aiohttp runner behind the connection guard, with its deadlines and caps.

Both ports get the same deadlines; the debug port (loopback by default, for health checks,
scrapes and the live page) gets a small cap of its own. The public port's cap is kept within
half the open-file limit (`router.io.fd_limit`), so the daemon's own deliveries, store and
debug port never run out of descriptors because of what clients hold.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.config.settings import DebugConfig, ServerConfig
from router.http.connections import ConnectionLimits, GuardedSite, Listener
from router.http.errors import JsonErrorRunner, JsonErrorServer
from router.http.guard import Guard, Lean
from router.io.fd_limit import connection_cap

__all__ = [
    "DEBUG_MAX_CONNECTIONS",
    "Listener",
    "Port",
    "debug_port",
    "listen",
    "public_port",
    "runner_options",
]

DEBUG_MAX_CONNECTIONS = 64
# Once a stop's grace is over (`Admission.drain`), how long aiohttp gives what is left before
# cancelling it. Never 0: aiohttp reads 0 as "no limit".
_CANCEL_AFTER_S = 0.1


@dataclass(frozen=True)
class Port:
    name: str  # "public" or "debug"
    host: str
    port: int
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int
    max_connections_per_address: int
    tls: ssl.SSLContext | None = None


def public_port(server: ServerConfig, open_files: int, tls: ssl.SSLContext | None) -> Port:
    cap = connection_cap(server.max_connections, open_files)
    return Port(
        "public",
        server.host,
        server.port,
        server.header_timeout_s,
        server.body_timeout_s,
        server.max_header_bytes,
        cap,
        min(cap, server.max_connections_per_address),
        tls,
    )


def debug_port(debug: DebugConfig, server: ServerConfig) -> Port:
    return Port(
        "debug",
        debug.host,
        debug.port,
        server.header_timeout_s,
        server.body_timeout_s,
        server.max_header_bytes,
        DEBUG_MAX_CONNECTIONS,
        DEBUG_MAX_CONNECTIONS,
    )


def runner_options() -> dict[str, Any]:
    """For `JsonErrorRunner`: no inflating of request bodies (`router.http.admission`
    refuses compressed ones), and no wait at the stop beyond the daemon's own grace."""
    return {"auto_decompress": False, "shutdown_timeout": _CANCEL_AFTER_S}


async def listen(
    runner: JsonErrorRunner,
    port: Port,
    count: Callable[[str, str], None],
    lean: Callable[[], Lean] | None = None,
) -> Listener:
    """Set the runner up and listen; `OSError` when the port cannot be had. `count` is told
    of every connection refused or cut short, by port and reason; `lean` makes the port's
    lean path (`router.http.lean`), once the runner is set up."""
    await runner.setup()
    server = runner.server
    assert isinstance(server, JsonErrorServer)
    guard = Guard(port.name, port.header_timeout, port.body_timeout, port.max_header_bytes, count)
    limits = ConnectionLimits(port.max_connections, port.max_connections_per_address)
    listener = Listener(server, guard, limits, port.tls, None if lean is None else lean())
    await GuardedSite(runner, port.host, port.port, listener).start()
    return listener
