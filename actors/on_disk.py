"""Which identities may have an open conversation on disk that is not running: what the
directory asks before it reads the store for a customer it has no running conversation for.

A Bloom filter over the identities of every open conversation the store held at start-up and
of every conversation opened since. "No" is certain: nothing on disk can be this customer's
open conversation, so a new customer's first message opens one without a store read. "Maybe"
costs the read it always did. Identities are never taken out (a closed or erased
conversation only makes a "maybe" that reads and finds nothing). A start (and a recovery,
which starts the actors again) builds it afresh from the store.

It grows as it fills, so a daemon that opens millions of conversations after it started
still opens a new customer's without a read: once the identities added reach what the open
layer was made for, a new layer with at least twice the room takes the next ones, and a key
is held if any layer holds it. Each new layer spends more bits per key, so the chance of a
"maybe" for an identity never seen stays under about one in twenty-five (a sum of
(2 / bits per key)² over the layers). The layers together stop growing at 64 MiB, about ten
million identities past a start with none: past that the last layer fills up and answers
"maybe" more often, slower, never wrong, until a restart builds the filter afresh.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

_BITS_PER_KEY = 16  # two probes: about one "maybe" in 70 for an identity never seen
_MORE_BITS_PER_LAYER = 8
# New identities it has room for besides those on disk: as many again, and at least this.
_ROOM = 100_000
_MOST_BITS = 1 << 27  # 16 MiB a layer
_MOST_BITS_IN_ALL = 1 << 29  # 64 MiB for every layer together
_HASH_BITS = (1 << 64) - 1


def _bits_for(keys: int, bits_per_key: int) -> int:
    wanted = max(keys, 1) * bits_per_key
    return min(1 << (wanted - 1).bit_length(), _MOST_BITS)


class _Layer:
    __slots__ = ("bits", "bits_per_key", "mask", "room")

    def __init__(self, size: int, bits_per_key: int) -> None:
        self.bits = bytearray(size // 8)
        self.bits_per_key = bits_per_key
        self.mask = size - 1
        self.room = max(size // bits_per_key, 1)

    def set(self, h: int) -> None:
        bits, mask = self.bits, self.mask
        first, second = h & mask, (h >> 32) & mask
        bits[first >> 3] |= 1 << (first & 7)
        bits[second >> 3] |= 1 << (second & 7)

    def holds(self, h: int) -> bool:
        bits, mask = self.bits, self.mask
        first, second = h & mask, (h >> 32) & mask
        return bool(bits[first >> 3] >> (first & 7) & 1 and bits[second >> 3] >> (second & 7) & 1)


class KeysOnDisk:
    __slots__ = ("_bits_in_all", "_full", "_open")

    def __init__(self, expected: int) -> None:
        size = _bits_for(expected, _BITS_PER_KEY)
        self._open = _Layer(size, _BITS_PER_KEY)
        self._full: tuple[_Layer, ...] = ()
        self._bits_in_all = size

    @classmethod
    def of(cls, keys: Iterable[str], count: int) -> KeysOnDisk:
        """The store's `count` open identities, with room for new ones besides."""
        found = cls(count + max(count, _ROOM))
        for key in keys:
            found.add(key)
        return found

    @property
    def layers(self) -> int:
        return len(self._full) + 1

    def add(self, key: str) -> None:
        h = hash(key) & _HASH_BITS
        if self._holds(h):
            return  # already held (or a "maybe" already): it takes no room
        layer = self._open
        if layer.room == 0:
            layer = self._grow()
        layer.set(h)
        layer.room -= 1

    def may_hold(self, key: str) -> bool:
        return self._holds(hash(key) & _HASH_BITS)

    def _holds(self, h: int) -> bool:
        if self._open.holds(h):
            return True
        full = self._full
        return bool(full) and any(layer.holds(h) for layer in full)

    def _grow(self) -> _Layer:
        """The next layer; once all are at most, the open one, which then takes the rest."""
        last = self._open
        made_for = (last.mask + 1) // last.bits_per_key
        bits_per_key = last.bits_per_key + _MORE_BITS_PER_LAYER
        size = _bits_for(made_for * 2, bits_per_key)
        if self._bits_in_all + size > _MOST_BITS_IN_ALL:
            last.room = sys.maxsize  # never asks for another layer again
            return last
        layer = _Layer(size, bits_per_key)
        self._bits_in_all += size
        self._full = (self._open, *self._full)
        self._open = layer
        return layer


class AnyKey:
    """For a directory told nothing about the store: every identity may be on disk."""

    __slots__ = ()

    def add(self, key: str) -> None:
        pass

    def may_hold(self, key: str) -> bool:
        return True
