"""Secrets being replaced: a value taken out of use stays good until its overlap ends, so
that the other side can change over at any moment within it and no call is refused.

A secret is named by its slot, (kind, owner):

- `("admin", "")`: the admin token, checked on `/v1/admin/*`;
- `("webhook", "bot:<id>")`, `("webhook", "ccsp:<id>")`: a webhook token, checked in the path;
- `("token", "<dest key>")`: what the router presents as `Authorization: Bearer` to a bot or
  CCSP (its access token) or to a channel (the asset's token, which the channel presents
  back on each event);
- `("signing", "<dest key>")`: a signing secret, used to sign deliveries and to check
  signed callers.

Inbound, a retired value is accepted beside the current one. Outbound, deliveries are signed
with every secret still in force (Standard Webhooks carries several signatures in one
header), and a bearer token the peer refuses with 401 or 403 is tried again with the retired
one, so a peer that has not changed over yet keeps receiving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Slot = tuple[str, str]

# Not a secret: where a destination's token is presented (scheme, host and port). A retired
# token is never presented somewhere new, so a move ends its overlap.
ORIGIN = "origin"


@dataclass(frozen=True, slots=True)
class Retired:
    kind: str
    owner: str
    value: str
    until: float  # epoch seconds: good before this, refused from this on

    @property
    def slot(self) -> Slot:
        return (self.kind, self.owner)


def replaced(
    before: Mapping[Slot, str | None],
    after: Mapping[Slot, str | None],
    now: float,
    overlap_s: float,
) -> tuple[Retired, ...]:
    """The values `after` takes out of use, each good for `overlap_s` more. A secret set
    for the first time, or removed along with its owner, retires nothing; a slot whose
    value is cleared (signing switched off) does retire its old value, so a peer that
    checks signatures is not refused before it has been told."""
    if overlap_s <= 0:
        return ()
    gone = moved(before, after)
    return tuple(
        Retired(kind, owner, old, now + overlap_s)
        for (kind, owner), old in before.items()
        if old
        and kind != ORIGIN
        and not (kind == "token" and owner in gone)
        and (kind, owner) in after
        and after[(kind, owner)] != old
    )


def moved(before: Mapping[Slot, str | None], after: Mapping[Slot, str | None]) -> set[str]:
    """The destinations whose origin changed: their retired tokens must not follow them."""
    return {
        owner
        for (kind, owner), where in before.items()
        if kind == ORIGIN and (kind, owner) in after and after[(kind, owner)] != where
    }


class Overlaps:
    """The retired values still in force, by slot. Read on every authenticated request, so
    a lookup is one dict access and expired values are only skipped, then pruned."""

    def __init__(self, rows: Iterable[Retired] = ()) -> None:
        self._by_slot: dict[Slot, tuple[Retired, ...]] = {}
        for row in rows:
            self.add(row)

    def add(self, row: Retired) -> None:
        kept = [r for r in self._by_slot.get(row.slot, ()) if r.value != row.value]
        # The latest to expire first: the most recently replaced, the likeliest to match.
        self._by_slot[row.slot] = tuple(sorted((row, *kept), key=lambda r: -r.until))

    def values(self, kind: str, owner: str, now: float) -> tuple[str, ...]:
        rows = self._by_slot.get((kind, owner))
        if not rows:
            return ()
        return tuple(r.value for r in rows if r.until > now)

    def accepted(self, kind: str, owner: str, current: str | None, now: float) -> tuple[str, ...]:
        """The current value first, then each retired one still in force."""
        retired = self.values(kind, owner, now)
        return retired if current is None else (current, *retired)

    def end(self, kind: str, owner: str, keep: str | None = None) -> None:
        """End a slot's overlaps at once (its owner is gone, or an operator asked): only
        `keep`, the value now in use, survives should it have been retired before."""
        rows = tuple(r for r in self._by_slot.pop((kind, owner), ()) if r.value == keep)
        if rows:
            self._by_slot[(kind, owner)] = rows

    def owners_gone(self, present: Iterable[Slot]) -> tuple[Slot, ...]:
        """Slots holding retired values whose owner no longer has that secret at all."""
        keep = set(present)
        gone = tuple(slot for slot in self._by_slot if slot not in keep)
        for slot in gone:
            del self._by_slot[slot]
        return gone

    def prune(self, now: float) -> None:
        for slot, rows in list(self._by_slot.items()):
            alive = tuple(r for r in rows if r.until > now)
            if alive:
                self._by_slot[slot] = alive
            else:
                del self._by_slot[slot]

    def rows(self, now: float) -> tuple[Retired, ...]:
        return tuple(r for rows in self._by_slot.values() for r in rows if r.until > now)

    def view(self, now: float) -> list[dict[str, object]]:
        """For operators: which secrets are in overlap and until when, never a value."""
        return [
            {"kind": r.kind, "owner": r.owner, "until": r.until}
            for r in sorted(self.rows(now), key=lambda r: (r.kind, r.owner, r.until))
        ]
