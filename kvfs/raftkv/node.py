"""One Raft store member at run time: the trio loop that drives the pure core.

The loop owns the :class:`~kvfs.raft.RawNode`.  Everything that wants to reach the core --
a peer's message, a tick, a client's proposal or read -- is queued as a small closure and
run by the loop, so nothing touches the core while a Ready is being handled (the core's
contract).  Each turn of the loop runs every queued input, then handles one Ready:

  1. persist its snapshot, entries and hard state with one sync (``Disk.save``, in a worker
     thread, or on the loop when ``inline_sync`` allows): group commit -- every proposal
     queued since the last turn shares the sync;
  2. send its messages (only now: votes and acknowledgements depend on step 1);
  3. apply its snapshot and committed entries to the replicated state machine, notify
     watches, answer the proposers waiting for them, record read states;
  4. ``advance``; then take a snapshot of the state machine if enough was applied (built
     and saved in a worker thread; the loop's other tasks run meanwhile).

Clients see two primitives, both safe to retry after any failure:
  * :meth:`submit` proposes a command under (client id, seq) and waits until it is applied
    here, re-proposing it if it was dropped or lost.  The state machine applies a given
    (client id, seq) at most once and answers retries with the first result.
  * :meth:`read_barrier` obtains a ReadIndex from the leader and waits until this member
    has applied it; a read of the local state after it is linearizable (dissertation 6.4).

Invariant: a command's result is returned only once its entry is durable on a majority,
committed and applied here; reads never see a state that was not committed.  A failed disk
write stops the member: every waiting and later call fails (the core's memory is ahead of
its disk, so nothing more may be acknowledged).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from kvfs.kv.api import Compacted, EngineUnavailable, KVError, NoSpace
from kvfs.kv.state import ApplyResult, Command
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import (
    ConfChange,
    ConfChangeRefused,
    Config,
    Entry,
    EntryKind,
    HardState,
    Message,
    NodeId,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    Storage,
)
from kvfs.raftkv.lessor import Lessor
from kvfs.raftkv.metrics import RaftObserver
from kvfs.raftkv.statemachine import Applied, ReplicatedKV, encode_command

log = logging.getLogger(__name__)

# What a log entry held in memory costs beside its data (the Entry and bytes objects), as
# the size-relative snapshot trigger counts it.
ENTRY_WEIGHT = 128
# Syncs quicker than this on average may run on the loop (RaftNode inline_sync).
_INLINE_SYNC_SECONDS = 0.002


async def _wait_any(*events: trio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()
        for event in events:
            nursery.start_soon(wait, event)


class Disk(Protocol):
    """A member's durable Raft state (see :mod:`kvfs.raftkv.disk`)."""

    @property
    def storage(self) -> Storage: ...

    def save(self, hard_state: HardState | None, entries: list[Entry],
             snapshot: Snapshot | None, must_sync: bool) -> None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...


class Transport(Protocol):
    def send(self, messages: list[Message]) -> None: ...


class MemberStopped(KVError):
    """This member stopped after a disk write failed; it acknowledges nothing more."""


@dataclass(slots=True)
class _Proposal:
    done: trio.Event = field(default_factory=trio.Event)
    result: ApplyResult | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Read:
    answered: trio.Event = field(default_factory=trio.Event)
    index: int = 0


class RaftNode:
    def __init__(self, config: Config, disk: Disk, kv: ReplicatedKV, hub: WatchHub, *,
                 rng: random.Random, transport: Transport | None = None,
                 tick_seconds: float = 0.1, snapshot_every: int = 10_000,
                 snapshot_bytes: int = 64 << 20, snapshot_scale: float = 0.0,
                 snapshot_history: bool = True, dormant: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: RaftObserver | None = None, quota_bytes: int = 0,
                 write_held_commit: Callable[[], None] | None = None,
                 inline_sync: bool = False) -> None:
        self.id = config.id
        self.metrics = metrics or RaftObserver()
        # The space quota this member's proposals carry (0: none; see statemachine).
        self.quota_bytes = quota_bytes
        self.config = config
        self.disk = disk
        self.kv = kv
        self.hub = hub
        self.transport = transport
        self.tick_seconds = tick_seconds
        self.snapshot_every = snapshot_every
        # A snapshot is also taken once this many bytes of entries were applied since the
        # last one: the log entries (held in memory until compacted) carry the values.
        self.snapshot_bytes = snapshot_bytes
        # With a scale, the entry count alone is not enough: the log since the last
        # snapshot must also weigh (ENTRY_WEIGHT per entry plus its data) ``snapshot_scale``
        # times that snapshot, or ``snapshot_bytes`` -- so snapshots of a large state come
        # as much rarer as they are larger, and writing to a full store costs no more
        # per entry than to an empty one.
        self.snapshot_scale = snapshot_scale
        # Whether snapshots carry the watch history (ReplicatedKV.snapshot).
        self.snapshot_history = snapshot_history
        self._applied_bytes = 0
        # The term of the last entry applied, and whether this member leads as the only
        # voter with an entry of its own term applied (see read_barrier).
        self._applied_term = 0
        self._lone_leader = False
        # Dormant (the embedded store): a lone voter that neither ticks nor campaigns until
        # a request needs a leader, so that opening a store only to read it writes nothing
        # -- a campaign would persist a new term and append an entry.
        self._dormant = dormant
        # A disk that holds back commit-only saves (RaftDisk hold_commit) is told once a
        # tick to write what it holds, so a killed process loses at most a tick of them.
        self._write_held_commit = write_held_commit
        # Whether a sync may run on the loop when nothing else waits (_may_sync_inline),
        # and a moving average of recent syncs' time.
        self.inline_sync = inline_sync
        self._sync_seconds = 0.0
        # The value files the newest snapshot refers to (None: not known since start).
        self._snapshot_files: set[str] | None = None
        self.lessor = Lessor(clock)
        self.rawnode = RawNode(config, disk.storage, rng)
        # Rebuild the state machine from the persisted snapshot; the core hands out the
        # committed entries after it again.
        snapshot = disk.storage.snapshot()
        if snapshot.meta.index:
            kv.restore(snapshot.meta.index, snapshot.data)
        self.leader = NodeId(0)
        self.role = Role.FOLLOWER
        # Since when (trio time) this member has known no leader; None while it knows one
        # (or before its loop runs).
        self._leaderless_since: float | None = None
        hs, _ = disk.storage.initial_state()
        # The term and vote on disk: a Ready that changes neither may send first.
        self._persisted_vote = (hs.term, hs.vote)
        self._inbox: deque[Callable[[], None]] = deque()
        self._wake = trio.Event()
        self._proposals: dict[tuple[int, int], _Proposal] = {}
        self._reads: dict[bytes, _Read] = {}
        self._read_ids = itertools.count(1)
        self._applied_waiters: list[tuple[int, trio.Event]] = []
        self._leader_changed = trio.Event()
        self._revoking: dict[int, float] = {}
        self._failure: BaseException | None = None

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if not self.leader:
            self._leaderless_since = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick_loop)
            nursery.start_soon(self._lease_loop)
            task_status.started()
            try:
                await self._loop()
            except BaseException as exc:
                self._stop(exc)
                raise
            finally:
                nursery.cancel_scope.cancel()

    def _push(self, action: Callable[[], None]) -> None:
        self._check_running()
        self._inbox.append(action)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            if not self._inbox and not self.rawnode.has_ready():
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            while self._inbox:
                self._inbox.popleft()()
            if self.rawnode.has_ready():
                await self._handle_ready(self.rawnode.ready())

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(self.tick_seconds)
            if self._write_held_commit is not None:
                # Through the inbox: run between Readies, never beside a save.
                self._push(self._write_held_commit)
            if not self._dormant:
                self._push(self.rawnode.tick)

    def _wake_up(self) -> None:
        """A request needs a leader: a dormant lone voter starts ticking and campaigns."""
        if not self._dormant:
            return
        self._dormant = False
        if self.sole_voter():
            self._push(self.rawnode.campaign)

    async def _handle_ready(self, rd: Ready) -> None:
        send_first = self._leader_may_send_first(rd)
        if send_first and rd.messages and self.transport is not None:
            self.transport.send(self._outgoing(rd.messages))
        if rd.snapshot is None and rd.must_sync and self._may_sync_inline():
            started = time.perf_counter()
            self.disk.save(rd.hard_state, rd.entries, None, True)
            took = time.perf_counter() - started
            self._sync_seconds += (took - self._sync_seconds) / 8
        elif rd.snapshot is not None or rd.must_sync:
            started = time.perf_counter()
            await trio.to_thread.run_sync(self.disk.save, rd.hard_state, rd.entries,
                                          rd.snapshot, rd.must_sync)
            if rd.snapshot is None and self.inline_sync:
                # The hand-off counts too: one slow sync does not pin the thread.
                took = time.perf_counter() - started
                self._sync_seconds += (took - self._sync_seconds) / 8
        elif rd.hard_state is not None or rd.entries:
            # Nothing to sync (a new commit index, say): one small buffered write, cheaper
            # than a worker thread's round trip.
            self.disk.save(rd.hard_state, rd.entries, None, False)
        if rd.hard_state is not None:
            self._persisted_vote = (rd.hard_state.term, rd.hard_state.vote)
        if not send_first and rd.messages and self.transport is not None:
            self.transport.send(self._outgoing(rd.messages))
        if rd.soft_state is not None:
            self._leadership(rd.soft_state.leader, rd.soft_state.role)
        if rd.snapshot is not None:
            self._install(rd.snapshot)
        for entry in rd.committed_entries:
            self._apply(entry)
        for read in rd.read_states:
            waiter = self._reads.get(read.context)
            if waiter is not None:
                waiter.index = read.index
                waiter.answered.set()
        self.rawnode.advance(rd)
        raft = self.rawnode.raft
        self._lone_leader = (raft.role is Role.LEADER and self._applied_term == raft.term
                             and raft.tracker.conf.voters == {self.id})
        if (not self._dormant and self.role is Role.FOLLOWER and self.leader == 0
                and self.sole_voter()):
            # A one-member cluster need not wait an election timeout to lead.
            self.rawnode.campaign()
        self._wake_applied()
        await self._maybe_snapshot()

    def _may_sync_inline(self) -> bool:
        """Whether this Ready's sync may block the loop rather than go to a worker thread:
        only with ``inline_sync``, when no other task is waiting to run (so nothing is kept
        from running meanwhile but what arrives during the sync -- and requests that arrive
        then still share the next sync), and while syncs have been quick.  A worker
        thread's round trip costs two thread wake-ups, as much as a fast disk's sync."""
        return (self.inline_sync and self._sync_seconds < _INLINE_SYNC_SECONDS
                and trio.lowlevel.current_statistics().tasks_runnable == 0)

    def _outgoing(self, messages: list[Message]) -> list[Message]:
        """``messages`` as another member can use them: a snapshot refers to this member's
        value files, so the values are put in it."""
        if self.kv.values is None or not any(m.snapshot is not None for m in messages):
            return messages
        return [m if m.snapshot is None else dataclasses.replace(
                    m, snapshot=Snapshot(m.snapshot.meta, self.kv.materialize(m.snapshot.data)))
                for m in messages]

    def _leader_may_send_first(self, rd: Ready) -> bool:
        """Whether this Ready's messages may leave before its entries are persisted.

        A leader's appends and heartbeats depend only on its term, persisted when it was
        elected; its own copy of the new entries counts towards a commit only once
        persisted (the core waits for ``advance``), so writing them in parallel with the
        followers' writes is safe and takes one disk sync off every commit's path
        (dissertation 10.2.1).  Anything else -- a new term or vote, a follower's
        acknowledgement of entries -- is sent only after the sync.
        """
        if self.role is not Role.LEADER or rd.soft_state is not None or rd.snapshot:
            return False
        hs = rd.hard_state
        return hs is None or (hs.term, hs.vote) == self._persisted_vote

    def _leadership(self, leader: NodeId, role: Role) -> None:
        was_leader = self.role is Role.LEADER
        if leader and leader != self.leader:
            self.metrics.leader_changed()
        self.leader, self.role = leader, role
        if not leader:
            if self._leaderless_since is None:
                self._leaderless_since = trio.current_time()
        else:
            self._leaderless_since = None
        if role is Role.LEADER and not was_leader:
            self.lessor.promote({lid: lease.ttl for lid, lease in self.kv.state.leases.items()})
        elif was_leader and role is not Role.LEADER:
            self.lessor.demote()
        self._leader_changed.set()
        self._leader_changed = trio.Event()

    def _install(self, snapshot: Snapshot) -> None:
        log.info("raft member %x: installing the leader's snapshot at index %d (term %d)",
                 self.id, snapshot.meta.index, snapshot.meta.term)
        self._snapshot_files = set()  # it refers to no file of this member
        before = self.kv.state.revision
        self.kv.restore(snapshot.meta.index, snapshot.data)
        try:
            events = self.kv.state.events_since(before + 1, b"", b"\x00")
        except Compacted as exc:
            # The snapshot skipped revisions this member's watchers never saw and its
            # history no longer holds: they must start over (and learn of the gap).
            self.hub.abort_all(exc)
        else:
            self.hub.notify(events)

    def _apply(self, entry: Entry) -> None:
        self._applied_term = entry.term
        applied: Applied | None
        if entry.kind is EntryKind.CONF_CHANGE:
            # The core switches configuration at advance(); the member table here.
            applied = self.kv.apply_conf_change(entry.index, entry.data)
        else:
            self._applied_bytes += len(entry.data)
            applied = self.kv.apply(entry.index, entry.data)
        if applied is None:
            return
        self.hub.notify(applied.events)
        command = applied.command
        if applied.fresh and applied.result is not None:
            if command[0] == "lease_grant":
                self.lessor.granted(applied.result.lease_id, float(command[1]))
            elif command[0] == "lease_revoke":
                self.lessor.revoked(int(command[1]))
                self._revoking.pop(int(command[1]), None)
        waiter = self._proposals.get((applied.client_id, applied.seq))
        if waiter is not None:
            if applied.result is None:
                waiter.error = KVError(f"command {applied.seq} of client {applied.client_id} "
                                       "was superseded by a later one")
            elif applied.refusal is not None:
                waiter.error = NoSpace(applied.refusal)
            else:
                waiter.result = applied.result
            waiter.done.set()

    def _wake_applied(self) -> None:
        applied = self.kv.applied_index
        still = []
        for index, event in self._applied_waiters:
            if index <= applied:
                event.set()
            else:
                still.append((index, event))
        self._applied_waiters = still

    async def _maybe_snapshot(self) -> None:
        if self._applied_bytes >= self.snapshot_bytes:
            await self._take_snapshot()
            return
        held = self.disk.storage.snapshot()
        since = self.kv.applied_index - held.meta.index
        if since < self.snapshot_every:
            return
        if self.snapshot_scale:
            weight = self._applied_bytes + ENTRY_WEIGHT * since
            if weight < min(self.snapshot_bytes, self.snapshot_scale * len(held.data)):
                return
        await self._take_snapshot()

    async def snapshot_at_close(self, min_bytes: int = 1 << 20) -> None:
        """After the loop stopped (a clean close): take a snapshot when the entries
        applied since the last one -- what the next open must read back into memory and
        apply again -- come to at least ``min_bytes`` and to more than the last
        snapshot's data, so the next open reads less than it would have."""
        if self._failure is not None and not isinstance(self._failure, trio.Cancelled):
            return  # the loop failed: its state may be half-way through a Ready
        held = len(self.disk.storage.snapshot().data)
        if self._applied_bytes < max(min_bytes, held + 1):
            return
        await self._take_snapshot()

    async def _take_snapshot(self) -> None:
        """Snapshot the state machine at its applied index, then free what it replaces.

        The snapshot is built (packed) in the worker thread that saves it, not on the
        event loop, whose other tasks -- reads, watches, requests queued for the next
        commit -- keep running meanwhile: the state machine changes only when the loop
        task applies a Ready, and that task is awaiting this (or has stopped), so the
        thread packs one consistent state while other tasks at most read it."""
        storage = self.disk.storage
        index = self.kv.applied_index
        self._applied_bytes = 0
        meta = SnapshotMeta(index, storage.term(index), self.rawnode.status().conf_state)
        kv, history, values = self.kv, self.snapshot_history, self.kv.values

        def save() -> None:
            snapshot = Snapshot(meta, kv.snapshot(history=history))
            if values is None:
                self.disk.save_snapshot(snapshot)
                return
            # The files the snapshot refers to are durable before it replaces the log
            # entries that carry their values; then the files neither it nor the previous
            # snapshot (a restart's fallback) refers to are freed.
            files = kv.value_files()
            values.sync()
            self.disk.save_snapshot(snapshot)
            if self._snapshot_files is not None:
                values.collect(index, files | self._snapshot_files)
            self._snapshot_files = files

        await trio.to_thread.run_sync(save)

    # -- failure -----------------------------------------------------------------------------

    def _stop(self, exc: BaseException) -> None:
        if self._failure is not None:
            return
        self._failure = exc
        error = MemberStopped(f"raft member {self.id} stopped: {exc!r}")
        for waiter in self._proposals.values():
            waiter.error = error
            waiter.done.set()
        for read in self._reads.values():
            read.answered.set()
        for _, event in self._applied_waiters:
            event.set()
        self.hub.abort_all(error)

    def _check_running(self) -> None:
        if self._failure is not None:
            raise MemberStopped(f"raft member {self.id} stopped: {self._failure!r}")

    # -- inputs from the transport -----------------------------------------------------------

    def deliver(self, message: Message) -> None:
        self._push(functools.partial(self.rawnode.step, message))

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport could not reach ``peer``: a leader stops pipelining to it."""
        self._push(functools.partial(self.rawnode.report_unreachable, peer))

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        """The transport wrote a snapshot message to ``peer`` (or failed to)."""
        self._push(functools.partial(self.rawnode.report_snapshot, peer, ok))

    def transfer_leadership(self, target: NodeId) -> None:
        """Ask the leader (through this member) to hand leadership to ``target`` (3.10);
        best effort: whether it happened shows in :attr:`leader`."""
        self._push(functools.partial(self.rawnode.transfer_leadership, target))

    def sole_voter(self) -> bool:
        """Whether this member is the only voter of the configuration it has applied."""
        return self.rawnode.status().conf_state.voters == {self.id}

    # -- client primitives -------------------------------------------------------------------

    def leaderless_for(self) -> float:
        """How long this member has known no leader (0 while it knows one)."""
        if self.leader or self._leaderless_since is None:
            return 0.0
        return trio.current_time() - self._leaderless_since

    def retry_interval(self) -> float:
        """How long a proposal or read waits before it is tried again: an election timeout."""
        return self.config.election_tick * self.tick_seconds

    async def submit(self, client_id: int, seq: int, command: Command, *,
                     deadline: float) -> ApplyResult:
        """Propose ``command`` as (``client_id``, ``seq``) and return its result once it is
        applied here.  Raises EngineUnavailable at ``deadline`` (trio time), NoSpace when
        the space quota refused it."""
        data = encode_command(client_id, seq, command, self.quota_bytes)
        self.metrics.proposal_started()
        started = trio.current_time()
        error: BaseException | None = None
        try:
            return await self._submit((client_id, seq), functools.partial(self._propose, data),
                                      deadline)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.metrics.proposal_ended(trio.current_time() - started, error)

    async def submit_conf_change(self, change: ConfChange, *, client_id: int, seq: int,
                                 deadline: float) -> ApplyResult:
        """Propose the membership ``change``, whose context carries (``client_id``,
        ``seq``), and return its result once it is applied here (succeeded: the
        configuration changed).  A change the leader -- this member -- refuses (another
        one pending, invalid for the configuration) raises KVError with its reason; on a
        follower it is forwarded, and a refusal there looks like a lost proposal."""
        waiter = self._proposals.setdefault((client_id, seq), _Proposal())

        def propose(dropped: trio.Event) -> None:
            try:
                self.rawnode.propose_conf_change(change)
            except ConfChangeRefused as exc:
                waiter.error = KVError(f"the leader refused the membership change: {exc}")
                waiter.done.set()
            except ProposalDropped:
                dropped.set()

        return await self._submit((client_id, seq), propose, deadline)

    async def _submit(self, key: tuple[int, int], propose: Callable[[trio.Event], None],
                      deadline: float) -> ApplyResult:
        """Run ``propose`` in the loop (it sets the event it is given when the proposal was
        dropped) until the entry of ``key`` is applied here; re-propose after each retry
        interval."""
        waiter = self._proposals.setdefault(key, _Proposal())
        self._wake_up()
        try:
            while True:
                dropped = trio.Event()
                self._push(functools.partial(propose, dropped))
                retry_at = min(deadline, trio.current_time() + self.retry_interval())
                with trio.move_on_at(retry_at):
                    await _wait_any(waiter.done, dropped)
                    if not waiter.done.is_set():
                        # No leader: wait for one (or the retry time) before trying again.
                        await _wait_any(waiter.done, self._leader_changed)
                if waiter.done.is_set():
                    if waiter.error is not None:
                        raise waiter.error
                    assert waiter.result is not None
                    return waiter.result
                self._check_running()
                if trio.current_time() >= deadline:
                    raise EngineUnavailable(
                        f"raft: no leader committed the command in time (member {self.id})")
        finally:
            self._proposals.pop(key, None)

    async def read_barrier(self, *, deadline: float) -> None:
        """Return once a linearizable read of this member's state is possible.

        A member that leads as the only voter, with an entry of its own term applied, has
        applied every committed entry whose writer was answered, and no other member can
        lead while it is the only voter: its state is read at once, with no ReadIndex.
        """
        if self._lone_leader:
            self._check_running()
            return
        if self._dormant:
            # Every entry a dormant lone voter holds up to its commit index is committed,
            # and nothing else can commit meanwhile: once applied, that state is current.
            log_ = self.rawnode.raft.log
            if self.sole_voter() and log_.committed == log_.last_index():
                await self.wait_applied(log_.committed, deadline=deadline)
                return
            self._wake_up()
        while True:
            context = next(self._read_ids).to_bytes(8, "big")
            waiter = _Read()
            self._reads[context] = waiter
            self._push(functools.partial(self.rawnode.read_index, context))
            try:
                with trio.move_on_at(min(deadline, trio.current_time()
                                         + self.retry_interval())):
                    await waiter.answered.wait()
            finally:
                self._reads.pop(context, None)
            self._check_running()
            if waiter.answered.is_set():
                await self.wait_applied(waiter.index, deadline=deadline)
                return
            if trio.current_time() >= deadline:
                raise EngineUnavailable(f"raft: no leader confirmed a read in time "
                                        f"(member {self.id})")

    async def wait_applied(self, index: int, *, deadline: float) -> None:
        if self.kv.applied_index >= index:
            return
        event = trio.Event()
        self._applied_waiters.append((index, event))
        with trio.move_on_at(deadline):
            await event.wait()
        self._check_running()
        if self.kv.applied_index < index:
            raise EngineUnavailable(f"raft: member {self.id} did not apply index {index} "
                                    "in time")

    # -- leases ------------------------------------------------------------------------------

    def keepalive(self, lease: int) -> bool | None:
        """Renew ``lease`` on the leader; None when this member is not the leader."""
        self._check_running()
        self._wake_up()
        if self.role is not Role.LEADER:
            return None
        held = self.kv.state.leases.get(lease)
        if held is None:
            return False
        self.lessor.keepalive(lease, held.ttl)
        return True

    async def _lease_loop(self) -> None:
        """As leader, propose the revocation of every lease past its deadline."""
        while True:
            await trio.sleep(self.tick_seconds)
            now = trio.current_time()
            for lease in self.lessor.expired():
                if self._revoking.get(lease, 0.0) > now:
                    continue
                self._revoking[lease] = now + self.retry_interval()
                data = encode_command(0, 0, ("lease_revoke", lease))
                # If dropped, retried after retry_interval while still expired.
                self._push(functools.partial(self._propose, data, trio.Event()))

    def _propose(self, data: bytes, dropped: trio.Event) -> None:
        try:
            self.rawnode.propose(data)
        except ProposalDropped:
            dropped.set()
