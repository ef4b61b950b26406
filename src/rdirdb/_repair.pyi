"""Type stubs of rdirdb._repair: write stamps, tombstones and range digests."""

from typing import Sequence, final

from rdirdb._lmdb import Environment, Transaction

MAX_STAMP: int
MAX_RECEIVED_STAMP: int
STAMP_BITS_COUNTER: int

# An entry of a range: (full key = kind byte + stored key, stamp, value); value None: a tombstone.
_Entry = tuple[bytes, int, bytes | None]

def entry_hash(kind: int, key: bytes, value: bytes, tomb: bool) -> int:
    """The hash of one entry in a digest."""
def newer(stamp_a: int, tomb_a: bool, value_a: bytes | None, stamp_b: int, tomb_b: bool, value_b: bytes | None) -> int:
    """> 0: version a wins, < 0: b wins, 0: the same (the one resolution rule)."""
def same_content(value_a: bytes | None, value_b: bytes | None) -> bool:
    """Whether two versions of a key hold the same, stamps aside (None: a tombstone)."""
def check_entries(
    entries: Sequence[_Entry] | Sequence[list[object]], meta2: bool, max_clock_skew: float | None = None
) -> None:
    """Check entries as Stamps.apply_entries does, without a volume."""
def value_stamp(value: bytes) -> int:
    """The stamp of a stored record's value (0: written before stamps)."""

@final
class Stamps:
    """The stamps, tombstones and range digests of one volume's index."""

    env: Environment
    kinds: int
    meta2: bool
    def __init__(self, *args: object, **kwargs: object) -> None:
        """Made by the indexes (``ChunkIndex.stamps``, ``Meta2Index.stamps``) only."""
    @property
    def enabled(self) -> bool: ...
    def last_stamp(self) -> int: ...
    def tombstone_count(self) -> int: ...
    def tombstone_floor(self) -> int | None:
        """A stamp no tombstone is older than (None: unknown)."""
    def digest(self, bounds: Sequence[bytes | None], cutoff: int = 0, txn: Transaction | None = None) -> list[tuple[int, int]]:
        """(count, hash) of each range [bounds[i], bounds[i + 1])."""
    def split(
        self, lo: bytes | None, hi: bytes | None, parts: int, cutoff: int = 0, txn: Transaction | None = None
    ) -> list[tuple[bytes, int, int]]:
        """At most ``parts`` ranges of about as many entries: (start, count, hash)."""
    def entries(
        self, lo: bytes | None, hi: bytes | None, cutoff: int = 0, limit: int = 100000, txn: Transaction | None = None
    ) -> tuple[list[_Entry], bytes | None]:
        """The entries of [lo, hi) and the full key to resume at (None: the end)."""
    def apply_entries(
        self, entries: Sequence[_Entry] | Sequence[list[object]], max_clock_skew: float | None = None
    ) -> int:
        """Apply another replica's entries by newest stamp, in one transaction; RefusedEntries
        lists the bad ones and those stamped more than ``max_clock_skew`` s ahead."""
    def purge(self, cutoff: int) -> int:
        """Remove the tombstones older than ``cutoff``; returns how many."""
    def clear(self, records: bool = False) -> int:
        """Remove every tombstone (and every record with ``records``); the records removed."""
