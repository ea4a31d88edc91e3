"""Telling a service manager how the daemon is doing: systemd's `sd_notify` protocol, by hand.

A unit with `Type=notify` hands the daemon a datagram socket in `NOTIFY_SOCKET` and waits for
`READY=1` before it counts the service as started, so that whatever is ordered after it (a
proxy, a health check) never meets a port that is not listening yet. The protocol is one
datagram of `KEY=value` lines per state change, small enough not to take a dependency for.

- `READY=1` once both ports listen and the actors run; again after each reload.
- `RELOADING=1` with `MONOTONIC_USEC=` when a reload begins: `Type=notify` accepts it, and
  `Type=notify-reload` (systemd 253 and later) requires the timestamp to match the reload
  up with the `SIGHUP` it sent.
- `STOPPING=1` when SIGTERM or SIGINT begins the stop.
- `STATUS=` a line for `systemctl status`.

Without `NOTIFY_SOCKET` (run by hand, in a container) every call does nothing. A failed send
is logged and otherwise ignored: telling the manager is never worth stopping the daemon for.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

__all__ = ["Notifier"]

_log = structlog.get_logger("router.notify")


class Notifier:
    """Sends state changes to the socket named by `NOTIFY_SOCKET`, if any."""

    def __init__(self, address: str | None) -> None:
        self.address = _socket_address(address) if address else None
        if address and self.address is None:
            # systemd also knows vsock: addresses (for virtual machines); a daemon in a
            # VM that needs them would say so here rather than fail at every send.
            _log.warning("notify_socket_unsupported", notify_socket=address)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> bool:
        return self.send("READY=1", _status(status))

    def reloading(self, status: str) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", _status(status))

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", _status(status))

    def status(self, status: str) -> bool:
        return self.send(_status(status))

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; True when it left, False otherwise (no
        socket to send to, or the send failed and was logged)."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full socket buffer drops the state, never stalls
                sock.sendto(message, self.address)
        except (OSError, ValueError) as exc:
            _log.warning(
                "notify_failed", state=fields[0].split("=", 1)[0] if fields else "", error=str(exc)
            )
            return False
        return True


def _socket_address(value: str) -> str | None:
    """A path, or an abstract socket (`@name`: a leading NUL byte on the wire)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _status(text: str) -> str:
    """One line: a newline would start another field."""
    return "STATUS=" + " ".join(text.split())
