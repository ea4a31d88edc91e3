"""Which identities may have an open conversation on disk that is not running: what the
directory asks before it reads the store for a customer it has no running conversation for.

A Bloom filter over the identities of every open conversation the store held at start-up and
of every conversation opened since. "No" is certain: nothing on disk can be this customer's
open conversation, so a new customer's first message opens one without a store read. "Maybe"
costs the read it always did. Identities are never taken out (a closed or erased
conversation only makes a "maybe" that reads and finds nothing), and past the size it was
made for the filter fills up and answers "maybe" more often: slower, never wrong. A start
(and a recovery, which starts the actors again) builds it afresh from the store.
"""

from __future__ import annotations

from collections.abc import Iterable

_BITS_PER_KEY = 16  # two probes: about one "maybe" in 70 for an identity never seen
# New identities it has room for besides those on disk: as many again, and at least this.
_ROOM = 100_000
_MOST_BITS = 1 << 27  # 16 MiB
_HASH_BITS = (1 << 64) - 1


class KeysOnDisk:
    __slots__ = ("_bits", "_mask")

    def __init__(self, expected: int) -> None:
        wanted = max(expected, 1) * _BITS_PER_KEY
        bits = min(1 << (wanted - 1).bit_length(), _MOST_BITS)
        self._bits = bytearray(bits // 8)
        self._mask = bits - 1

    @classmethod
    def of(cls, keys: Iterable[str], count: int) -> KeysOnDisk:
        """The store's `count` open identities, with room for new ones besides."""
        found = cls(count + max(count, _ROOM))
        for key in keys:
            found.add(key)
        return found

    def add(self, key: str) -> None:
        bits, mask = self._bits, self._mask
        h = hash(key) & _HASH_BITS
        first, second = h & mask, (h >> 32) & mask
        bits[first >> 3] |= 1 << (first & 7)
        bits[second >> 3] |= 1 << (second & 7)

    def may_hold(self, key: str) -> bool:
        bits, mask = self._bits, self._mask
        h = hash(key) & _HASH_BITS
        first, second = h & mask, (h >> 32) & mask
        return bool(bits[first >> 3] >> (first & 7) & 1 and bits[second >> 3] >> (second & 7) & 1)


class AnyKey:
    """For a directory told nothing about the store: every identity may be on disk."""

    __slots__ = ()

    def add(self, key: str) -> None:
        pass

    def may_hold(self, key: str) -> bool:
        return True
