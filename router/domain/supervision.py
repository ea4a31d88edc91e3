"""Restart intensity: when a crashed conversation is started again, and when the event it
keeps failing on is set aside instead.

As in Erlang/OTP supervisors: at most `max_restarts` restarts within `window_s`, each after a
backoff that doubles; one more crash within the window means the event is poisoned. Pure: the
caller passes the clock's `now` and keeps the history.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 3
    window_s: float = 10.0
    backoff_s: float = 0.1


@dataclass(frozen=True)
class Restart:
    """Start again after `delay` seconds; `history` now includes this restart."""

    history: tuple[float, ...]
    delay: float


@dataclass(frozen=True)
class SetAside:
    """Past the intensity: the event is poisoned, and the conversation starts afresh (its
    history is cleared) with the events after it."""


def on_crash(history: tuple[float, ...], now: float, policy: RestartPolicy) -> Restart | SetAside:
    recent = tuple(at for at in history if now - at < policy.window_s)
    if len(recent) >= policy.max_restarts:
        return SetAside()
    return Restart((*recent, now), policy.backoff_s * 2 ** len(recent))
