"""The Raft store's replicated state machine: committed log entries applied to a KVState.

Every member applies the same committed entries in the same order, so every member holds
the same :class:`~kvfs.kv.state.KVState`, the same watch history and the same client
sessions.  Nothing here reads a clock; the only I/O is through the member's optional
:class:`~kvfs.raftkv.values.MemberValues` (see "Large values").

Log entry payloads (msgpack)::

    [client_id: int, seq: int, command]

``command`` is a :mod:`kvfs.kv.state` command tuple with values inline (a log entry carries
the value itself, never a member-local file reference), plus ``("noop",)`` and
``("member_addresses", id, peer_url, client_url)`` (a member served for the first time
records its addresses in the member table; see :mod:`kvfs.raftkv.members`).  ``client_id``
0 marks commands without a session (the leader's lease expiries).

At-most-once: a client numbers its commands 1, 2, 3, ... and retries a command after a
broken connection with the same ``seq``.  The session table remembers each client's last
applied ``seq`` and its result; a retry of that ``seq`` returns the remembered result and
changes nothing, an older ``seq`` is answered with :data:`STALE`.  The table is bounded:
the least recently used session is evicted once ``max_sessions`` is exceeded -- in apply
order, so every member evicts the same one.

Membership changes are applied here too (:meth:`ReplicatedKV.apply_conf_change`): they
update the member table (:mod:`kvfs.raftkv.members`), which is part of every snapshot, and
are answered through the same session table as commands, under the ``(client_id, seq)``
of their context.  The host learns of table changes through ``member_listeners``.

Invariants:
  * ``applied_index`` is the index of the last entry applied (or the snapshot's index).
  * ``members`` always equals the core's configuration after the same entries (see
    :mod:`kvfs.raftkv.members`).
  * The watch history is part of the replicated state (and of snapshots): a watch from any
    revision at or above ``state.history_start`` succeeds on every member, below it
    raises ``Compacted`` on every member.  (The one exception: the embedded store's lone
    member leaves the history out of its own snapshots, ``snapshot(history=False)``,
    since only its own restarts read them and no watch outlives its process; served
    later, its history starts where its last restart left it.)

Large values
------------
A member given a :class:`~kvfs.raftkv.values.MemberValues` keeps every value over its
threshold in a file of its own: applying a put writes the file and the state holds a
:class:`~kvfs.kv.valuefiles.ValueRef`; readers get the bytes through :meth:`ReplicatedKV.value`
(the watch hub through :meth:`ReplicatedKV.load_value`).  The replicated state is the same
on every member -- only where each keeps the bytes differs.  Its snapshots refer to its
files; :meth:`ReplicatedKV.materialize` inlines them for another member, and
:meth:`ReplicatedKV.restore` of inline values puts the large ones in files again.

Space quota (etcd's ``--quota-backend-bytes``)
----------------------------------------------
``size_bytes`` is the state's size: the keys and values held, ``len(key) + len(value)``
summed over every key.  It is a running total kept by :meth:`ReplicatedKV.apply` (each
transaction's growth is worked out from the state before it is applied) and recomputed
from the items on :meth:`ReplicatedKV.restore`, so it is the same on every member at every
index.

The quota travels in the log entry itself: ``encode_command`` appends the proposing
member's ``--quota-bytes`` as a fourth payload element (absent or 0: no quota).  A
transaction whose growth is positive and would take ``size_bytes`` beyond the quota *of its
entry* is refused -- nothing changes, it answers :class:`~kvfs.kv.api.NoSpace` -- whether
or not its compares hold (as etcd refuses writes under its NOSPACE alarm).  The decision
is a function of the replicated state and the entry alone, so every member makes the same
one; a member's own flag never decides anything about another member's entries.  Members
are meant to share one quota; when they do not, the quota of the member a client talks to
applies to that client's writes, and raising it is a rolling restart with the new flag.
A transaction that frees space or keeps the size (a delete, a smaller overwrite) is never
refused, so a full store can always be cleaned up.  Lease grants, revocations and
compactions add no keys and are never refused.

A refusal is recorded in the client's session like any result, so a retry of the same
``seq`` is refused again rather than applied later when space has been freed (the client
was already told its write did not happen).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from kvfs.kv.api import Compacted, KeyValue, RangeResult
from kvfs.kv.state import ApplyResult, Command, Entry, Event, KVState
from kvfs.kv.valuefiles import ValueRef, pack, unpack
from kvfs.raft import ConfChange, ConfChangeKind, NodeId
from kvfs.raftkv.members import ChangeContext, MembersChanged, MemberTable
from kvfs.raftkv.values import MemberValues

# 3: values may be refs to member-local files (msgpack ext, kvfs.kv.valuefiles); 2: the
# member table is part of the snapshot.  1 and 2 are still read.
SNAPSHOT_FORMAT = 3
_READABLE_FORMATS = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one applied entry, as its proposer sees it."""

    client_id: int
    seq: int
    command: Command
    result: ApplyResult | None  # None: a stale retry (an older seq than the session's)
    events: list[Event]
    fresh: bool  # False: a retry answered from the session table; nothing changed
    # Set when the space quota refused the command (nothing changed): the NoSpace message.
    refusal: str | None = None


STALE = None


def encode_command(client_id: int, seq: int, command: Command, quota_bytes: int = 0) -> bytes:
    """A log entry's payload; ``quota_bytes`` (0: none) is the space quota it is applied
    under (see "Space quota" above)."""
    payload: list[Any] = [client_id, seq, list(command)]
    if quota_bytes:
        payload.append(quota_bytes)
    return msgpack.packb(payload, use_bin_type=True)


def _decode(data: bytes) -> tuple[int, int, Command, int]:
    client_id, seq, command, *quota = msgpack.unpackb(data, raw=False)
    return client_id, seq, _command_tuple(command), int(quota[0]) if quota else 0


def _size(key: bytes, value: bytes | ValueRef) -> int:
    """What one key counts against the space quota."""
    return len(key) + (value.size if isinstance(value, ValueRef) else len(value))


def _command_tuple(command: list[Any]) -> Command:
    kind = command[0]
    if kind == "txn":
        compares = [(bytes(k), int(r)) for k, r in command[1]]
        puts = [(bytes(k), bytes(v), int(lease)) for k, v, lease in command[2]]
        deletes = [(bytes(k), None if e is None else bytes(e)) for k, e in command[3]]
        return ("txn", compares, puts, deletes)
    return tuple(command)


class ReplicatedKV:
    def __init__(self, *, max_sessions: int = 10_000, history_limit: int = 200_000,
                 values: MemberValues | None = None) -> None:
        self.state = KVState(history_limit=history_limit)
        # Where this member keeps large values (None: all in memory); see "Large values".
        self.values = values
        self.applied_index = 0
        self.max_sessions = max_sessions
        # client id -> (last applied seq, its result, the quota's refusal of it or None);
        # most recently used last.
        self.sessions: OrderedDict[int, tuple[int, ApplyResult, str | None]] = OrderedDict()
        self.size_bytes = 0  # keys and values held (see "Space quota")
        self.members = MemberTable()
        # Called after every change of ``members`` (not part of the replicated state).
        self.member_listeners: list[Callable[[MembersChanged], None]] = []

    def apply(self, index: int, data: bytes) -> Applied | None:
        """Apply the committed entry at ``index`` (``data`` empty: a leader's no-op entry).
        Returns None for entries that carry no command."""
        if index <= self.applied_index:
            raise AssertionError(f"entry {index} applied twice (applied: {self.applied_index})")
        self.applied_index = index
        if not data:
            return None
        client_id, seq, command, quota = _decode(data)
        if command[0] == "noop":
            return None

        if client_id:
            session = self.sessions.get(client_id)
            if session is not None and seq <= session[0]:
                self.sessions.move_to_end(client_id)
                if seq < session[0]:
                    return Applied(client_id, seq, command, STALE, [], fresh=False)
                return Applied(client_id, seq, command, session[1], [], fresh=False,
                               refusal=session[2])
        if self.values is not None and command[0] == "txn":
            command = self._spill_puts(index, command)
        growth = self._growth(command)
        refusal = None
        if command[0] == "member_addresses":
            # ("member_addresses", id, peer_url, client_url): a member's own addresses,
            # recorded where the table has none (see MemberTable.fill_addresses).
            _, node, peer_url, client_url = command
            if self.members.fill_addresses(NodeId(int(node)), str(peer_url), str(client_url)):
                self._members_changed(MembersChanged(self.members))
            result = ApplyResult(True, self.state.revision)
            events: list[Event] = []
        elif quota and growth > 0 and self.size_bytes + growth > quota:
            refusal = (f"raft store space quota exceeded: {self.size_bytes} of {quota} bytes "
                       f"held, the commit adds {growth}; delete data to free space")
            result = ApplyResult(False, self.state.revision)
            events = []
        else:
            before = self.state.revision
            result = self.state.apply(command)
            events = self._events_of(result) if self.state.revision != before else []
            if result.succeeded:
                self.size_bytes += growth
        if client_id:
            self.sessions[client_id] = (seq, ApplyResult(result.succeeded, result.revision,
                                                         result.lease_id), refusal)
            self.sessions.move_to_end(client_id)
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        return Applied(client_id, seq, command, result, events, fresh=True, refusal=refusal)

    def _spill_puts(self, index: int, command: Command) -> Command:
        """The txn ``command`` with its large values put in files of this member."""
        assert self.values is not None
        threshold = self.values.threshold
        puts = [(key, self.values.spill(f"{index:016x}-{slot}", value)
                 if len(value) > threshold else value, lease)
                for slot, (key, value, lease) in enumerate(command[2])]
        return (command[0], command[1], puts, command[3])

    # -- reads: what every reader of a member's state uses (the in-process engine, the
    # client server).  Each is synchronous: one revision of the state, and a large value's
    # file read with no checkpoint in between, so a ref in the current state always has
    # its file (files are freed only for refs no kept snapshot or state holds).

    def read(self, key: bytes) -> KeyValue | None:
        entry = self.state.get(key)
        return None if entry is None else self._key_value(key, entry)

    def read_range(self, start: bytes, end: bytes, *, limit: int = 0,
                   keys_only: bool = False) -> RangeResult:
        kvs: list[KeyValue] = []
        more = False
        for key, entry in self.state.scan(start, end):
            if limit and len(kvs) >= limit:
                more = True
                break
            kvs.append(self._key_value(key, entry, keys_only))
        return RangeResult(kvs, more, self.state.revision)

    def _key_value(self, key: bytes, entry: Entry, keys_only: bool = False) -> KeyValue:
        return KeyValue(key, b"" if keys_only else self.value(entry.value),
                        entry.mod_revision, entry.create_revision, entry.lease)

    def value(self, stored: bytes | ValueRef) -> bytes:
        """The bytes of a value as the state holds it (read from its file for a ref)."""
        if isinstance(stored, ValueRef):
            assert self.values is not None, "a value ref in a member without value files"
            return self.values.load(stored)
        return stored

    async def load_value(self, stored: object) -> bytes:
        """:meth:`value` for the watch hub.  A ref whose file was freed belongs to history
        compacted meanwhile: the watch must start again (``Compacted``)."""
        assert isinstance(stored, (bytes, ValueRef))
        try:
            return self.value(stored)
        except FileNotFoundError:
            start = self.state.history_start
            raise Compacted(start, start) from None

    def _growth(self, command: Command) -> int:
        """How many bytes ``command`` adds to ``size_bytes`` if it succeeds (negative: it
        frees space), worked out from the state before it is applied."""
        data = self.state.data
        if command[0] == "lease_revoke":
            lease = self.state.leases.get(int(command[1]))
            return -sum(_size(k, data[k].value) for k in lease.keys) if lease else 0
        if command[0] != "txn":
            return 0
        _, _, puts, deletes = command
        freed: dict[bytes, int] = {}  # deletes run first, then puts (KVState._txn)
        for key, end in deletes:
            if end is None:
                entry = data.get(key)
                if entry is not None:
                    freed[key] = _size(key, entry.value)
            else:
                for k, entry in self.state.scan(key, end):
                    freed[k] = _size(k, entry.value)
        written = {key: _size(key, value) for key, value, _ in puts}  # the last put wins
        growth = sum(written.values()) - sum(freed.values())
        for key in written.keys() - freed.keys():
            entry = data.get(key)
            if entry is not None:
                growth -= _size(key, entry.value)  # overwritten
        return growth

    def apply_conf_change(self, index: int, data: bytes) -> Applied:
        """Apply the committed membership change at ``index`` to the member table.

        The table changes whether or not the change's ``(client_id, seq)`` was applied
        before -- the core applies every committed change, and the table must stay its
        mirror -- but a retry is answered with the first result.  The result succeeds
        when the change changed the configuration."""
        if index <= self.applied_index:
            raise AssertionError(f"entry {index} applied twice (applied: {self.applied_index})")
        self.applied_index = index
        change = ConfChange.decode(data)
        context = ChangeContext.decode(change.context)
        changed = self.members.apply(change, context)
        if changed:
            removed = change.node if change.kind is ConfChangeKind.REMOVE else None
            self._members_changed(MembersChanged(self.members, removed=removed))
        command: Command = ("conf_change", int(change.kind), int(change.node))
        client_id, seq = context.client_id, context.seq
        result = ApplyResult(changed, self.state.revision)
        if not (client_id and seq):
            return Applied(0, 0, command, result, [], fresh=True)
        session = self.sessions.get(client_id)
        if session is not None and seq <= session[0]:
            self.sessions.move_to_end(client_id)
            return Applied(client_id, seq, command,
                           session[1] if seq == session[0] else STALE, [], fresh=False)
        self.sessions[client_id] = (seq, result, None)
        self.sessions.move_to_end(client_id)
        while len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)
        return Applied(client_id, seq, command, result, [], fresh=True)

    def _members_changed(self, change: MembersChanged) -> None:
        for listener in list(self.member_listeners):
            listener(change)

    def _events_of(self, result: ApplyResult) -> list[Event]:
        out: list[Event] = []
        for event in reversed(self.state.history):
            if event.mod_revision != result.revision:
                break
            out.append(event)
        out.reverse()
        return out

    # -- snapshots (dissertation 5.1) --------------------------------------------------------

    def snapshot(self, *, history: bool = True) -> bytes:
        """The whole replicated state at ``applied_index``; large values appear as refs to
        this member's files (see :meth:`materialize` for a snapshot another member can
        install).  Without ``history`` the watch history is left out: restored, it starts
        empty at the snapshot's next revision (a watch from before gets Compacted) -- for
        a member whose snapshots only its own restarts read, where no watch outlives the
        process (the embedded store)."""
        state = self.state
        return pack({
            "format": SNAPSHOT_FORMAT,
            "applied": self.applied_index,
            "revision": state.revision,
            "compacted": state.compacted,
            "next_lease": state.next_lease,
            "leases": [[lid, lease.ttl] for lid, lease in state.leases.items()],
            "items": [[k, e.value, e.mod_revision, e.create_revision, e.lease]
                      for k, e in state.snapshot_items()],
            "history_start": state.history_start if history else state.revision + 1,
            "history": [[e.key, e.value, e.mod_revision] for e in state.history] if history
                       else [],
            "sessions": [[cid, seq, r.succeeded, r.revision, r.lease_id, refusal]
                         for cid, (seq, r, refusal) in self.sessions.items()],
            "members": self.members.to_wire(),
        })

    def value_files(self) -> set[str]:
        """The names of the value files the state refers to now -- those a snapshot taken
        at the same moment refers to."""
        return ({e.value.name for _, e in self.state.snapshot_items()
                 if isinstance(e.value, ValueRef)}
                | {ev.value.name for ev in self.state.history
                   if isinstance(ev.value, ValueRef)})

    def materialize(self, data: bytes) -> bytes:
        """A snapshot of this member with every ref replaced by its value, for a member
        that does not have this one's files.  Holds the whole state in memory."""
        if self.values is None:
            return data
        snap = unpack(data)
        snap["items"] = [[k, self.value(v), *rest] for k, v, *rest in snap["items"]]
        snap["history"] = [[k, None if v is None else self.value(v), rev]
                           for k, v, rev in snap["history"]]
        return pack(snap)

    def restore(self, index: int, data: bytes) -> None:
        """Replace everything with a snapshot taken at ``index``; the member listeners are
        told the table was replaced.  Large inline values (a snapshot from another member)
        go to this member's files; refs must name files this member has."""
        snap = unpack(data)
        if snap.get("format") not in _READABLE_FORMATS:
            raise ValueError(f"unknown state machine snapshot format {snap.get('format')!r}")
        if snap["applied"] != index:
            raise ValueError(f"snapshot data is at index {snap['applied']}, not {index}")
        spilled = iter(range(1 << 62))

        def held(value: Any) -> Any:
            if (self.values is not None and isinstance(value, bytes)
                    and len(value) > self.values.threshold):
                return self.values.spill(f"{index:016x}-s{next(spilled)}", value)
            return value

        self.state.restore(
            snap["revision"], snap["compacted"], snap["next_lease"],
            {int(lid): float(ttl) for lid, ttl in snap["leases"]},
            ((bytes(k), Entry(held(v), mod, create, lease))
             for k, v, mod, create, lease in snap["items"]),
            history=[Event(bytes(k), None if v is None else held(v), rev)
                     for k, v, rev in snap["history"]],
            history_start=snap["history_start"])
        self.sessions = OrderedDict(
            (cid, (seq, ApplyResult(ok, rev, lease), refusal[0] if refusal else None))
            for cid, seq, ok, rev, lease, *refusal in snap["sessions"])
        self.size_bytes = sum(_size(k, e.value) for k, e in self.state.snapshot_items())
        self.members = MemberTable.from_wire(snap.get("members", []))
        self.applied_index = index
        self._members_changed(MembersChanged(self.members, replaced=True))
