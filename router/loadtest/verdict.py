"""Did every accepted message arrive, once, in order? Pure: records in, a verdict out.

A stream is what one sender sends in sequence (one customer's messages, one bot's replies
in one conversation, one agent's messages in one session). The router promises order per
conversation and destination, so that is where it is judged: an arrival whose sequence number
is below one of its stream already seen there is misordered. A customer's messages on either
side of a close belong to two conversations, and are not ordered between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Destinations that get a copy of what was owed elsewhere (the bot, of an agent session's
# messages): judged for order and repeats, but a copy alone is not a delivery.
COPIES = frozenset({"bot-copy"})


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the router accepted (answered 2xx)."""

    mid: str
    stream: str
    seq: int


@dataclass(frozen=True, slots=True)
class Arrival:
    mid: str
    stream: str
    seq: int
    dest: str
    conversation: str = ""  # as the destination knows it; "" where it is not told


@dataclass(frozen=True)
class Verdict:
    accepted: int
    delivered: int
    lost: int
    misordered: int
    duplicates: int
    excused: int  # accepted, then refused by the conversation's rules and reported back
    lost_examples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.misordered == 0


def judge(
    sent: Iterable[Sent], arrivals: Iterable[Arrival], excused: Iterable[str] = ()
) -> Verdict:
    accepted = {s.mid for s in sent}
    refused = set(excused) & accepted
    arrived: set[str] = set()  # where it was owed; a copy to the bot does not count
    seen: set[tuple[str, str]] = set()
    highest: dict[tuple[str, str, str], int] = {}
    misordered = duplicates = 0
    for arrival in arrivals:
        if (arrival.mid, arrival.dest) in seen:
            duplicates += 1
            continue
        seen.add((arrival.mid, arrival.dest))
        if arrival.dest not in COPIES:
            arrived.add(arrival.mid)
        where = (arrival.stream, arrival.dest, arrival.conversation)
        top = highest.get(where)
        if top is not None and arrival.seq < top:
            misordered += 1
        else:
            highest[where] = arrival.seq
    missing = sorted(accepted - arrived - refused)
    return Verdict(
        accepted=len(accepted),
        delivered=len(accepted & arrived),
        lost=len(missing),
        misordered=misordered,
        duplicates=duplicates,
        excused=len(refused - arrived),
        lost_examples=tuple(missing[:10]),
    )
