"""The transactional KV seam: the one interface every metadata engine implements.

Everything kvfs stores goes through :class:`KVEngine`: revisioned point reads, paged range
scans, one atomic ``commit`` guarded by mod-revision compares, watches that resume from a
revision, and leases whose expiry deletes the keys attached to them.  The model is etcd's v3
API, reduced to what the filesystem needs, so an etcd driver is a thin translation and the
embedded and Raft stores run one shared state machine (:mod:`kvfs.kv.state`).

Invariants every engine keeps:
  * Revisions are one global, strictly increasing counter; every successful commit that
    changes something gets exactly one new revision, shared by all its writes.
  * ``mod_revision`` of an absent key is 0, so ``Compare(key, 0)`` means "key does not exist".
  * A commit is all or nothing.  A commit larger than :attr:`KVEngine.limits` is refused with
    :class:`TxnTooLarge` before anything is written -- never split or partially applied.
    So is one that puts a key twice, or puts a key it also deletes (by itself or inside a
    deleted range), as etcd refuses it: every engine runs :meth:`Limits.check`.
  * Watch events are delivered in revision order, grouped by revision, with nothing skipped;
    a watch from a compacted revision raises :class:`Compacted`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field


class KVError(Exception):
    """Base of all errors raised by a KV engine."""


class EngineUnavailable(KVError):
    """The engine could not be reached within its deadline (maps to EIO)."""


class NoSpace(KVError):
    """The engine refuses writes because it is full (maps to ENOSPC)."""


class TxnTooLarge(KVError):
    """A commit exceeds the engine's per-transaction limits, or writes a key twice (puts it
    twice, or puts it and deletes it -- alone or in a range); nothing was written.  etcd
    refuses both with INVALID_ARGUMENT, which its driver maps here."""


class Conflict(KVError):
    """An optimistic transaction kept conflicting after every retry."""


class Compacted(KVError):
    """A watch or read asked for a revision that has been compacted away."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(f"revision {requested} is compacted (oldest kept: {compact_revision})")
        self.requested = requested
        self.compact_revision = compact_revision


class StoreLocked(KVError):
    """An embedded store's directory is held by another process."""


class StoreCorrupt(KVError):
    """An embedded store's files are damaged beyond a torn tail."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    """Holds when ``key``'s mod revision equals ``mod_revision`` (0: the key is absent)."""

    key: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Deletes ``key``, or every key in ``[key, range_end)`` when ``range_end`` is set."""

    key: bytes
    range_end: bytes | None = None


@dataclass(frozen=True, slots=True)
class CommitResult:
    succeeded: bool
    revision: int  # the new revision on success, the current one on a failed compare
    # A failed compare that may be the commit's own doing: it was sent again after a
    # connection broke, and the first send may have been applied.  Its outcome is unknown.
    maybe_applied: bool = False


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    more: bool
    revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: bytes
    value: bytes | None  # None: deleted
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-transaction limits an engine enforces (etcd: 128 ops, 1.5 MiB per request)."""

    max_ops: int = 128
    max_request_bytes: int = 1536 * 1024
    max_value_bytes: int = 1536 * 1024 - 4096

    def check(self, compares: Sequence[Compare], puts: Sequence[Put],
              deletes: Sequence[Delete]) -> None:
        """Raise :class:`TxnTooLarge` if the transaction cannot be committed whole, or
        writes a key twice: puts it twice, or puts it and deletes it (etcd's "duplicate key
        given in txn request").  A delete's ``range_end`` of ``b"\\x00"`` reaches to the end
        of the keyspace."""
        # etcd counts compares and success operations separately, each against max_ops.
        if len(compares) > self.max_ops or len(puts) + len(deletes) > self.max_ops:
            raise TxnTooLarge(
                f"transaction has {len(compares)} compares and {len(puts) + len(deletes)} "
                f"writes; the engine allows at most {self.max_ops} of each")
        size = sum(len(c.key) + 16 for c in compares)
        size += sum(len(p.key) + len(p.value) + 16 for p in puts)
        size += sum(len(d.key) + len(d.range_end or b"") + 8 for d in deletes)
        if size > self.max_request_bytes:
            raise TxnTooLarge(
                f"transaction is {size} bytes; the engine allows at most "
                f"{self.max_request_bytes}")
        seen: set[bytes] = set()
        for p in puts:
            if p.key in seen:
                raise TxnTooLarge(f"transaction writes key {p.key!r} twice")
            seen.add(p.key)
            for d in deletes:
                if d.range_end is None:
                    hit = p.key == d.key
                else:
                    hit = d.key <= p.key and (p.key < d.range_end or d.range_end == b"\x00")
                if hit:
                    raise TxnTooLarge(
                        f"transaction both puts and deletes key {p.key!r}"
                        if d.range_end is None else
                        f"transaction puts key {p.key!r} inside the range "
                        f"[{d.key!r}, {d.range_end!r}) it deletes")


@dataclass(slots=True)
class WatchBatch:
    """All events of one or more consecutive revisions, ending at ``revision``."""

    revision: int
    events: list[WatchEvent] = field(default_factory=list)


class KVEngine(abc.ABC):
    """A transactional, revisioned, watchable key-value store (see module docstring)."""

    limits: Limits = Limits()
    # True when other processes may change the store concurrently (etcd, a Raft cluster):
    # mounts must then watch it to keep their caches coherent.
    shared: bool = False

    @abc.abstractmethod
    async def get(self, key: bytes) -> KeyValue | None:
        """The current value of ``key``, or None."""

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        """The current values of several keys, read at one revision where the engine can
        (remote engines answer in one round trip)."""
        return [await self.get(k) for k in keys]

    @abc.abstractmethod
    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        """Keys in ``[start, end)`` in byte order; at most ``limit`` of them when ``limit`` > 0.

        ``more`` tells whether keys beyond the page exist; page on by starting after the
        last key returned.  ``keys_only`` leaves ``value`` empty.
        """

    @abc.abstractmethod
    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        """If every compare holds, apply all puts and deletes atomically at one new revision.

        Returns ``succeeded=False`` (and writes nothing) when a compare fails.  Raises
        :class:`TxnTooLarge` for transactions over :attr:`limits`.  A commit that returned
        ``succeeded=True`` is durable.
        """

    @abc.abstractmethod
    def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes to keys in ``[start, end)`` from ``start_revision`` (inclusive) onwards."""

    @abc.abstractmethod
    async def current_revision(self) -> int:
        """The store's latest revision."""

    @abc.abstractmethod
    async def lease_grant(self, ttl: float) -> int:
        """A new lease id that expires ``ttl`` seconds after its last keep-alive."""

    @abc.abstractmethod
    async def lease_keepalive(self, lease: int) -> bool:
        """Renew ``lease``; False if it has already expired."""

    @abc.abstractmethod
    async def lease_revoke(self, lease: int) -> None:
        """Revoke ``lease`` now, deleting every key attached to it."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget history before ``revision`` (watches from earlier raise Compacted)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the engine's resources; further calls are errors."""

    def describe(self) -> str:
        """A human-readable name for logs and ``kvfs status`` (no secrets)."""
        return type(self).__name__

    def base(self) -> KVEngine:
        """The engine itself, beneath any wrappers (wrappers return their inner base)."""
        return self


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\x00"  # etcd's convention for "to the end of the keyspace"
