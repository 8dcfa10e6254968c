"""A seeded simulated cluster: hosts with disks, a faulty network, clients, and a checker.

One ``random.Random(seed)`` decides everything (the cluster's size and tuning, every step,
every fault, and the seed of each node's own generator), so a seed replays exactly.  There is
no I/O, clock or thread: time is the number of steps, and a node's clock is its ticks.

The world
  * N in {1, 3, 5} voters bootstrapped with :func:`kvfs.raft.bootstrap`, plus up to two
    spare node ids, running from the start with empty disks, that clients may add later.
  * Each host's *disk* is a :class:`MemoryStorage` holding only what the host persisted
    while handling a Ready, in the host order of :class:`Ready`: snapshot, entries, hard
    state; then messages are sent, the snapshot and committed entries applied, ``advance``.
    A *torn* Ready crashes the host part-way through persisting: the disk keeps a prefix of
    (snapshot, entry, entry, ..., hard state) -- possibly losing the last entry, or all of
    it -- and none of that Ready's messages leave.
  * A crash loses the RawNode, its unstable entries and the state machine.  Messages the
    host already sent stay in the network (they were sent legitimately and may still be
    delivered); messages that reach a crashed host are dropped.  A restart builds a new
    RawNode on the disk and rebuilds the state machine from the disk's snapshot; the core
    then hands the committed entries after it out again (applied restarts at the snapshot).
  * The network drops, duplicates, reorders and delays messages with per-seed
    probabilities, and cuts links: a node isolated, the cluster split in two, or single
    one-way links (a->b cut, b->a open).  A dropped snapshot is reported to its sender as
    ``report_snapshot(to, False)``, a delivered one as ``True``; other drops are reported as
    ``report_unreachable`` half of the time.
  * Hosts apply entries to a :class:`~kvfs.raftsim.kv.KV`, and every ``snapshot_every``
    applied entries snapshot it into their disk (``create_snapshot`` with the configuration
    at the applied index) and compact the log, keeping ``keep_entries``, so slow followers
    need snapshots.
  * Clients write (``put`` with client id and sequence number, retried until acknowledged:
    applied on a host the client proposed it through), read with ``read_index``, change
    membership (add a learner, promote, demote, remove, add a voter), transfer leadership
    and force campaigns, each through a random running host.
  * A removed node keeps running (ticking, answering, possibly campaigning in its stale
    view -- pre-vote and check-quorum must keep it from disrupting) until every voter of
    the configuration that removed it has applied the removal; then it is *decommissioned*:
    stopped, messages to it dropped.  Stopping it earlier could strand a voter that has not
    yet learned the removal and still needs its vote.  If a later change adds it back, it
    restarts on its old disk (a node that rejoins keeps its persisted vote; rejoining with
    a wiped disk would be unsafe).  Before removing or demoting the leader, clients half the
    time move leadership off it first, as operators do.
  * Log matching is checked on the entries that reach a disk (see ``persist_entries``);
    the other invariants on each node's whole log, persisted plus unstable.

The run: ``fault_steps`` random steps (tick, deliver, handle a Ready, client request, fault),
checking the invariants after each; then the *quiet* phase: every link healed, every crashed
host restarted, no more drops, duplicates or delays.  It proceeds in rounds -- every running
host ticks once, then messages and Readies are worked off until none remain -- and must
within ``LIVENESS_TIMEOUTS`` maximal election timeouts (``2 * election_tick`` rounds, i.e.
ticks of every node, each) reach a single leader of the highest term, with every write still
pending acknowledged (clients retry each election timeout), nothing uncommitted in its log,
and every member of its configuration (including nodes added during the run) applied up to
its commit index.  Measured, most runs settle within a tenth of that bound.

No stuck state is exempt.  The one the simulator used to report apart -- membership
changes applied at apply time (etcd-io/etcd#12359) can leave a voter that has not learned
that a change removing or demoting node X is committed needing X's vote, which X's longer
log withholds -- is closed in the core: X, asked for its vote by a voter of its
configuration with a shorter log, campaigns itself, brings the voter up to date and hands
leadership over.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvfs.raft import (
    ConfChange,
    ConfChangeKind,
    Config,
    ConfState,
    Entry,
    EntryKind,
    LogCompacted,
    LogUnavailable,
    MemoryStorage,
    Message,
    MessageType,
    NodeId,
    ProposalDropped,
    RawNode,
    ReadState,
    Ready,
    Role,
    bootstrap,
    confchange,
)
from kvfs.raft.log import RaftLog
from kvfs.raftsim.checker import COMPACTED, Checker, SafetyViolation
from kvfs.raftsim.kv import KV, decode_put, encode_put

# The quiet phase must settle within this many maximal election timeouts.  Raft's liveness
# is probabilistic: without pre-vote a node that cannot win (its log is behind) keeps
# campaigning and restarting everyone's timers, and with election_tick 4 the one node that
# can win times out strictly first with probability 3/8 per attempt -- 10 timeouts (about 16
# attempts) left a false alarm about once in 3000 seeds (seed 20295); 25 put it near 1e-7.
LIVENESS_TIMEOUTS = 25
KEYS = ("a", "b", "c", "d", "e", "f")


@dataclass(frozen=True, slots=True)
class Params:
    """Everything a seed decides before its first step."""

    n: int
    spares: int
    election_tick: int
    heartbeat_tick: int
    max_inflight: int
    max_size_per_msg: int
    max_committed_size_per_ready: int
    pre_vote: bool
    check_quorum: bool
    p_drop: float
    p_dup: float
    p_reorder: float
    p_delay: float
    p_torn: float
    chaos: float
    fault_steps: int
    snapshot_every: int
    keep_entries: int
    clients: int

    @classmethod
    def draw(cls, rng: random.Random) -> Params:
        election_tick = rng.choice((4, 6, 10))
        chaos = rng.choice((0.3, 1.0, 2.5))
        return cls(
            n=rng.choice((1, 3, 3, 5, 5)),
            spares=rng.randint(0, 2),
            election_tick=election_tick,
            heartbeat_tick=rng.choice((1, 1, 2)),
            max_inflight=rng.choice((1, 2, 4, 256)),
            max_size_per_msg=rng.choice((60, 200, 1 << 20)),
            max_committed_size_per_ready=rng.choice((0, 0, 80)),
            pre_vote=rng.random() < 0.7,
            check_quorum=rng.random() < 0.7,
            p_drop=rng.choice((0.0, 0.02, 0.1, 0.3)),
            p_dup=rng.choice((0.0, 0.02, 0.1)),
            p_reorder=rng.choice((0.0, 0.1, 0.5)),
            p_delay=rng.choice((0.0, 0.01, 0.05)),
            p_torn=0.01 * chaos,
            chaos=chaos,
            fault_steps=rng.randint(3000, 9000),
            snapshot_every=rng.choice((4, 15, 50, 10_000)),
            keep_entries=rng.choice((0, 2, 10)),
            clients=rng.randint(1, 4),
        )

    def describe(self) -> str:
        return " ".join(f"{k}={getattr(self, k)}" for k in self.__dataclass_fields__)


@dataclass(slots=True)
class Host:
    """One simulated server: its disk survives crashes, everything else is its life's."""

    id: NodeId
    disk: MemoryStorage = field(default_factory=MemoryStorage)
    node: RawNode | None = None
    life: int = 0
    decommissioned: bool = False
    kv: KV = field(default_factory=KV)
    applied: int = 0
    # What the checker last saw of this life, to report only changes.
    commit: int = 0
    raft_applied: int = 0
    leader_term: int = -1
    released_reads: list[ReadState] = field(default_factory=list)
    # The voters this node knew at the end of its last check: within one step a leader may
    # commit under these and then apply a membership change (or the other way round).
    voters: frozenset[NodeId] = frozenset()


@dataclass(slots=True)
class Client:
    id: int
    seq: int = 0
    pending: bytes | None = None
    via: set[NodeId] = field(default_factory=set)
    last_try: int = 0
    reads: int = 0


class RaftLogView:
    """:class:`~kvfs.raftsim.checker.LogView` over a node's RaftLog."""

    __slots__ = ("log",)

    def __init__(self, log: RaftLog) -> None:
        self.log = log

    def first_index(self) -> int:
        return self.log.first_index()

    def term_at(self, index: int) -> int | None:
        try:
            return self.log.term(index)
        except LogCompacted:
            return COMPACTED
        except LogUnavailable:
            return None


def disk_holds(disk: MemoryStorage, index: int, term: int) -> bool:
    if index <= disk.snapshot().meta.index:
        return True  # a snapshot covers it (the snapshot holds only committed entries)
    try:
        return disk.term(index) == term
    except (LogCompacted, LogUnavailable):
        return False


@dataclass(slots=True)
class Stats:
    steps: int = 0
    rounds: int = 0
    leaders: int = 0
    crashes: int = 0
    torn: int = 0
    commits: int = 0
    acked: int = 0
    reads: int = 0
    snapshots_sent: int = 0
    conf_applied: int = 0


class World:
    def __init__(self, seed: int, trace: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.params = Params.draw(self.rng)
        self.trace = trace
        self.checker = Checker(seed)
        self.stats = Stats()
        self.step_no = 0
        p = self.params
        voters = [NodeId(i) for i in range(1, p.n + 1)]
        self.hosts: dict[NodeId, Host] = {}
        for i in range(1, p.n + p.spares + 1):
            host = Host(NodeId(i))
            if i <= p.n:
                bootstrap(host.disk, voters)
            self.hosts[host.id] = host
        self.ids = sorted(self.hosts)
        self.inflight: list[Message] = []
        self.delayed: list[tuple[int, int, Message]] = []
        self.delay_seq = itertools.count()
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.p_drop, self.p_dup, self.p_delay = p.p_drop, p.p_dup, p.p_delay
        self.clients = [Client(i + 1) for i in range(p.clients)]
        # The configuration after the highest index any host applied (the committed log's
        # configuration as far as anyone has got), and removed nodes still running: node ->
        # the index of its removal.
        self.applied_high = 0
        self.conf = ConfState(frozenset(voters))
        self.removals: dict[NodeId, int] = {}
        self.rejoins: list[NodeId] = []
        self.last_commit_record: tuple[int, int, frozenset[NodeId]] | None = None
        self.read_counter = 0
        self.touched: set[NodeId] = set()
        c = p.chaos
        self.actions: list[tuple[str, Callable[[], None]]] = [
            ("tick", self.act_tick), ("deliver", self.act_deliver), ("ready", self.act_ready),
            ("write", self.act_write), ("read", self.act_read), ("conf", self.act_conf),
            ("transfer", self.act_transfer), ("campaign", self.act_campaign),
            ("crash", self.act_crash), ("restart", self.act_restart),
            ("partition", self.act_partition), ("heal", self.act_heal),
        ]
        weights = [25, 30, 25, 4, 2, 0.6, 0.3, 0.2, 0.25 * c, 1.0, 0.2 * c, 0.3]
        self.cum_weights = list(itertools.accumulate(weights))

    # -- bookkeeping -------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.step_no:6d} {text}")

    def fail(self, invariant: str, message: str) -> None:
        self.checker.fail(invariant, message)

    def config(self, node: NodeId) -> Config:
        p = self.params
        return Config(id=node, election_tick=p.election_tick, heartbeat_tick=p.heartbeat_tick,
                      max_size_per_msg=p.max_size_per_msg, max_inflight=p.max_inflight,
                      max_committed_size_per_ready=p.max_committed_size_per_ready,
                      pre_vote=p.pre_vote, check_quorum=p.check_quorum)

    def running(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.node is not None]

    def guard(self, what: str, action: Callable[[], None]) -> None:
        """Run an input to the core; an exception it raises where the contract allows none is
        a violation."""
        try:
            action()
        except SafetyViolation:
            raise
        except Exception as e:  # noqa: BLE001 -- any exception out of the core is a finding
            self.fail("core raised", f"{what}: {type(e).__name__}: {e}")

    # -- lives -------------------------------------------------------------------------------

    def start(self, host: Host) -> None:
        """Boot ``host`` from its disk."""
        host.life += 1
        rng = random.Random(self.rng.getrandbits(64))
        try:
            host.node = RawNode(self.config(host.id), host.disk, rng)
        except Exception as e:  # noqa: BLE001
            self.fail("core raised", f"restarting node {host.id} from its disk: "
                                     f"{type(e).__name__}: {e}")
        assert host.node is not None
        snapshot = host.disk.snapshot()
        host.kv = KV.decode(snapshot.data) if snapshot.meta.index else KV()
        host.applied = snapshot.meta.index
        if snapshot.meta.index:
            self.checker.restore(host.id, snapshot.meta.index, host.kv.digest())
        log = host.node.raft.log
        self.checker.persisted_commit(host.id, log.committed)
        host.commit = log.committed
        host.raft_applied = log.applied
        host.leader_term = -1
        host.released_reads = []
        self.checker.life(host.id, host.life, log.committed, log.applied)

    def crash(self, host: Host, why: str) -> None:
        self.log(f"crash {host.id} ({why})")
        host.node = None
        self.stats.crashes += 1
        self.recheck_durability(f"after node {host.id} crashed")

    def recheck_durability(self, when: str) -> None:
        if self.last_commit_record is None:
            return
        index, term, voters = self.last_commit_record
        holders = frozenset(v for v in voters if disk_holds(self.hosts[v].disk, index, term))
        self.checker.durable(index, term, voters, holders, when)

    # -- the step loop -----------------------------------------------------------------------

    def run(self) -> None:
        p = self.params
        for host in self.hosts.values():
            self.start(host)
        for host in self.hosts.values():
            self.check_host(host)
        for _ in range(p.fault_steps):
            self.step_no += 1
            self.checker.step = self.step_no
            name, action = self.rng.choices(self.actions, cum_weights=self.cum_weights)[0]
            action()
            self.after_step()
        self.stats.steps = self.step_no
        self.quiet()

    def after_step(self) -> None:
        if self.removals or self.rejoins:
            self.retire_removed()
        for node in self.touched:
            self.check_host(self.hosts[node])
        self.touched.clear()

    def retire_removed(self) -> None:
        """Stop each removed node once every voter of the configuration has applied its
        removal (so none of them still needs it for a quorum); restart a stopped one that
        was added back."""
        for node in self.rejoins:
            host = self.hosts[node]
            if host.decommissioned and node in self.conf.members():
                self.log(f"recommission {node}")
                host.decommissioned = False
                self.start(host)
                self.touched.add(node)
        self.rejoins.clear()
        for node, index in list(self.removals.items()):
            host = self.hosts[node]
            if host.decommissioned:
                continue
            if all(self.hosts[v].applied >= index and self.hosts[v].node is not None
                   for v in self.conf.voters):
                self.log(f"decommission {node}")
                host.decommissioned = True
                host.node = None

    # -- actions -----------------------------------------------------------------------------

    def pick_running(self) -> Host | None:
        running = self.running()
        return self.rng.choice(running) if running else None

    def act_tick(self) -> None:
        host = self.pick_running()
        if host is None:
            return
        node = host.node
        assert node is not None
        self.guard(f"tick {host.id}", node.tick)
        self.touched.add(host.id)

    def act_deliver(self) -> None:
        self.release_delayed()
        if not self.inflight:
            return
        rng = self.rng
        i = rng.randrange(len(self.inflight)) if rng.random() < self.params.p_reorder else 0
        message = self.inflight.pop(i)
        if rng.random() < self.p_drop:
            self.dropped(message, "lost")
            return
        self.deliver(message)

    def release_delayed(self) -> None:
        while self.delayed and self.delayed[0][0] <= self.step_no:
            self.inflight.append(heapq.heappop(self.delayed)[2])

    def deliver(self, m: Message) -> None:
        if (m.sender, m.to) in self.cut:
            self.dropped(m, "link cut")
            return
        target = self.hosts.get(m.to)
        if target is None or target.node is None:
            self.dropped(m, "target down")
            return
        node = target.node
        if self.trace is not None:
            self.log(f"deliver {describe(m)}")
        self.guard(f"node {m.to} stepping {describe(m)}", lambda: node.step(m))
        self.touched.add(m.to)
        if m.type is MessageType.SNAPSHOT:
            self.stats.snapshots_sent += 1
            self.report(m.sender, lambda n: n.report_snapshot(m.to, True))

    def dropped(self, m: Message, why: str) -> None:
        if self.trace is not None:
            self.log(f"drop ({why}) {describe(m)}")
        if m.type is MessageType.SNAPSHOT:
            self.report(m.sender, lambda n: n.report_snapshot(m.to, False))
        elif self.rng.random() < 0.5:
            self.report(m.sender, lambda n: n.report_unreachable(m.to))

    def report(self, node_id: NodeId, call: Callable[[RawNode], None]) -> None:
        host = self.hosts[node_id]
        node = host.node
        if node is None:
            return
        self.guard(f"transport report to node {node_id}", lambda: call(node))
        self.touched.add(node_id)

    def send(self, m: Message) -> None:
        rng = self.rng
        copies = 2 if rng.random() < self.p_dup else 1
        for _ in range(copies):
            if rng.random() < self.p_delay:
                release = self.step_no + rng.randint(1, 300)
                heapq.heappush(self.delayed, (release, next(self.delay_seq), m))
            else:
                self.inflight.append(m)

    def act_ready(self) -> None:
        ready = [h for h in self.hosts.values() if h.node is not None and h.node.has_ready()]
        if not ready:
            return
        host = self.rng.choice(ready)
        self.handle_ready(host, torn=self.rng.random() < self.params.p_torn)

    def handle_ready(self, host: Host, *, torn: bool = False) -> None:
        node = host.node
        assert node is not None
        rd: Ready
        try:
            rd = node.ready()
        except Exception as e:  # noqa: BLE001
            self.fail("core raised", f"ready() on node {host.id}: {type(e).__name__}: {e}")
            raise
        disk = host.disk
        self.touched.add(host.id)
        # As the real host does (RaftNode._leader_may_send_first): a leader whose term and
        # vote are already on disk sends its appends before it persists the same entries,
        # so followers may hold entries their leader loses in a crash.
        send_first = (node.raft.role is Role.LEADER and rd.soft_state is None
                      and rd.snapshot is None
                      and (rd.hard_state is None
                           or (rd.hard_state.term, rd.hard_state.vote)
                           == (disk.hard_state.term, disk.hard_state.vote)))
        if send_first:
            for m in rd.messages:
                self.send(m)
        if torn:
            self.torn_write(host, rd)
            return
        if self.trace is not None:
            self.log(f"ready {host.id}: {describe_ready(rd)}")
        if rd.snapshot is not None:
            disk.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.persist_entries(host, rd.entries)
        if rd.hard_state is not None:
            disk.set_hard_state(rd.hard_state)
            self.checker.persisted_commit(host.id, rd.hard_state.commit)
        if not send_first:
            for m in rd.messages:
                self.send(m)
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            host.kv = KV.decode(rd.snapshot.data)
            host.applied = meta.index
            self.checker.restore(host.id, meta.index, host.kv.digest())
        for entry in rd.committed_entries:
            self.apply(host, entry)
        for rs in rd.read_states:
            self.checker.read_state(host.id, rs.context, rs.index)
            host.released_reads.append(rs)
        self.guard(f"advance on node {host.id}", lambda: node.advance(rd))
        if host.released_reads:
            keep = []
            for rs in host.released_reads:
                if rs.index <= host.applied:
                    self.stats.reads += 1  # served: the state is host.kv (checked by apply)
                else:
                    keep.append(rs)
            host.released_reads = keep
        self.maybe_snapshot(host)

    def torn_write(self, host: Host, rd: Ready) -> None:
        pieces = (1 if rd.snapshot is not None else 0) + len(rd.entries) + (
            1 if rd.hard_state is not None else 0)
        cut = self.rng.randint(0, pieces)
        disk = host.disk
        written = 0
        if rd.snapshot is not None and written < cut:
            disk.apply_snapshot(rd.snapshot)
            written += 1
        entries = rd.entries[:max(0, cut - written)]
        if entries:
            self.persist_entries(host, entries)
            written += len(entries)
        if rd.hard_state is not None and written < cut:
            disk.set_hard_state(rd.hard_state)
            self.checker.persisted_commit(host.id, rd.hard_state.commit)
        self.stats.torn += 1
        self.crash(host, f"torn write: {cut} of {pieces} pieces persisted")

    def persist_entries(self, host: Host, entries: list[Entry]) -> None:
        # Log matching is checked on what reaches a disk: an entry that dies unpersisted
        # with its node left it only if the node led a term already on its disk (which it
        # can never lead again), and a leader that crashed before persisting its term may
        # legitimately win that term again and append other entries at the same indexes.
        try:
            previous: int | None = host.disk.term(entries[0].index - 1)
        except (LogCompacted, LogUnavailable):
            previous = None
        self.checker.log_entries(host.id, entries, previous)
        host.disk.append(entries)

    def apply(self, host: Host, entry: Entry) -> None:
        if entry.index != host.applied + 1:
            self.fail("4 state-machine safety",
                      f"node {host.id} was handed entry {entry.index} to apply after applying "
                      f"{host.applied}")
        node = host.node
        assert node is not None
        if entry.kind is EntryKind.CONF_CHANGE:
            change = ConfChange.decode(entry.data)
            self.stats.conf_applied += 1
            if entry.index > self.applied_high:
                self.conf = confchange.apply(self.conf, change)
                if change.node in self.conf.members():
                    self.removals.pop(change.node, None)
                    if self.hosts[change.node].decommissioned:
                        self.rejoins.append(change.node)
                else:
                    self.removals[change.node] = entry.index
        else:
            host.kv.apply(entry.data)
        if entry.index > self.applied_high:
            self.applied_high = entry.index
        host.applied = entry.index
        self.checker.apply(host.id, entry.index, entry.term, entry.kind, entry.data,
                           host.kv.digest())
        put = decode_put(entry.data) if entry.kind is EntryKind.NORMAL else None
        if put is not None:
            client = self.clients[put[2] - 1]
            if client.pending == entry.data and host.id in client.via:
                self.log(f"ack client {client.id} write {client.seq} at {entry.index} "
                         f"on {host.id}")
                self.checker.ack(client.id, client.seq, entry.index, entry.term,
                                 node.raft.term)
                client.pending = None
                client.via.clear()
                self.stats.acked += 1

    def maybe_snapshot(self, host: Host) -> None:
        disk = host.disk
        node = host.node
        assert node is not None
        snapshot_index = disk.snapshot().meta.index
        if host.applied <= snapshot_index:
            return
        if host.applied - snapshot_index < self.params.snapshot_every:
            return
        disk.create_snapshot(host.applied, node.raft.tracker.conf, host.kv.encode())
        compact_to = host.applied - self.params.keep_entries
        if compact_to >= disk.first_index():
            disk.compact(compact_to)
        self.log(f"snapshot {host.id} at {host.applied}, compacted to {compact_to}")

    # -- clients -----------------------------------------------------------------------------

    def act_write(self) -> None:
        client = self.rng.choice(self.clients)
        if client.pending is not None and self.step_no - client.last_try < 40:
            return
        self.client_write(client)

    def client_write(self, client: Client) -> None:
        host = self.pick_running()
        if host is None or host.node is None:
            return
        if client.pending is None:
            client.seq += 1
            key = self.rng.choice(KEYS)
            client.pending = encode_put(key, str(self.rng.randrange(1000)), client.id,
                                        client.seq)
        data = client.pending
        client.last_try = self.step_no
        node = host.node
        self.touched.add(host.id)
        try:
            node.propose(data)
        except ProposalDropped as e:
            self.log(f"propose {data!r} on {host.id}: dropped ({e})")
            return
        except Exception as e:  # noqa: BLE001
            self.fail("core raised", f"propose on node {host.id}: {type(e).__name__}: {e}")
        client.via.add(host.id)
        self.log(f"propose {data!r} on {host.id}")

    def act_read(self) -> None:
        host = self.pick_running()
        if host is None or host.node is None:
            return
        self.read_counter += 1
        context = f"r{self.read_counter}".encode()
        self.checker.read_request(host.id, context)
        node = host.node
        self.guard(f"read_index on {host.id}", lambda: node.read_index(context))
        self.touched.add(host.id)
        self.log(f"read_index {context!r} on {host.id}")

    def act_conf(self) -> None:
        host = self.pick_running()
        if host is None or host.node is None:
            return
        rng = self.rng
        conf = host.node.raft.tracker.conf
        target = NodeId(rng.choice(self.ids))
        if target in conf.voters:
            kind = rng.choice((ConfChangeKind.REMOVE, ConfChangeKind.ADD_LEARNER))
        elif target in conf.learners:
            kind = rng.choice((ConfChangeKind.REMOVE, ConfChangeKind.ADD_VOTER,
                               ConfChangeKind.ADD_VOTER))
        else:
            kind = rng.choice((ConfChangeKind.ADD_LEARNER, ConfChangeKind.ADD_LEARNER,
                               ConfChangeKind.ADD_VOTER))
        target_host = self.hosts[target]
        if (kind is not ConfChangeKind.ADD_VOTER and target_host.node is not None
                and target_host.node.raft.role is Role.LEADER and rng.random() < 0.5):
            # Half the time the operator moves leadership off a server before removing or
            # demoting it (as etcd's do); the other half the leader removes itself and the
            # core must hand leadership over.
            others = sorted(conf.voters - {target})
            if others:
                to = rng.choice(others)
                leader = target_host.node
                self.guard(f"transfer_leadership on {target}",
                           lambda: leader.transfer_leadership(to))
                self.touched.add(target)
                self.log(f"move leadership off {target} to {to} before removing it")
            return
        change = ConfChange(kind, target)
        node = host.node
        self.touched.add(host.id)
        try:
            node.propose_conf_change(change)
        except ProposalDropped as e:
            self.log(f"conf change {kind.name} {target} on {host.id}: refused ({e})")
            return
        except Exception as e:  # noqa: BLE001
            self.fail("core raised", f"propose_conf_change on {host.id}: "
                                     f"{type(e).__name__}: {e}")
        self.log(f"conf change {kind.name} {target} on {host.id}")

    def act_transfer(self) -> None:
        host = self.pick_running()
        if host is None or host.node is None:
            return
        target = NodeId(self.rng.choice(self.ids))
        node = host.node
        self.guard(f"transfer_leadership on {host.id}", lambda: node.transfer_leadership(target))
        self.touched.add(host.id)
        self.log(f"transfer leadership to {target} via {host.id}")

    def act_campaign(self) -> None:
        host = self.pick_running()
        if host is None or host.node is None:
            return
        self.guard(f"campaign on {host.id}", host.node.campaign)
        self.touched.add(host.id)
        self.log(f"campaign {host.id}")

    # -- faults ------------------------------------------------------------------------------

    def act_crash(self) -> None:
        host = self.pick_running()
        if host is not None:
            self.crash(host, "crash")

    def act_restart(self) -> None:
        down = [h for h in self.hosts.values() if h.node is None and not h.decommissioned]
        if not down:
            return
        host = self.rng.choice(down)
        self.log(f"restart {host.id}")
        self.start(host)
        self.touched.add(host.id)
        self.recheck_durability(f"after node {host.id} restarted")

    def act_partition(self) -> None:
        rng = self.rng
        ids = self.ids
        shape = rng.randrange(3)
        if shape == 0:
            lonely = rng.choice(ids)
            for other in ids:
                if other != lonely:
                    self.cut.add((lonely, other))
                    self.cut.add((other, lonely))
            self.log(f"partition: isolate {lonely}")
        elif shape == 1:
            side = set(rng.sample(ids, rng.randint(1, max(1, len(ids) - 1))))
            for a in ids:
                for b in ids:
                    if (a in side) != (b in side):
                        self.cut.add((a, b))
            self.log(f"partition: split {sorted(side)} from the rest")
        else:
            for _ in range(rng.randint(1, 3)):
                a, b = rng.choice(ids), rng.choice(ids)
                if a != b:
                    self.cut.add((a, b))
                    self.log(f"partition: cut {a}->{b}")

    def act_heal(self) -> None:
        if self.cut and self.rng.random() < 0.5:
            link = self.rng.choice(sorted(self.cut))
            self.cut.discard(link)
            self.log(f"heal {link[0]}->{link[1]}")
        else:
            self.cut.clear()
            self.log("heal all")

    # -- checks ------------------------------------------------------------------------------

    def check_host(self, host: Host) -> None:
        node = host.node
        if node is None:
            return
        raft = node.raft
        log = raft.log
        checker = self.checker
        term = raft.term
        if raft.role is Role.LEADER and host.leader_term != term:
            host.leader_term = term
            self.stats.leaders += 1
            self.log(f"leader {host.id} term {term}")
            checker.leader(host.id, term, RaftLogView(log))
        checker.term_bound(host.id, term, log.last_term())
        commit = log.committed
        if commit != host.commit or log.applied != host.raft_applied:
            checker.life(host.id, host.life, commit, log.applied)
            if commit > host.commit:
                lo = max(host.commit + 1, log.first_index() - 1)
                for index in range(lo, commit + 1):
                    checker.commit(host.id, term, index, log.term(index))
                self.stats.commits += commit - host.commit
                for other in self.hosts.values():
                    leader = other.node
                    if (leader is not None and other is not host
                            and leader.raft.role is Role.LEADER and leader.raft.term > term):
                        checker.still_leader(other.id, leader.raft.term,
                                             RaftLogView(leader.raft.log), commit)
                if raft.role is Role.LEADER:
                    self.check_commit_durable(host, commit, log.term(commit))
            host.commit = commit
            host.raft_applied = log.applied
        host.voters = raft.tracker.conf.voters
        if host.applied != log.applied:
            self.fail("4 state-machine safety",
                      f"node {host.id}'s core says applied {log.applied}, its host applied "
                      f"{host.applied}")

    def check_commit_durable(self, host: Host, commit: int, term: int) -> None:
        assert host.node is not None
        # The commit was counted in the configuration the leader had before this step or
        # in the one it has now (a step applies at most one change, and changes move one
        # voter at a time); the disks must hold the entry for a majority of one of them.
        now = host.node.raft.tracker.conf.voters
        for voters in (host.voters, now):
            holders = frozenset(v for v in voters
                                if disk_holds(self.hosts[v].disk, commit, term))
            if voters and len(holders) >= len(voters) // 2 + 1:
                self.last_commit_record = (commit, term, voters)
                return
        self.checker.durable(commit, term, now, holders,
                             f"when leader {host.id} committed it (voters before the step: "
                             f"{sorted(host.voters)})")

    # -- the quiet phase ---------------------------------------------------------------------

    def quiet(self) -> None:
        """Heal everything and check that the cluster settles (see the module docstring)."""
        self.log("quiet phase: heal, restart, no more network faults")
        self.checker.step = self.step_no
        self.cut.clear()
        self.p_drop = self.p_dup = self.p_delay = 0.0
        while self.delayed:
            self.inflight.append(heapq.heappop(self.delayed)[2])
        for host in self.hosts.values():
            if host.node is None and not host.decommissioned:
                self.start(host)
                self.touched.add(host.id)
        self.after_step()
        p = self.params
        limit = LIVENESS_TIMEOUTS * 2 * p.election_tick
        for round_no in range(1, limit + 1):
            self.stats.rounds = round_no
            hosts = self.running()
            self.rng.shuffle(hosts)
            for host in hosts:
                if host.node is None:
                    continue
                self.step_no += 1
                self.checker.step = self.step_no
                self.guard(f"tick {host.id}", host.node.tick)
                self.touched.add(host.id)
                self.after_step()
            if round_no % p.election_tick == 1:
                for client in self.clients:
                    if client.pending is not None:
                        self.client_write(client)
                        self.after_step()
            self.drain()
            if self.settled() is None:
                return
        why = f"not settled after {limit} rounds ({LIVENESS_TIMEOUTS} election timeouts): " \
              f"{self.settled()}\n" + self.describe_hosts()
        self.fail("liveness", why)

    def describe_hosts(self) -> str:
        lines = []
        for host in self.hosts.values():
            if host.node is None:
                lines.append(f"  node {host.id}: "
                             + ("decommissioned" if host.decommissioned else "down"))
                continue
            raft = host.node.raft
            log = raft.log
            conf = raft.tracker.conf
            lines.append(
                f"  node {host.id}: {raft.role.value} term {raft.term} vote {raft.vote} "
                f"lead {raft.lead} commit {log.committed} applied {log.applied} "
                f"last ({log.last_index()}, t{log.last_term()}) first {log.first_index()} "
                f"voters {sorted(conf.voters)} learners {sorted(conf.learners)}")
        return "\n".join(lines)

    def drain(self) -> None:
        for _ in range(100_000):
            ready = [h for h in self.hosts.values()
                     if h.node is not None and h.node.has_ready()]
            if not ready and not self.inflight:
                return
            self.step_no += 1
            self.checker.step = self.step_no
            if self.inflight and (not ready or self.rng.random() < 0.5):
                i = self.rng.randrange(len(self.inflight))
                self.deliver(self.inflight.pop(i))
            else:
                self.handle_ready(self.rng.choice(ready))
            self.after_step()
        self.fail("liveness", "messages and Readies never run out")

    def settled(self) -> str | None:
        """None when the cluster is settled, else what is still missing."""
        running = self.running()
        if not running:
            return "no host is running"
        top = max(h.node.raft.term for h in running if h.node is not None)
        leaders = [h for h in running if h.node is not None
                   and h.node.raft.role is Role.LEADER and h.node.raft.term == top]
        if len(leaders) != 1:
            return f"no leader of the highest term {top}"
        leader = leaders[0]
        assert leader.node is not None
        raft = leader.node.raft
        commit = raft.log.committed
        if commit != raft.log.last_index():
            return f"leader {leader.id} has uncommitted entries up to {raft.log.last_index()}"
        for node in sorted(raft.tracker.conf.members()):
            host = self.hosts[node]
            if host.node is None:
                return f"member {node} is not running"
            if host.applied != commit:
                return f"member {node} applied {host.applied} of {commit}"
        pending = [c.id for c in self.clients if c.pending is not None]
        if pending:
            return f"writes of clients {pending} not acknowledged"
        return None


def describe(m: Message) -> str:
    text = f"{m.type.value} {m.sender}->{m.to} t{m.term}"
    if m.type in (MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE):
        text += f" at ({m.index},t{m.log_term})"
    if m.entries:
        text += f" entries {m.entries[0].index}..{m.entries[-1].index}"
    if m.commit:
        text += f" commit {m.commit}"
    if m.type in (MessageType.APPEND_RESPONSE, MessageType.READ_INDEX_RESPONSE):
        text += f" index {m.index}"
    if m.reject:
        text += f" reject hint {m.reject_hint}"
    if m.snapshot is not None:
        text += f" snapshot {m.snapshot.meta.index}"
    if m.context:
        text += f" ctx {m.context!r}"
    return text


def describe_ready(rd: Ready) -> str:
    parts = []
    if rd.soft_state is not None:
        parts.append(f"{rd.soft_state.role.value} lead={rd.soft_state.leader}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        parts.append(f"hs(t{hs.term} v{hs.vote} c{hs.commit})")
    if rd.snapshot is not None:
        parts.append(f"snapshot {rd.snapshot.meta.index}")
    if rd.entries:
        parts.append(f"entries {rd.entries[0].index}..{rd.entries[-1].index}")
    if rd.committed_entries:
        parts.append(f"apply {rd.committed_entries[0].index}..{rd.committed_entries[-1].index}")
    if rd.messages:
        parts.append(f"{len(rd.messages)} msgs")
    if rd.read_states:
        parts.append(f"reads {[(r.index, r.context) for r in rd.read_states]}")
    return " ".join(parts)


@dataclass(slots=True)
class Result:
    seed: int
    violation: SafetyViolation | None
    stats: Stats
    params: Params


def run_seed(seed: int, trace: Callable[[str], None] | None = None) -> Result:
    """Run one seed to the end; a violation is returned, not raised."""
    world = World(seed, trace)
    try:
        world.run()
    except SafetyViolation as v:
        return Result(seed, v, world.stats, world.params)
    except Exception as e:  # noqa: BLE001 -- a crash of the simulator itself fails the seed
        crashed = SafetyViolation("simulator error", f"{type(e).__name__}: {e}", seed,
                                  world.step_no)
        return Result(seed, crashed, world.stats, world.params)
    return Result(seed, None, world.stats, world.params)


__all__ = ["LIVENESS_TIMEOUTS", "Params", "Result", "World", "run_seed"]
