"""One Raft member's durable state: its data directory, and the in-memory mirror the core reads.

:class:`RaftDisk` is what a Raft store member persists a :class:`~kvfs.raft.Ready` to, and
what its :class:`~kvfs.raft.RawNode` reads as its :class:`~kvfs.raft.Storage`.  It writes in
the order the host contract requires (snapshot, then entries, then hard state; see
``docs/raft.md``), with one fdatasync of the log per :meth:`RaftDisk.save` (group commit),
and only then updates the mirror -- so the core reads exactly what is on disk.  It also
keeps the member's identity, takes the host's own snapshots, compacts the log, and on open
rebuilds everything from the files, cutting a torn tail and refusing damage.

Directory layout
----------------
::

    LOCK                           flock'd while open; "<pid> <host>" (kvfs.kv.dirlock)
    IDENTITY                       written once by create(): who this member is
    wal-<seq>.log                  log segments (framing and rotation: kvfs.kv.wal)
    snap-<index>-<term>.snap       the newest snapshot and at most one older one

``<seq>``, ``<index>`` and ``<term>`` are 16 lower-case hex digits.  Every file is a series
of records framed as in :mod:`kvfs.kv.wal` -- ``[u32 length][u64 xxh64(payload)][payload]``,
big-endian -- whose payloads are msgpack (bytes as msgpack bin, strings as str).

``IDENTITY``: one record, a map ``{"magic": "kvfs-raft-member", "format": 1,
"cluster_token": str, "member_id": int}``.  Written to ``IDENTITY.tmp``, fsync'd, renamed,
the directory fsync'd; never rewritten.  A directory without it is not a Raft data
directory (``create`` left it behind half-made, or it is something else).

Log records (``wal-*.log``), a msgpack array whose first element is the record kind:

  ``[1, first_index, prev_term, [[term, kind, data], ...]]``  ENTRIES: entries
      ``first_index``, ``first_index + 1``, ...; ``kind`` is an
      :class:`~kvfs.raft.EntryKind` value; ``prev_term`` is the term of the entry before
      ``first_index`` (0 before index 1), as in an AppendEntries request.  On replay it
      replaces every entry at or after ``first_index`` (a conflicting suffix the core sent
      overrides what is there, as in etcd's WAL); ``prev_term`` must match the replayed
      log, and gives the log a known base even when compaction deleted the entry before.
  ``[2, term, vote, commit]``  HARD_STATE: the last one in the log wins.
  ``[3, index, term]``  SNAPSHOT: the host took a snapshot at (index, term) and its file is
      durable.  Entries at or below ``index`` may be compacted away from now on, so a
      replayed state must reach at least ``index`` (see "Loading").
  ``[4, index, term]``  INSTALL: a snapshot at (index, term) received from the leader was
      installed; it replaces the whole log -- entries logged before this record are void.
      It implies SNAPSHOT.

Snapshot files (``snap-*.snap``): ``["kvfs-raft-snapshot", 1, {"index", "term", "voters",
"learners", "size"}]``, then ``["data", bytes]`` records (at most 1 MiB each) holding the
state machine's data, then ``["end", number_of_data_records]``.  Written to
``snap-<index>-<term>.tmp``, fsync'd, renamed, the directory fsync'd; so a ``.snap`` file is
complete unless damaged later, and one that fails a checksum, lacks its end record, or whose
header disagrees with its name or size is *invalid*.

Writing (invariants)
--------------------
* :meth:`RaftDisk.save` writes the snapshot file first (if any), then one batch of log
  records -- INSTALL, ENTRIES, HARD_STATE, in that order -- with a single ``write`` and a
  single fdatasync (none when ``must_sync`` is false and there is no snapshot), and updates
  the mirror only after that.  A new segment adds a directory fsync; a Ready with a
  snapshot adds the snapshot file's fsync, directory fsyncs, and the deletion of the
  segments it made void.  A batch never holds a hard state whose commit exceeds the
  entries persisted before it: ``save`` refuses such a call (``ValueError``) before
  writing anything, so no prefix of what is on disk can have a commit beyond its log (the
  core's constructor would refuse that).
* With ``hold_commit`` (the embedded store's lone member), a save that changes only the
  commit index -- the second save of every commit there -- writes nothing: the mirror
  takes the new hard state, and a HARD_STATE record of it goes out with the next batch,
  or :meth:`RaftDisk.write_held_commit` (the member calls it every tick), or
  :meth:`RaftDisk.close`.  Safe for the same reason the unsynced write is: a commit index
  lost is learned again -- a lone member commits its whole log again when it next leads,
  before it serves anything from it (``RaftNode.read_barrier``).
* Records written without a sync stay in order: the next synced batch, a segment rotation,
  or :meth:`RaftDisk.close` makes them durable, and a rotation never leaves an unsynced
  older segment behind (:class:`~kvfs.kv.wal.WalWriter`).
* Entries the core hands over below the mirror's first index are dropped, a snapshot not
  newer than the held one is ignored -- exactly as :class:`~kvfs.raft.MemoryStorage` does,
  so the disk and the mirror never disagree.
* :meth:`RaftDisk.save_snapshot` writes the file, then a synced SNAPSHOT record, then
  updates the mirror, deletes all but the newest two snapshot files, and compacts.  The
  mirror keeps ``hold_entries`` entries at or before the snapshot -- or fewer, so that they
  come to at most ``hold_bytes`` of data (log entries carry values, blocks included): what
  a slow follower may still need from memory.  The log on disk keeps ``keep_entries`` /
  ``keep_bytes`` counted the same way over the entries the mirror held until then, and at
  least the mirror's new window.  By default the two windows are the same; a member
  without followers (the embedded store) holds none in memory (``hold_entries=0``): its
  mirror then holds just the entries after the previous snapshot, so the disk still
  reaches back to that one -- the fallback of step 4 below.
  Compaction (:meth:`RaftDisk.compact`) deletes whole segments
  only, oldest first and one directory fsync per segment (so a crash leaves a prefix
  deleted, never a hole): a segment goes once every entry it holds that still counts (those
  after the last INSTALL) is at or below the compaction index.  If it holds the latest
  HARD_STATE or snapshot record, those are first restated in the newest segment.

Loading (:meth:`RaftDisk.open`)
-------------------------------
1. Leftover ``*.tmp`` files are deleted.
2. Every segment is scanned.  Consecutive segments must join up exactly.  A torn tail of the
   *last* segment (an incomplete record, or a bad checksum followed by nothing or only zero
   bytes) is cut off with a warning; the last segment is then fsync'd, because a crashed
   predecessor's unsynced writes may still be only in the page cache and new records are
   about to follow them.  Any other damage, or a record that does not decode, raises
   :class:`~kvfs.kv.api.StoreCorrupt` naming the file and the offset.
3. The records are replayed: ENTRIES with the truncation rule above (a ``prev_term`` that
   does not match is corruption), HARD_STATE last wins, INSTALL empties the log and sets
   its base, the newest SNAPSHOT/INSTALL index is the *required* index.  An ENTRIES record
   beyond the end of the replayed log (the records in between were in a compacted segment)
   restarts the replayed log there.  The newest valid snapshot file (step 4) is read
   first: entries more than ``hold_entries`` before it lose their data as they are
   replayed (only their terms matter, for the checks of steps 3 and 5), so opening holds
   the hold window and what follows the snapshot in memory, not the whole log on disk.
4. The newest valid snapshot file is chosen.  Invalid ones are skipped with a warning
   (renamed to ``*.damaged`` once the open succeeds); falling back to an older snapshot
   works only if the log still reaches back to just after it -- which ``keep_entries`` at
   least as large as the host's snapshot interval ensures.
5. The log is fitted to the snapshot (S, T): if the log (including its base) has term T at
   index S, it continues the snapshot and is kept (the hold window's entries at or below S
   included, for slow followers; the stripped ones stay out); if it starts after S + 1
   the open fails (entries are missing).  A log that lies wholly below S, or holds a
   different term at S, is what the snapshot replaced -- the crash came between an
   installed snapshot's file and its INSTALL record -- and is discarded; an INSTALL
   record is then written so later appends replay correctly.
   The state must reach the required index and the hard state's commit, else
   :class:`~kvfs.kv.api.StoreCorrupt`.

Crash cases, and why each is safe
---------------------------------
* Mid-batch (torn tail): any prefix of INSTALL, ENTRIES, HARD_STATE is consistent.  A lost
  hard state means the Ready's messages never left; entries without their hard state were
  never acknowledged; the core adopts the log's last term when it is ahead of the hard
  state's.
* Snapshot file durable, its INSTALL record lost: step 5 discards the log it replaces.
* Snapshot file durable, its SNAPSHOT record lost: nothing was compacted on its account
  yet; the log still holds entry S and continues it.
* Mid-compaction: a prefix of the segments is gone; the rest replays to the same state
  (restated hard state and snapshot record are durable before the first deletion).
* A half-written snapshot or identity file is a ``.tmp`` file and is deleted (identity: the
  directory is refused by ``open`` and accepted again by ``create``).  A snapshot whose
  rename did not reach the disk is simply absent: the log still covers it.
* Unsynced records (a lazily written commit) lost, or one held back never written: only
  a commit index, which the leader teaches again.  They can only be lost from the last
  segment, and a process that died with them in the page cache is followed by one that
  fsyncs that segment before appending.

Threads
-------
All methods block; the server calls them through ``trio.to_thread.run_sync``.  Writers
(``save``, ``save_snapshot``, ``compact``, ``bootstrap``, ``close``) are serialised by a
lock.  The read side (the :class:`~kvfs.raft.Storage` methods) takes no lock: the mirror
is a :class:`~kvfs.raft.MemoryStorage` updated in place, each of whose changes is one
atomic step (an append extends its list, anything that shortens or replaces the log
publishes a new list), so each read sees the state before or after a step, never half of
one -- and a save costs the same however long the log held in memory is.  A *sequence*
of reads is
consistent because of the core's contract: the core reads storage only while handling an
input or building a Ready, and the host calls ``save`` between ``ready()`` and ``advance()``
(when :class:`~kvfs.raft.RawNode` refuses every input) and ``save_snapshot``/``compact``
while it feeds the node nothing -- the node loop awaits them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from kvfs.durable import fsync_dir, make_dirs, replacing
from kvfs.kv.api import KVError, StoreCorrupt
from kvfs.kv.dirlock import DirLock
from kvfs.kv.wal import HEADER, WalWriter, frame, list_segments, scan
from kvfs.raft.rawnode import bootstrap_state
from kvfs.raft.storage import MemoryStorage, Storage
from kvfs.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    NodeId,
    Ready,
    Snapshot,
    SnapshotMeta,
)
from kvfs.raftkv.metrics import RaftObserver

log = logging.getLogger(__name__)

FORMAT = 1
IDENTITY = "IDENTITY"
IDENTITY_MAGIC = "kvfs-raft-member"
SNAPSHOT_MAGIC = "kvfs-raft-snapshot"
SNAPSHOT_RE = re.compile(r"^snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_SNAPSHOT_CHUNK = 1 << 20
_SNAPSHOTS_KEPT = 2

# Log record kinds (the first element of every log record's msgpack array).
ENTRIES = 1
HARD_STATE = 2
SNAPSHOT = 3
INSTALL = 4


class RaftDiskError(KVError):
    """A directory is not a usable Raft data directory: missing, not one, of another
    member or cluster, of an unknown format, not empty on create, or failed earlier."""


class _BadSnapshot(Exception):
    """A snapshot file is incomplete or damaged."""


@dataclass(frozen=True, slots=True)
class Identity:
    cluster_token: str
    member_id: NodeId
    format: int = FORMAT


# -- log records ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _EntriesRec:
    prev_term: int  # the term of the entry before entries[0]
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class _HardStateRec:
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class _MarkRec:
    index: int
    term: int
    install: bool  # INSTALL (replaces the log) rather than SNAPSHOT


_Record = _EntriesRec | _HardStateRec | _MarkRec


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _encode(rec: _Record) -> bytes:
    if isinstance(rec, _EntriesRec):
        return _pack([ENTRIES, rec.entries[0].index, rec.prev_term,
                      [[e.term, int(e.kind), e.data] for e in rec.entries]])
    if isinstance(rec, _HardStateRec):
        hs = rec.hard_state
        return _pack([HARD_STATE, hs.term, int(hs.vote), hs.commit])
    return _pack([INSTALL if rec.install else SNAPSHOT, rec.index, rec.term])


def _nat(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def _decode(payload: bytes, path: str, offset: int) -> _Record:
    try:
        rec = msgpack.unpackb(payload, raw=False)
        if not isinstance(rec, list) or not rec:
            raise ValueError("not a non-empty array")
        kind = rec[0]
        if kind == ENTRIES:
            _, first, prev_term, items = rec
            index = _nat(first)
            if index < 1 or not isinstance(items, list) or not items:
                raise ValueError("bad entries record")
            entries = []
            for i, (term, ekind, data) in enumerate(items):
                if not isinstance(data, bytes):
                    raise ValueError("entry data is not bytes")
                entries.append(Entry(_nat(term), index + i, EntryKind(ekind), data))
            return _EntriesRec(_nat(prev_term), entries)
        if kind == HARD_STATE:
            _, term, vote, commit = rec
            return _HardStateRec(HardState(_nat(term), NodeId(_nat(vote)), _nat(commit)))
        if kind in (SNAPSHOT, INSTALL):
            _, index, term = rec
            return _MarkRec(_nat(index), _nat(term), kind == INSTALL)
        raise ValueError(f"unknown record kind {kind!r}")
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StoreCorrupt(
            f"{path} is corrupt at offset {offset}: undecodable log record ({exc})") from exc


# -- snapshot files ------------------------------------------------------------------------

def snapshot_name(index: int, term: int) -> str:
    return f"snap-{index:016x}-{term:016x}.snap"


def _list_snapshots(directory: str) -> list[tuple[int, int, str]]:
    """``(index, term, path)`` of every snapshot file, newest first."""
    out = []
    for name in os.listdir(directory):
        m = SNAPSHOT_RE.match(name)
        if m:
            out.append((int(m.group(1), 16), int(m.group(2), 16),
                        os.path.join(directory, name)))
    out.sort(reverse=True)
    return out


def _write_snapshot_file(directory: str, snapshot: Snapshot) -> None:
    meta = snapshot.meta
    final = os.path.join(directory, snapshot_name(meta.index, meta.term))
    tmp = final[:-len(".snap")] + ".tmp"
    data = snapshot.data
    chunks = range(0, len(data), _SNAPSHOT_CHUNK)
    head = {"index": meta.index, "term": meta.term,
            "voters": sorted(int(n) for n in meta.conf_state.voters),
            "learners": sorted(int(n) for n in meta.conf_state.learners),
            "size": len(data)}
    with replacing(final, tmp=tmp, buffering=1 << 20) as f:
        f.write(frame(_pack([SNAPSHOT_MAGIC, FORMAT, head])))
        for off in chunks:
            f.write(frame(_pack(["data", data[off:off + _SNAPSHOT_CHUNK]])))
        f.write(frame(_pack(["end", len(chunks)])))


def _read_snapshot_file(path: str, index: int, term: int) -> Snapshot:
    """The snapshot in ``path`` (named for ``index``, ``term``); :class:`_BadSnapshot` if
    it is not complete and intact."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        payloads, _ = scan(raw, path, allow_torn=False)
    except StoreCorrupt as exc:
        raise _BadSnapshot(str(exc)) from None
    try:
        recs = [msgpack.unpackb(p, raw=False) for p in payloads]
        if len(recs) < 2 or recs[0][:2] != [SNAPSHOT_MAGIC, FORMAT]:
            raise _BadSnapshot(f"{path}: not a kvfs Raft snapshot of format {FORMAT}")
        head = recs[0][2]
        if (head["index"], head["term"]) != (index, term):
            raise _BadSnapshot(f"{path}: holds index {head['index']} term {head['term']}, "
                               f"not what its name says")
        if recs[-1][0] != "end" or recs[-1][1] != len(recs) - 2:
            raise _BadSnapshot(f"{path}: no valid end record (incomplete snapshot)")
        parts = []
        for rec in recs[1:-1]:
            if rec[0] != "data" or not isinstance(rec[1], bytes):
                raise _BadSnapshot(f"{path}: unexpected record {rec[0]!r}")
            parts.append(rec[1])
        data = b"".join(parts)
        if len(data) != head["size"]:
            raise _BadSnapshot(f"{path}: holds {len(data)} bytes of data, expected "
                               f"{head['size']}")
        conf = ConfState(frozenset(NodeId(_nat(n)) for n in head["voters"]),
                         frozenset(NodeId(_nat(n)) for n in head["learners"]))
    except _BadSnapshot:
        raise
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise _BadSnapshot(f"{path}: undecodable record ({exc})") from None
    return Snapshot(SnapshotMeta(index, term, conf), data)


# -- identity ------------------------------------------------------------------------------

def _write_identity(directory: str, identity: Identity) -> None:
    record = frame(_pack({"magic": IDENTITY_MAGIC, "format": identity.format,
                          "cluster_token": identity.cluster_token,
                          "member_id": int(identity.member_id)}))
    with replacing(os.path.join(directory, IDENTITY)) as f:
        f.write(record)


def read_identity(directory: str) -> Identity:
    path = os.path.join(directory, IDENTITY)
    with open(path, "rb") as f:
        raw = f.read()
    payloads, _ = scan(raw, path, allow_torn=False)  # damage: StoreCorrupt, naming the offset
    try:
        if len(payloads) != 1:
            raise ValueError(f"{len(payloads)} records")
        head = msgpack.unpackb(payloads[0], raw=False)
        magic = head.get("magic") if isinstance(head, dict) else None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RaftDiskError(f"{directory} is not a kvfs Raft data directory ({path}: {exc})"
                            ) from None
    if magic != IDENTITY_MAGIC:
        raise RaftDiskError(f"{directory} is not a kvfs Raft data directory ({path} is not "
                            f"a member identity)")
    if head.get("format") != FORMAT:
        raise RaftDiskError(f"{directory} has format version {head.get('format')!r}; this "
                            f"kvfs reads version {FORMAT}")
    token, member = head.get("cluster_token"), head.get("member_id")
    if not isinstance(token, str) or type(member) is not int or member <= 0:
        raise StoreCorrupt(f"{path} is corrupt at offset 0: bad identity fields")
    return Identity(token, NodeId(member))


def _stray_names(directory: str) -> list[str]:
    """What keeps ``directory`` from counting as empty for :meth:`RaftDisk.create`: the
    leftovers of an interrupted create (its lock file, an unrenamed identity) do not."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n not in ("LOCK", IDENTITY + ".tmp"))


def _refuse_stray(directory: str) -> None:
    stray = _stray_names(directory)
    if stray:
        more = ", ..." if len(stray) > 3 else ""
        raise RaftDiskError(f"{directory} is not empty ({', '.join(stray[:3])}{more}): "
                            f"refusing to create a Raft data directory in it")


# -- replay --------------------------------------------------------------------------------

class _ReplayedLog:
    """The log as the records on disk describe it: entries ``base + 1 ..``, the entry at
    ``base`` having term ``base_term`` (``base`` is None until an ENTRIES or INSTALL record
    is seen).  Entries at or below ``strip_upto`` are kept without their data."""

    def __init__(self, strip_upto: int = 0) -> None:
        self.strip_upto = strip_upto
        self.base: int | None = None
        self.base_term = 0
        self.entries: list[Entry] = []
        self.hard_state: HardState | None = None
        self.required = 0  # the newest snapshot the records say exists

    def apply(self, rec: _Record) -> None:
        """Replay one record; ValueError if it does not fit the log before it."""
        if isinstance(rec, _HardStateRec):
            self.hard_state = rec.hard_state
        elif isinstance(rec, _MarkRec):
            self.required = max(self.required, rec.index)
            if rec.install:
                self.base, self.base_term, self.entries = rec.index, rec.term, []
        else:
            first = rec.entries[0].index
            entries = rec.entries
            if first <= self.strip_upto:
                entries = [Entry(e.term, e.index, e.kind) if e.index <= self.strip_upto
                           else e for e in entries]
            if self.base is None or first <= self.base or first > self.last() + 1:
                # Nothing yet; a record replacing all we hold; or one past a hole that a
                # compaction left (the snapshot must cover the hole: checked by _fit).
                self.base, self.base_term = first - 1, rec.prev_term
                self.entries = list(entries)
            else:
                before = (self.base_term if first - 1 == self.base
                          else self.entries[first - self.base - 2].term)
                if before != rec.prev_term:
                    raise ValueError(f"entries from index {first} follow term "
                                     f"{rec.prev_term}, but the log has term {before} at "
                                     f"index {first - 1}")
                del self.entries[first - self.base - 1:]
                self.entries.extend(entries)

    def last(self) -> int:
        assert self.base is not None
        return self.base + len(self.entries)


# -- the disk ------------------------------------------------------------------------------

class RaftDisk:
    """One member's data directory, open and locked; see the module docstring.

    Use :meth:`create` or :meth:`open`, and :meth:`close` (or ``with``) when done.
    """

    def __init__(self, directory: str, lock: DirLock, identity: Identity, *,
                 keep_entries: int, segment_bytes: int, keep_bytes: int = 128 << 20,
                 hold_entries: int | None = None, hold_bytes: int | None = None,
                 metrics: RaftObserver | None = None, hold_commit: bool = False) -> None:
        hold_entries = keep_entries if hold_entries is None else hold_entries
        hold_bytes = keep_bytes if hold_bytes is None else hold_bytes
        if min(keep_entries, keep_bytes, hold_entries, hold_bytes) < 0 or segment_bytes <= 0:
            raise ValueError("keep_entries, keep_bytes, hold_entries and hold_bytes must be "
                             ">= 0 and segment_bytes > 0")
        self.keep_bytes = keep_bytes
        # The window the mirror holds in memory at or before its snapshot (module doc).
        self.hold_entries = hold_entries
        self.hold_bytes = hold_bytes
        self.directory = directory
        self.metrics = metrics or RaftObserver()  # told each sync's and snapshot's time
        self.identity = identity
        self.keep_entries = keep_entries
        self.segment_bytes = segment_bytes
        self._dirlock: DirLock | None = lock
        self._write_lock = threading.Lock()
        self._mirror = MemoryStorage()
        self._wal: WalWriter | None = None
        self._failed: BaseException | None = None
        # Per segment (by first record seq): the highest entry index it holds that still
        # counts (0: none); which segments hold the latest hard state / snapshot record.
        self._seg_max: dict[int, int] = {}
        self._hard_state_seg: int | None = None
        self._mark_seg: int | None = None
        # Whether a save that changes only the commit index is held back (module doc,
        # "Writing"), and whether the mirror's hard state is one not written yet.
        self.hold_commit = hold_commit
        self._commit_held = False

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str, cluster_token: str, member_id: int, *,
               keep_entries: int = 5000, segment_bytes: int = 16 << 20,
               metrics: RaftObserver | None = None) -> RaftDisk:
        """Make ``directory`` (created if missing; must be empty) a new member's data
        directory and open it.  Raises :class:`RaftDiskError` if it is not empty and
        :class:`~kvfs.kv.api.StoreLocked` if another process holds it."""
        if not cluster_token:
            raise ValueError("a cluster token is required")
        if member_id <= 0:
            raise ValueError("member ids are positive")
        directory = os.path.abspath(directory)
        _refuse_stray(directory)
        make_dirs(directory)
        lock = DirLock.acquire(directory)
        try:
            _refuse_stray(directory)  # again, now that nobody else can be creating it
            identity = Identity(cluster_token, NodeId(member_id))
            _write_identity(directory, identity)
            disk = cls(directory, lock, identity, keep_entries=keep_entries,
                       segment_bytes=segment_bytes, metrics=metrics)
            disk._load()
        except BaseException:
            lock.release()
            raise
        return disk

    @classmethod
    def open(cls, directory: str, *, cluster_token: str | None = None,
             member_id: int | None = None, keep_entries: int = 5000,
             segment_bytes: int = 16 << 20, keep_bytes: int = 128 << 20,
             hold_entries: int | None = None, hold_bytes: int | None = None,
             metrics: RaftObserver | None = None, hold_commit: bool = False) -> RaftDisk:
        """Open an existing member's data directory and recover its state.  ``keep_*`` is
        the log window kept on disk after a snapshot, ``hold_*`` the one kept in memory
        (default: the same; see the module docstring); ``hold_commit``: hold back saves
        that change only the commit index until :meth:`write_held_commit` or the next
        batch (module docstring, "Writing").

        Raises :class:`RaftDiskError` if it is not a kvfs Raft data directory or (when
        given) belongs to another cluster or member, :class:`~kvfs.kv.api.StoreLocked` if
        another process holds it, :class:`~kvfs.kv.api.StoreCorrupt` if its files are
        damaged beyond a torn tail.
        """
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            raise RaftDiskError(f"{directory}: no such directory")
        if not os.path.exists(os.path.join(directory, IDENTITY)):
            raise RaftDiskError(f"{directory} is not a kvfs Raft data directory (it has no "
                                f"{IDENTITY} file)")
        lock = DirLock.acquire(directory)
        try:
            identity = read_identity(directory)
            if cluster_token is not None and identity.cluster_token != cluster_token:
                raise RaftDiskError(
                    f"{directory} belongs to cluster {identity.cluster_token!r}, not "
                    f"{cluster_token!r}")
            if member_id is not None and identity.member_id != member_id:
                raise RaftDiskError(f"{directory} belongs to member {identity.member_id}, "
                                    f"not {member_id}")
            disk = cls(directory, lock, identity, keep_entries=keep_entries,
                       segment_bytes=segment_bytes, keep_bytes=keep_bytes,
                       hold_entries=hold_entries, hold_bytes=hold_bytes, metrics=metrics,
                       hold_commit=hold_commit)
            disk._load()
        except BaseException:
            lock.release()
            raise
        return disk

    @property
    def cluster_token(self) -> str:
        return self.identity.cluster_token

    @property
    def member_id(self) -> NodeId:
        return self.identity.member_id

    def close(self) -> None:
        """Make anything written without a sync durable, and unlock.  Idempotent."""
        with self._write_lock:
            wal, self._wal = self._wal, None
            try:
                if wal is not None:
                    try:
                        if self._failed is None:
                            if self._commit_held:
                                wal.append([_encode(_HardStateRec(self._mirror.hard_state))],
                                           sync=False)
                                self._commit_held = False
                            wal.sync()
                    finally:
                        wal.close()
            finally:
                lock, self._dirlock = self._dirlock, None
                if lock is not None:
                    lock.release()

    def __enter__(self) -> RaftDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the read side: kvfs.raft.Storage ----------------------------------------------------

    @property
    def storage(self) -> Storage:
        """What the core reads (this object)."""
        return self

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._mirror.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        return self._mirror.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        return self._mirror.term(index)

    def first_index(self) -> int:
        return self._mirror.first_index()

    def last_index(self) -> int:
        return self._mirror.last_index()

    def snapshot(self) -> Snapshot:
        return self._mirror.snapshot()

    @property
    def hard_state(self) -> HardState:
        return self._mirror.hard_state

    # -- writing -----------------------------------------------------------------------------

    def bootstrap(self, voters: Iterable[NodeId]) -> None:
        """Persist a new cluster's first configuration (:func:`kvfs.raft.bootstrap_state`);
        every initial member does this with the same voters before its first RawNode."""
        if self.last_index() != 0 or self.hard_state != HardState() or self.snapshot().meta.index:
            raise ValueError(f"{self.directory}: bootstrap needs an empty member")
        entries, hard_state = bootstrap_state(voters)
        self.save(hard_state, entries, None, True)

    def save_ready(self, rd: Ready) -> None:
        """:meth:`save` what ``rd`` asks to persist."""
        self.save(rd.hard_state, rd.entries, rd.snapshot, rd.must_sync)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None, must_sync: bool) -> None:
        """Persist a Ready's snapshot, entries and hard state, in that order, then update
        the mirror.  One fdatasync of the log when ``must_sync`` (a snapshot always makes
        its own file and the batch durable).  Raises ``ValueError`` for a batch the core
        cannot have produced (non-contiguous entries, a gap after the log, a commit beyond
        the log), before writing anything."""
        with self._write_lock:
            self._check_usable()
            mirror = self._mirror
            if snapshot is not None and snapshot.meta.index <= mirror.snapshot().meta.index:
                snapshot = None  # not newer than ours: MemoryStorage ignores it too
            ents = list(entries)
            for a, b in zip(ents, ents[1:], strict=False):
                if b.index != a.index + 1:
                    raise ValueError(f"entries are not contiguous: {a.index} then {b.index}")
            first = snapshot.meta.index + 1 if snapshot is not None else mirror.first_index()
            last = snapshot.meta.index if snapshot is not None else mirror.last_index()
            if ents and ents[-1].index < first:
                ents = []  # all compacted already
            elif ents and ents[0].index < first:
                ents = ents[first - ents[0].index:]
            if ents and ents[0].index > last + 1:
                raise ValueError(f"entries from {ents[0].index} would leave a gap after the "
                                 f"last persisted index {last}")
            new_last = ents[-1].index if ents else last
            if hard_state is not None and hard_state.commit > new_last:
                raise ValueError(f"hard state commit {hard_state.commit} is beyond the last "
                                 f"index {new_last} persisted with it")

            if (self.hold_commit and hard_state is not None and not ents and snapshot is None
                    and not must_sync and (hard_state.term, hard_state.vote)
                    == (mirror.hard_state.term, mirror.hard_state.vote)):
                # Only the commit index moved: held back, written with the next batch.
                mirror.set_hard_state(hard_state)
                self._commit_held = True
                return

            records: list[_Record] = []
            prev_term = 0
            if ents:
                # The entry before lies in the mirror (its base at the lowest, as entries
                # below the first index were dropped above), or is the new snapshot's.
                prev = ents[0].index - 1
                prev_term = (snapshot.meta.term if snapshot is not None
                             and prev == snapshot.meta.index else mirror.term(prev))
            if snapshot is not None:
                # The file first, durably: an INSTALL record must never name a snapshot that
                # a crash could take away.  Failing here changes nothing persisted.
                _write_snapshot_file(self.directory, snapshot)
                records.append(_MarkRec(snapshot.meta.index, snapshot.meta.term, True))
            if ents:
                records.append(_EntriesRec(prev_term, ents))
            if hard_state is not None:
                records.append(_HardStateRec(hard_state))
            elif self._commit_held and snapshot is None and records:
                records.append(_HardStateRec(mirror.hard_state))
            if not records:
                return
            try:
                synced = must_sync or snapshot is not None
                started = time.monotonic()
                self._append(records, sync=synced)
                if synced:
                    self.metrics.wal_synced(time.monotonic() - started)
                # In place: each step is one atomic change a reader sees before or after
                # (MemoryStorage); copying the log here would cost its length per save.
                if snapshot is not None:
                    mirror.apply_snapshot(snapshot)
                mirror.append(ents)
                if hard_state is not None:
                    mirror.set_hard_state(hard_state)
                if snapshot is not None:
                    self._prune_snapshots()
                    self._drop_segments(snapshot.meta.index)
            except BaseException as exc:
                self._failed = exc
                raise

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist a snapshot the host took of its state machine (data at its applied
        index, conf state from the core), then compact: the mirror to the hold window, the
        log on disk to the keep window but never past what the mirror held before (entries
        kept for slow followers, and so that the previous snapshot stays a usable fallback
        when the windows are at least the snapshot interval).  A snapshot not
        newer than the held one is ignored; ``ValueError`` if its index is not in the log
        or its term differs from the log's."""
        with self._write_lock:
            self._check_usable()
            mirror = self._mirror
            meta = snapshot.meta
            if meta.index <= mirror.snapshot().meta.index:
                return
            if meta.index > mirror.last_index():
                raise ValueError(f"snapshot at {meta.index} is beyond the last persisted "
                                 f"index {mirror.last_index()}")
            if mirror.term(meta.index) != meta.term:
                raise ValueError(f"snapshot at {meta.index} says term {meta.term}, the log "
                                 f"has term {mirror.term(meta.index)}")
            started = time.monotonic()
            _write_snapshot_file(self.directory, snapshot)
            try:
                self._append([_MarkRec(meta.index, meta.term, False)], sync=True)
                mirror.create_snapshot(meta.index, meta.conf_state, snapshot.data)
                self.metrics.snapshot_saved(time.monotonic() - started)
                self._prune_snapshots()
                hold_from = self._window_start(meta.index, self.hold_entries,
                                               self.hold_bytes)
                keep_from = min(hold_from, self._window_start(meta.index, self.keep_entries,
                                                              self.keep_bytes))
                self._compact_locked(hold_from - 1, keep_from - 1)
            except BaseException as exc:
                self._failed = exc
                raise

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (at most the snapshot's index) from the mirror, and
        the log segments that hold nothing after it."""
        with self._write_lock:
            self._check_usable()
            if index > self._mirror.snapshot().meta.index:
                raise ValueError(f"cannot compact to {index}, beyond the snapshot at "
                                 f"{self._mirror.snapshot().meta.index}")
            try:
                self._compact_locked(index, index)
            except BaseException as exc:
                self._failed = exc
                raise

    def write_held_commit(self) -> None:
        """Write the commit index a save held back (``hold_commit``), if any, without a
        sync: one small buffered write, so that a process killed after this keeps it."""
        with self._write_lock:
            if not self._commit_held:
                return
            self._check_usable()
            try:
                self._append([_HardStateRec(self._mirror.hard_state)], sync=False)
            except BaseException as exc:
                self._failed = exc
                raise

    # -- internals (callers hold _write_lock) ------------------------------------------------

    def _check_usable(self) -> None:
        if self._wal is None:
            raise RaftDiskError(f"{self.directory}: the Raft disk is closed")
        if self._failed is not None:
            raise RaftDiskError(f"{self.directory}: an earlier write failed "
                                f"({self._failed!r}); reopen the directory to recover")

    def _append(self, records: list[_Record], *, sync: bool) -> None:
        assert self._wal is not None
        self._wal.append([_encode(r) for r in records], sync=sync)
        segment = self._wal.segments()[-1][0]  # a batch never spans segments
        for rec in records:
            self._track(segment, rec)

    def _track(self, segment: int, rec: _Record) -> None:
        if isinstance(rec, _HardStateRec):
            self._hard_state_seg = segment
            # A hard state written now is at least as new as one held back.
            self._commit_held = False
        elif isinstance(rec, _MarkRec):
            self._mark_seg = segment
            if rec.install:
                # Everything logged before an INSTALL is void: those segments hold nothing
                # that counts any more.
                for seg in self._seg_max:
                    self._seg_max[seg] = 0
                self._seg_max[segment] = rec.index
        else:
            self._seg_max[segment] = max(self._seg_max.get(segment, 0),
                                         rec.entries[-1].index)

    def _window_start(self, index: int, count: int, size: int) -> int:
        """The first entry to keep after a snapshot at ``index``: at most ``count`` of the
        entries the mirror holds, holding at most ``size`` bytes of data."""
        mirror = self._mirror
        lowest = max(mirror.first_index(), index - count + 1)
        if lowest > index:
            return index + 1
        held = 0
        for entry in reversed(mirror.entries(lowest, index + 1)):
            held += len(entry.data)
            if held > size:
                return entry.index + 1
        return lowest

    def _compact_locked(self, mirror_index: int, disk_index: int) -> None:
        """Drop entries up to ``mirror_index`` from the mirror, and the segments holding
        nothing after ``disk_index`` (at most ``mirror_index``) from the disk."""
        if mirror_index > 0:
            self._mirror.compact(mirror_index)
        if disk_index > 0:
            self._drop_segments(disk_index)

    def _drop_segments(self, index: int) -> None:
        """Delete the oldest segments while each holds no entry after ``index`` that still
        counts.  The newest segment always stays."""
        assert self._wal is not None
        segments = self._wal.segments()
        n = 0
        while n < len(segments) - 1 and self._seg_max.get(segments[n][0], 0) <= index:
            n += 1
        if n == 0:
            return
        doomed = {first for first, _ in segments[:n]}
        restate: list[_Record] = []
        if self._hard_state_seg in doomed:
            restate.append(_HardStateRec(self._mirror.hard_state))
        if self._mark_seg in doomed:
            meta = self._mirror.snapshot().meta
            restate.append(_MarkRec(meta.index, meta.term, False))
        if restate:
            self._append(restate, sync=True)
        for k in range(n):
            # One segment per call: each call fsyncs the directory, so a crash can only
            # leave a prefix of them deleted, never a hole in the middle.
            self._wal.drop_covered(segments[k + 1][0] - 1)
            self._seg_max.pop(segments[k][0], None)

    def _prune_snapshots(self) -> None:
        """Keep the newest snapshot file and one older (a fallback if the newest rots)."""
        doomed = _list_snapshots(self.directory)[_SNAPSHOTS_KEPT:]
        for _, _, path in doomed:
            os.unlink(path)
        if doomed:
            fsync_dir(self.directory)

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> None:
        directory = self.directory
        for name in os.listdir(directory):
            if (name.startswith("snap-") and name.endswith(".tmp")) or name == IDENTITY + ".tmp":
                os.unlink(os.path.join(directory, name))

        # The snapshot first, so that entries it covers beyond the hold window are not held.
        snapshot, damaged = self._newest_snapshot()
        replayed = _ReplayedLog(strip_upto=snapshot.meta.index - self.hold_entries)
        segments = list_segments(directory)
        next_seq = 1
        for k, (first, path) in enumerate(segments):
            with open(path, "rb") as f:
                data = f.read()
            is_last = k == len(segments) - 1
            payloads, end = scan(data, path, allow_torn=is_last)
            if k > 0 and first != next_seq:
                raise StoreCorrupt(
                    f"{path} starts at record {first} but the segment before it ends at "
                    f"record {next_seq - 1}: log records are missing")
            if is_last:
                with open(path, "r+b") as f:
                    if end < len(data):
                        f.truncate(end)
                    os.fsync(f.fileno())
            self._seg_max.setdefault(first, 0)
            # Each payload is let go once decoded (and the segment's bytes at once), so a
            # segment of stripped entries costs one copy of it in memory, not three.
            del data
            count = len(payloads)
            payloads.reverse()
            offset = 0
            while payloads:
                payload = payloads.pop()
                rec = _decode(payload, path, offset)
                try:
                    replayed.apply(rec)
                except ValueError as exc:
                    raise StoreCorrupt(f"{path} is corrupt at offset {offset}: {exc}"
                                       ) from None
                self._track(first, rec)
                offset += HEADER.size + len(payload)
            next_seq = first + count

        try:
            kept = self._fit(replayed, snapshot)
        except StoreCorrupt as exc:
            if damaged:
                raise StoreCorrupt(f"{exc}; the newer snapshot {damaged[0]} is damaged"
                                   ) from None
            raise
        if damaged:
            log.warning("%s: snapshot %s is damaged; fell back to the one at index %d, "
                        "the log covers the rest", directory, damaged[0], snapshot.meta.index)
            for path in damaged:
                os.replace(path, path + ".damaged")
            fsync_dir(directory)

        mirror = MemoryStorage()
        meta = snapshot.meta
        if kept is None:
            if meta.index:
                mirror.apply_snapshot(snapshot)
        else:
            base, base_term, entries = kept
            if base < replayed.strip_upto:
                # The stripped entries stay out: the mirror's base is the last of them.
                cut = replayed.strip_upto - base
                base, base_term, entries = base + cut, entries[cut - 1].term, entries[cut:]
            if base > 0:
                # Seat the log's base (MemoryStorage's sentinel) with a stand-in snapshot,
                # then record the real one over the entries (same term at its index, as
                # _fit checked).
                mirror.apply_snapshot(snapshot if base == meta.index else
                                      Snapshot(SnapshotMeta(base, base_term, ConfState())))
            mirror.append(entries)
            if meta.index > base:
                mirror.create_snapshot(meta.index, meta.conf_state, snapshot.data)
        mirror.set_hard_state(replayed.hard_state or HardState())
        self._mirror = mirror
        self._wal = WalWriter(directory, next_seq, segments, self.segment_bytes)
        if kept is None and replayed.base is not None:
            # The log on disk is one the snapshot replaced (the crash came before the
            # snapshot's INSTALL record).  Write that record now, or entries appended after
            # the snapshot would replay onto the stale log next time.
            log.warning("%s: discarding a log that snapshot %d replaced", directory,
                        meta.index)
            try:
                self._append([_MarkRec(meta.index, meta.term, True)], sync=True)
            except BaseException:
                self._wal.close()
                raise

    def _newest_snapshot(self) -> tuple[Snapshot, list[str]]:
        """The newest valid snapshot (the empty one if none) and the paths of the damaged
        ones newer than it."""
        damaged: list[str] = []
        for index, term, path in _list_snapshots(self.directory):
            try:
                return _read_snapshot_file(path, index, term), damaged
            except _BadSnapshot as exc:
                log.warning("ignoring damaged snapshot: %s", exc)
                damaged.append(path)
        return Snapshot(SnapshotMeta(0, 0, ConfState())), damaged

    def _fit(self, replayed: _ReplayedLog, snapshot: Snapshot
             ) -> tuple[int, int, list[Entry]] | None:
        """How the replayed log continues ``snapshot``: (base index, base term, entries
        after the base) to keep, or None to keep no entries.  StoreCorrupt if the state
        they make up misses entries that were persisted (a hole after the snapshot, a
        snapshot the records require, the persisted commit)."""
        where = self.directory
        index, term = snapshot.meta.index, snapshot.meta.term
        kept: tuple[int, int, list[Entry]] | None = None
        last = index
        if replayed.base is not None:
            base, entries = replayed.base, replayed.entries
            if base > index:
                raise StoreCorrupt(
                    f"{where}: the log starts at index {base + 1} but the snapshot reaches "
                    f"only index {index}: entries {index + 1}..{base} are missing")
            if base == index:
                at_index: int | None = replayed.base_term
            else:
                at_index = entries[index - base - 1].term if index <= replayed.last() else None
            if at_index == term:  # the log continues the snapshot (log matching)
                kept = (base, replayed.base_term, entries)
                last = replayed.last()
            # Otherwise the log lies wholly behind the snapshot or holds another history at
            # its index: it is the log the snapshot replaced, and nothing of it is kept.
        if replayed.required > last:
            raise StoreCorrupt(
                f"{where}: the log records a snapshot at index {replayed.required}, but the "
                f"newest valid snapshot is at index {index} and the log reaches only {last}")
        hard_state = replayed.hard_state
        if hard_state is not None and hard_state.commit > last:
            raise StoreCorrupt(
                f"{where}: the persisted commit index {hard_state.commit} is beyond the "
                f"persisted state, which ends at index {last}")
        return kept
