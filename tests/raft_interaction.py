"""A scripted, in-memory cluster of Raft nodes for interaction tests (tests/raft_testdata/).

Responsibility: drive :class:`kvfs.raft.RawNode` s over :class:`kvfs.raft.MemoryStorage` s
through a text script, acting as the host (persist, send, apply, advance) and as the network
(a queue of messages that only moves when a script says so), and print what happens in a
compact, deterministic notation.  ``tests/test_raft_interaction.py`` runs every script and
compares the output with the expected output stored in the script.

Script format
=============

A script is a sequence of blocks separated by blank lines.  Lines starting with ``#`` are
comments (kept verbatim when the expected output is rewritten).  A block is one command line,
a line ``----``, then the expected output (never empty: a command with nothing to say prints
``ok``; output never contains blank lines or lines starting with ``#``).

Commands
--------

Nodes and time:

``add-nodes N [voters=(1,2,3)] [learners=(4)] [pre-vote=BOOL] [check-quorum=BOOL]
[election-tick=10] [heartbeat-tick=1] [max-inflight=N] [max-size=N] [max-committed-size=N]``
    Create N nodes with the next free ids.  With ``voters``, each is bootstrapped
    (:func:`kvfs.raft.bootstrap`) with that configuration, plus ``learners`` (appended as
    committed ADD_LEARNER entries); without, each starts empty, to be added by a
    configuration change later.  Config defaults are :class:`kvfs.raft.Config` 's.
``restart ID``
    Rebuild the node from its storage (unpersisted state is lost; the state machine restarts
    from the storage's snapshot).
``tick ID [N]`` / ``tick-heartbeat ID`` / ``tick-election ID``
    Tick N times (default 1) / ``heartbeat_tick`` times / until the node's election timer
    fires: a leader ticks to its next check-quorum round (``election_tick``), any other node
    to its randomized election timeout (seeded by node id, so deterministic).

Requests (each prints ``ok`` or ``error: <exception>: <why>``):

``campaign ID``, ``propose ID DATA``, ``propose-conf-change ID add-voter|add-learner|remove
N``, ``transfer-leadership FROM TO`` (FROM is asked: leader or follower), ``read-index ID
CTX``, ``report-unreachable LEADER ID``, ``report-snapshot LEADER ID ok|fail``.

Host and network:

``process-ready ID...``
    Handle one Ready of each node in turn: persist (snapshot, entries, hard state), send the
    messages into the network queue, apply (snapshot, then committed entries), advance.
``deliver-msgs [ID...] [drop=(IDs)] [type=T] [from=ID] [reverse=true] [count=N]``
    Deliver the queued messages addressed to the IDs, in queue order (``reverse``: newest
    first, to reorder them), and drop those addressed to the ``drop`` IDs; with neither IDs
    nor ``drop``, deliver everything queued.  ``type`` and ``from`` narrow the selection;
    ``count`` takes only the first N selected (the rest stay queued).
    Prints each message (``dropped ...`` for drops), or ``no messages``.
``duplicate-msgs [ID...] [type=T] [from=ID]``
    Queue a second copy of each selected message right after it.
``stabilize [ID...]``
    Repeat (process-ready on every listed node that has one; deliver the messages addressed
    to each listed node) until nothing changes.  Default: all nodes.
``partition (1,2) (3)`` / ``cut FROM TO`` / ``heal``
    Cut every link between the groups (nodes listed in no group form one more group) / cut
    the one link FROM->TO / restore every link.  A message over a cut link is dropped when
    its delivery is attempted (printed as ``dropped (cut) ...``).
``compact ID INDEX``
    Snapshot the node's state machine as of INDEX (at most what it applied) with the
    configuration it had then, and compact its log through INDEX.

Inspection:

``status ID``, ``raft-log ID``, ``raft-state``, ``state-machine ID``.

``quiet CMD ...`` runs CMD and prints only ``ok`` (for setup steps shown elsewhere).

Output notation
---------------

* An entry is ``TERM/INDEX`` followed by ``"data"`` (a normal entry), ``(empty)`` (a normal
  entry without data, as a new leader appends), or ``add-voter(4)`` / ``add-learner(4)`` /
  ``remove(4)`` (a configuration change).
* A message is ``FROM->TO TYPE term=T`` (type names are :class:`kvfs.raft.MessageType`
  values; forwarded requests carry no term) and then, by type: appends ``log=T/I commit=C
  entries=[...]`` (log: the entry preceding ``entries``); append responses ``index=I``, or
  ``reject index=I hint=T/I`` (the follower's hint: its last possibly matching entry);
  vote requests ``last=T/I`` (the candidate's last entry) and ``transfer`` for a leadership
  transfer; vote responses ``granted`` or ``rejected``; heartbeats ``commit=C``; snapshots
  ``snapshot=T/I voters=(...) [learners=(...)] data=[...]``; forwarded transfers
  ``target=ID``; read contexts ``ctx="..."``, and in heartbeats the read round's key
  ``read=roundN``.  Any other field set is printed as ``name=value``.
* A Ready prints ``> ID ready`` (``ready sync`` when it must be synced) and one line per
  item: ``soft role=R leader=L``, ``hard term=T vote=V commit=C``, ``snapshot ...``,
  ``persist ENTRY``, ``send MESSAGE``, ``apply ENTRY``, ``read index=I ctx="..."``.
* A delivery prints ``> ID receives`` and the messages, one a line; an exception raised by
  ``step`` is printed as ``error: ...`` under the message.
"""

from __future__ import annotations

import json
import random
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from kvfs.raft import (
    ConfChange,
    ConfChangeKind,
    Config,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    NodeId,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    Snapshot,
    bootstrap,
)
from kvfs.raft import confchange as confchange_rules
from kvfs.raft.core import TRANSFER_CONTEXT
from kvfs.raft.progress import ProgressState


class ScriptError(Exception):
    """The script itself is wrong (unknown command, bad argument): a test bug, not output."""


# -- notation ---------------------------------------------------------------------------------

_CHANGE_NAMES = {ConfChangeKind.ADD_VOTER: "add-voter", ConfChangeKind.ADD_LEARNER: "add-learner",
                 ConfChangeKind.REMOVE: "remove"}
_CHANGE_KINDS = {name: kind for kind, name in _CHANGE_NAMES.items()}
_MESSAGE_TYPES = {t.value: t for t in MessageType}


def fmt_ids(ids: Iterable[int]) -> str:
    return "(" + ",".join(str(i) for i in sorted(ids)) + ")"


def fmt_bytes(data: bytes) -> str:
    return json.dumps(data.decode("utf-8", errors="backslashreplace"))


def fmt_read_key(key: bytes) -> str:
    """A heartbeat round's read key: the leader numbers the read requests of its leadership
    (8 bytes, big endian), and each heartbeat carries the newest pending one's number."""
    return f"round{int.from_bytes(key, 'big')}"


def fmt_entry(entry: Entry) -> str:
    head = f"{entry.term}/{entry.index}"
    if entry.kind is EntryKind.CONF_CHANGE:
        change = ConfChange.decode(entry.data)
        return f"{head} {_CHANGE_NAMES[change.kind]}({change.node})"
    if not entry.data:
        return f"{head} (empty)"
    return f"{head} {fmt_bytes(entry.data)}"


def fmt_entries(entries: Iterable[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_snapshot(snapshot: Snapshot) -> str:
    meta = snapshot.meta
    text = f"{meta.term}/{meta.index} voters={fmt_ids(meta.conf_state.voters)}"
    if meta.conf_state.learners:
        text += f" learners={fmt_ids(meta.conf_state.learners)}"
    values = [value for _, value in decode_state(snapshot.data)]
    return text + " data=[" + ", ".join(json.dumps(v) for v in values) + "]"


_VOTES = {MessageType.VOTE, MessageType.PRE_VOTE}
_VOTE_RESPONSES = {MessageType.VOTE_RESPONSE, MessageType.PRE_VOTE_RESPONSE}
_HEARTBEATS = {MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESPONSE}
_DEFAULT_MESSAGE = Message(MessageType.APPEND, to=NodeId(0), sender=NodeId(0))


def fmt_message(m: Message) -> str:
    """One message in the notation of the module docstring; every non-default field shows."""
    parts = [f"{m.sender}->{m.to} {m.type.value}"]
    shown = {"type", "to", "sender"}
    if m.term:
        parts.append(f"term={m.term}")
    shown.add("term")
    t = m.type
    if t is MessageType.APPEND:
        parts.append(f"log={m.log_term}/{m.index} commit={m.commit}")
        shown |= {"log_term", "index", "commit"}
    elif t in _VOTES:
        parts.append(f"last={m.log_term}/{m.index}")
        shown |= {"log_term", "index"}
        if m.context == TRANSFER_CONTEXT:
            parts.append("transfer")
            shown.add("context")
    elif t in _VOTE_RESPONSES:
        parts.append("rejected" if m.reject else "granted")
        shown.add("reject")
    elif t is MessageType.APPEND_RESPONSE:
        if m.reject:
            parts.append(f"reject index={m.index} hint={m.log_term}/{m.reject_hint}")
            shown |= {"reject", "index", "log_term", "reject_hint"}
        else:
            parts.append(f"index={m.index}")
            shown.add("index")
    elif t is MessageType.HEARTBEAT:
        parts.append(f"commit={m.commit}")
        shown.add("commit")
    elif t is MessageType.READ_INDEX_RESPONSE:
        parts.append(f"index={m.index}")
        shown.add("index")
    elif t is MessageType.TRANSFER_LEADER:
        parts.append(f"target={m.index}")
        shown.add("index")
    if m.snapshot is not None:
        parts.append("snapshot=" + fmt_snapshot(m.snapshot))
    shown.add("snapshot")
    if m.entries:
        parts.append("entries=" + fmt_entries(m.entries))
    shown.add("entries")
    if m.context and "context" not in shown:
        if t in _HEARTBEATS:
            parts.append("read=" + fmt_read_key(m.context))
        else:
            parts.append("ctx=" + fmt_bytes(m.context))
    shown.add("context")
    for f in fields(Message):
        if f.name not in shown and getattr(m, f.name) != getattr(_DEFAULT_MESSAGE, f.name):
            parts.append(f"{f.name}={getattr(m, f.name)}")
    return " ".join(parts)


# -- the state machine: a list of applied values ----------------------------------------------

def encode_state(values: list[tuple[int, str]]) -> bytes:
    return json.dumps([[i, v] for i, v in values]).encode()


def decode_state(data: bytes) -> list[tuple[int, str]]:
    if not data:
        return []
    return [(int(i), str(v)) for i, v in json.loads(data)]


# -- the cluster ------------------------------------------------------------------------------

@dataclass
class Node:
    """One simulated server: its disk (storage), its Raft node, its state machine."""

    id: NodeId
    config: Config
    storage: MemoryStorage
    raw: RawNode
    # The state machine: (index, value) of each normal entry applied, with data.
    applied: list[tuple[int, str]] = field(default_factory=list)
    # The configuration after each applied change, by index (to snapshot at any index).
    confs: list[tuple[int, ConfState]] = field(default_factory=list)

    def conf_at(self, index: int) -> ConfState:
        conf = ConfState()
        for at, c in self.confs:
            if at <= index:
                conf = c
        return conf


Printer = list[str]


@dataclass
class Args:
    """A command line split into positional words and key=value options."""

    positional: list[str]
    options: dict[str, str]

    def ids(self) -> list[NodeId]:
        return [parse_id(p) for p in self.positional]

    def flag(self, key: str, default: bool) -> bool:
        value = self.options.pop(key, None)
        if value is None:
            return default
        if value not in ("true", "false"):
            raise ScriptError(f"{key}= needs true or false, not {value!r}")
        return value == "true"

    def number(self, key: str, default: int) -> int:
        value = self.options.pop(key, None)
        return default if value is None else int(value)

    def id_list(self, key: str) -> list[NodeId] | None:
        value = self.options.pop(key, None)
        return None if value is None else parse_id_list(value)


def parse_id(word: str) -> NodeId:
    if not word.isdigit() or int(word) <= 0:
        raise ScriptError(f"not a node id: {word!r}")
    return NodeId(int(word))


def parse_id_list(word: str) -> list[NodeId]:
    inner = word.strip()
    if inner.startswith("(") and inner.endswith(")"):
        inner = inner[1:-1]
    return [parse_id(w) for w in inner.split(",") if w.strip()]


def parse_args(words: list[str]) -> Args:
    positional: list[str] = []
    options: dict[str, str] = {}
    for word in words:
        if "=" in word and not word.startswith("("):
            key, value = word.split("=", 1)
            options[key] = value
        else:
            positional.append(word)
    return Args(positional, options)


class InteractionEnv:
    """The cluster and its network; :meth:`run` executes one command and returns its output."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, Node] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self._commands: dict[str, Callable[[Args, Printer], None]] = {
            "add-nodes": self._add_nodes,
            "restart": self._restart,
            "tick": self._tick,
            "tick-heartbeat": self._tick_heartbeat,
            "tick-election": self._tick_election,
            "campaign": self._campaign,
            "propose": self._propose,
            "propose-conf-change": self._propose_conf_change,
            "transfer-leadership": self._transfer_leadership,
            "read-index": self._read_index,
            "report-unreachable": self._report_unreachable,
            "report-snapshot": self._report_snapshot,
            "process-ready": self._process_ready_cmd,
            "deliver-msgs": self._deliver_msgs,
            "duplicate-msgs": self._duplicate_msgs,
            "stabilize": self._stabilize,
            "partition": self._partition,
            "cut": self._cut,
            "heal": self._heal,
            "compact": self._compact,
            "status": self._status,
            "raft-log": self._raft_log,
            "raft-state": self._raft_state,
            "state-machine": self._state_machine,
        }

    # -- running commands ---------------------------------------------------------------------

    def run(self, command: str) -> str:
        words = shlex.split(command)
        if not words:
            raise ScriptError("empty command")
        quiet = words[0] == "quiet"
        if quiet:
            words = words[1:]
        handler = self._commands.get(words[0])
        if handler is None:
            raise ScriptError(f"unknown command {words[0]!r}")
        args = parse_args(words[1:])
        out: Printer = []
        handler(args, out)
        if args.options:
            raise ScriptError(f"unknown options for {words[0]}: {sorted(args.options)}")
        for line in out:
            if not line.strip() or line.startswith("#"):
                raise AssertionError(f"output line would break the script format: {line!r}")
        if quiet or not out:
            return "ok"
        return "\n".join(out)

    def node(self, node_id: NodeId) -> Node:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise ScriptError(f"no node {node_id}") from None

    def _one_id(self, args: Args, count: int = 1) -> list[NodeId]:
        ids = args.ids()
        if len(ids) != count:
            raise ScriptError(f"expected {count} node id(s), got {args.positional}")
        for node_id in ids:
            self.node(node_id)
        return ids

    @staticmethod
    def _request(out: Printer, action: Callable[[], None]) -> None:
        try:
            action()
        except ProposalDropped as e:
            out.append(f"error: {type(e).__name__}: {e}")

    # -- nodes and time -----------------------------------------------------------------------

    def _add_nodes(self, args: Args, out: Printer) -> None:
        if len(args.positional) != 1:
            raise ScriptError("add-nodes N")
        count = int(args.positional[0])
        voters = args.id_list("voters")
        learners = args.id_list("learners") or []
        defaults = Config(id=NodeId(1))
        template = Config(
            id=NodeId(1),
            pre_vote=args.flag("pre-vote", defaults.pre_vote),
            check_quorum=args.flag("check-quorum", defaults.check_quorum),
            election_tick=args.number("election-tick", defaults.election_tick),
            heartbeat_tick=args.number("heartbeat-tick", defaults.heartbeat_tick),
            max_inflight=args.number("max-inflight", defaults.max_inflight),
            max_size_per_msg=args.number("max-size", defaults.max_size_per_msg),
            max_committed_size_per_ready=args.number(
                "max-committed-size", defaults.max_committed_size_per_ready),
        )
        if learners and voters is None:
            raise ScriptError("learners= needs voters=")
        first = max(self.nodes, default=0) + 1
        for node_id in map(NodeId, range(first, first + count)):
            storage = MemoryStorage()
            if voters is not None:
                bootstrap(storage, voters)
                if learners:
                    # bootstrap() knows only voters: learners join as further committed
                    # changes of the same first term.
                    last = storage.last_index()
                    storage.append([
                        Entry(1, last + i + 1, EntryKind.CONF_CHANGE,
                              ConfChange(ConfChangeKind.ADD_LEARNER, learner).encode())
                        for i, learner in enumerate(learners)])
                    storage.set_hard_state(HardState(1, NodeId(0), storage.last_index()))
            self.nodes[node_id] = self._start(replace(template, id=node_id), storage)

    @staticmethod
    def _start(config: Config, storage: MemoryStorage) -> Node:
        snapshot = storage.snapshot()
        raw = RawNode(config, storage, random.Random(config.id))
        node = Node(config.id, config, storage, raw)
        node.applied = decode_state(snapshot.data)
        node.confs = [(snapshot.meta.index, snapshot.meta.conf_state)]
        return node

    def _restart(self, args: Args, out: Printer) -> None:
        (node_id,) = self._one_id(args)
        old = self.nodes[node_id]
        self.nodes[node_id] = self._start(old.config, old.storage)

    def _ticks(self, node_id: NodeId, count: int) -> None:
        for _ in range(count):
            self.nodes[node_id].raw.tick()

    def _tick(self, args: Args, out: Printer) -> None:
        ids = args.ids()
        if len(ids) not in (1, 2):
            raise ScriptError("tick ID [N]")
        node_id = ids[0]
        self.node(node_id)
        self._ticks(node_id, int(args.positional[1]) if len(ids) == 2 else 1)

    def _tick_heartbeat(self, args: Args, out: Printer) -> None:
        (node_id,) = self._one_id(args)
        self._ticks(node_id, self.nodes[node_id].config.heartbeat_tick)

    def _tick_election(self, args: Args, out: Printer) -> None:
        (node_id,) = self._one_id(args)
        raft = self.nodes[node_id].raw.raft
        if raft.role is Role.LEADER:
            timeout = raft.config.election_tick
        else:
            timeout = raft.randomized_election_timeout
        self._ticks(node_id, max(1, timeout - raft.election_elapsed))

    # -- requests -----------------------------------------------------------------------------

    def _campaign(self, args: Args, out: Printer) -> None:
        (node_id,) = self._one_id(args)
        self.nodes[node_id].raw.campaign()

    def _propose(self, args: Args, out: Printer) -> None:
        if len(args.positional) != 2:
            raise ScriptError("propose ID DATA")
        node = self.node(parse_id(args.positional[0]))
        data = args.positional[1].encode()
        self._request(out, lambda: node.raw.propose(data))

    def _propose_conf_change(self, args: Args, out: Printer) -> None:
        if len(args.positional) != 3 or args.positional[1] not in _CHANGE_KINDS:
            raise ScriptError("propose-conf-change ID add-voter|add-learner|remove N")
        node = self.node(parse_id(args.positional[0]))
        change = ConfChange(_CHANGE_KINDS[args.positional[1]], parse_id(args.positional[2]))
        self._request(out, lambda: node.raw.propose_conf_change(change))

    def _transfer_leadership(self, args: Args, out: Printer) -> None:
        asked, target = self._one_id(args, 2)
        self._request(out, lambda: self.nodes[asked].raw.transfer_leadership(target))

    def _read_index(self, args: Args, out: Printer) -> None:
        if len(args.positional) != 2:
            raise ScriptError("read-index ID CTX")
        node = self.node(parse_id(args.positional[0]))
        context = args.positional[1].encode()
        self._request(out, lambda: node.raw.read_index(context))

    def _report_unreachable(self, args: Args, out: Printer) -> None:
        leader, target = self._one_id(args, 2)
        self.nodes[leader].raw.report_unreachable(target)

    def _report_snapshot(self, args: Args, out: Printer) -> None:
        if len(args.positional) != 3 or args.positional[2] not in ("ok", "fail"):
            raise ScriptError("report-snapshot LEADER ID ok|fail")
        leader, target = parse_id(args.positional[0]), parse_id(args.positional[1])
        self.node(leader).raw.report_snapshot(target, args.positional[2] == "ok")

    # -- the host: handling a Ready -----------------------------------------------------------

    def process_ready(self, node_id: NodeId, out: Printer) -> None:
        """Carry out one Ready of ``node_id`` in the order its contract prescribes."""
        node = self.nodes[node_id]
        rd: Ready = node.raw.ready()
        out.append(f"> {node_id} ready" + (" sync" if rd.must_sync else ""))
        lines: list[str] = []
        if rd.soft_state is not None:
            lines.append(f"soft role={rd.soft_state.role.value} leader={rd.soft_state.leader}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            lines.append(f"hard term={hs.term} vote={hs.vote} commit={hs.commit}")
        # 1. persist: snapshot, entries, hard state.
        if rd.snapshot is not None:
            lines.append("snapshot " + fmt_snapshot(rd.snapshot))
            node.storage.apply_snapshot(rd.snapshot)
        for entry in rd.entries:
            lines.append("persist " + fmt_entry(entry))
        node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        # 2. send.
        for message in rd.messages:
            lines.append("send " + fmt_message(message))
        self.queue.extend(rd.messages)
        # 3. apply: snapshot, then committed entries; then answer reads.
        if rd.snapshot is not None:
            node.applied = decode_state(rd.snapshot.data)
            node.confs = [(rd.snapshot.meta.index, rd.snapshot.meta.conf_state)]
        for entry in rd.committed_entries:
            lines.append("apply " + fmt_entry(entry))
            if entry.kind is EntryKind.CONF_CHANGE:
                conf = confchange_rules.apply(node.conf_at(entry.index),
                                              ConfChange.decode(entry.data))
                node.confs.append((entry.index, conf))
            elif entry.data:
                node.applied.append((entry.index, entry.data.decode()))
        for read in rd.read_states:
            lines.append(f"read index={read.index} ctx={fmt_bytes(read.context)}")
        node.raw.advance(rd)
        out.extend("  " + line for line in lines)

    def _process_ready_cmd(self, args: Args, out: Printer) -> None:
        ids = args.ids() or sorted(self.nodes)
        for node_id in ids:
            if self.node(node_id).raw.has_ready():
                self.process_ready(node_id, out)
            else:
                out.append(f"> {node_id} no ready")

    # -- the network --------------------------------------------------------------------------

    def _select(self, args: Args) -> Callable[[Message], bool]:
        type_name = args.options.pop("type", None)
        if type_name is not None and type_name not in _MESSAGE_TYPES:
            raise ScriptError(f"unknown message type {type_name!r}")
        sender = args.options.pop("from", None)
        sender_id = parse_id(sender) if sender is not None else None
        return lambda m: ((type_name is None or m.type.value == type_name)
                          and (sender_id is None or m.sender == sender_id))

    def deliver(self, recipients: set[NodeId], dropped: set[NodeId],
                match: Callable[[Message], bool], out: Printer, *, indent: str = "",
                reverse: bool = False, count: int = 0) -> int:
        """Take the matching messages to ``recipients`` and ``dropped`` off the queue (in
        queue order, or newest first; at most ``count`` when it is set) and step or drop
        each; returns how many."""
        chosen = [m for m in self.queue if (m.to in recipients or m.to in dropped) and match(m)]
        if reverse:
            chosen.reverse()
        if count:
            chosen = chosen[:count]
        ids = {id(m) for m in chosen}
        self.queue = [m for m in self.queue if id(m) not in ids]
        for m in chosen:
            if m.to in dropped:
                out.append(f"{indent}dropped {fmt_message(m)}")
            elif (m.sender, m.to) in self.cut:
                out.append(f"{indent}dropped (cut) {fmt_message(m)}")
            elif m.to not in self.nodes:
                out.append(f"{indent}dropped (no node) {fmt_message(m)}")
            else:
                out.append(f"{indent}{fmt_message(m)}")
                try:
                    self.nodes[m.to].raw.step(m)
                except ProposalDropped as e:
                    out.append(f"{indent}  error: {type(e).__name__}: {e}")
        return len(chosen)

    def _deliver_msgs(self, args: Args, out: Printer) -> None:
        recipients = set(args.ids())
        dropped = set(args.id_list("drop") or [])
        if recipients & dropped:
            raise ScriptError("a node cannot be both delivered to and dropped")
        if not recipients and not dropped:
            recipients = {m.to for m in self.queue}
        reverse = args.flag("reverse", False)
        count = args.number("count", 0)
        if self.deliver(recipients, dropped, self._select(args), out, reverse=reverse,
                        count=count) == 0:
            out.append("no messages")

    def _duplicate_msgs(self, args: Args, out: Printer) -> None:
        recipients = set(args.ids()) or {m.to for m in self.queue}
        match = self._select(args)
        queue: list[Message] = []
        for m in self.queue:
            queue.append(m)
            if m.to in recipients and match(m):
                # A distinct object, so delivery can tell the copies apart.
                queue.append(replace(m))
                out.append(f"duplicated {fmt_message(m)}")
        self.queue = queue
        if not out:
            out.append("no messages")

    def _stabilize(self, args: Args, out: Printer) -> None:
        ids = args.ids() or sorted(self.nodes)
        for node_id in ids:
            self.node(node_id)
        for _ in range(10_000):
            busy = False
            for node_id in ids:
                if self.nodes[node_id].raw.has_ready():
                    self.process_ready(node_id, out)
                    busy = True
            for node_id in ids:
                if any(m.to == node_id for m in self.queue):
                    out.append(f"> {node_id} receives")
                    self.deliver({node_id}, set(), lambda m: True, out, indent="  ")
                    busy = True
            if not busy:
                return
        raise AssertionError("stabilize: the cluster never went quiet")

    def _partition(self, args: Args, out: Printer) -> None:
        groups = [set(parse_id_list(word)) for word in args.positional]
        rest = set(self.nodes) - set().union(*groups)
        if rest:
            groups.append(rest)
        for a in groups:
            for b in groups:
                if a is not b:
                    self.cut |= {(x, y) for x in a for y in b}

    def _cut(self, args: Args, out: Printer) -> None:
        sender, to = self._one_id(args, 2)
        self.cut.add((sender, to))

    def _heal(self, args: Args, out: Printer) -> None:
        self.cut.clear()

    # -- the host: log compaction -------------------------------------------------------------

    def _compact(self, args: Args, out: Printer) -> None:
        node_id, index = self._one_id_and_number(args)
        node = self.nodes[node_id]
        if index > node.raw.raft.log.applied:
            raise ScriptError(f"node {node_id} has applied only {node.raw.raft.log.applied}")
        data = encode_state([(i, v) for i, v in node.applied if i <= index])
        node.storage.create_snapshot(index, node.conf_at(index), data)
        node.storage.compact(index)

    def _one_id_and_number(self, args: Args) -> tuple[NodeId, int]:
        if len(args.positional) != 2:
            raise ScriptError("expected ID N")
        node_id = parse_id(args.positional[0])
        self.node(node_id)
        return node_id, int(args.positional[1])

    # -- inspection ---------------------------------------------------------------------------

    def _status(self, args: Args, out: Printer) -> None:
        (node_id,) = self._one_id(args)
        raft = self.nodes[node_id].raw.raft
        status = self.nodes[node_id].raw.status()
        hs = status.hard_state
        line = (f"{node_id}: {status.soft_state.role.value} term={hs.term} vote={hs.vote} "
                f"leader={status.soft_state.leader} commit={hs.commit} "
                f"applied={status.applied} last={status.last_index}")
        if status.lead_transferee:
            line += f" transferee={status.lead_transferee}"
        out.append(line)
        conf = status.conf_state
        out.append(f"  voters={fmt_ids(conf.voters)} learners={fmt_ids(conf.learners)}")
        for peer in sorted(status.progress):
            p = raft.tracker.progress[peer]
            text = f"  {peer}: {p.state.value} match={p.match} next={p.next}"
            if p.learner:
                text += " learner"
            if p.state is ProgressState.SNAPSHOT:
                text += f" pending-snapshot={p.pending_snapshot}"
            if p.inflights.count():
                text += f" inflight={p.inflights.count()}"
                if p.inflights.full():
                    text += "(full)"
            if p.is_paused():
                text += " paused"
            out.append(text)

    def _raft_log(self, args: Args, out: Printer) -> None:
        (node_id,) = self._one_id(args)
        log = self.nodes[node_id].raw.raft.log
        first, last = log.first_index(), log.last_index()
        out.append(f"first={first} last={last} commit={log.committed} applied={log.applied}")
        if first > 1:
            out.append(f"compacted through {log.term_or_zero(first - 1)}/{first - 1}")
        for entry in log.slice(first, last + 1) if last >= first else []:
            unstable = entry.index >= log.unstable.offset
            out.append(fmt_entry(entry) + (" (unstable)" if unstable else ""))

    def _raft_state(self, args: Args, out: Printer) -> None:
        for node_id, node in sorted(self.nodes.items()):
            raft = node.raw.raft
            out.append(f"{node_id}: {raft.role.value} term={raft.term} vote={raft.vote} "
                       f"leader={raft.lead}")

    def _state_machine(self, args: Args, out: Printer) -> None:
        (node_id,) = self._one_id(args)
        values = [v for _, v in self.nodes[node_id].applied]
        out.append(f"{node_id}: [" + ", ".join(json.dumps(v) for v in values) + "]")


# -- script files -----------------------------------------------------------------------------

@dataclass
class Block:
    """A command and its expected output; ``line`` is its 1-based line in the file."""

    command: str
    expected: str
    line: int


Item = str | Block  # a verbatim line (comment or blank), or a command block


_SEPARATOR = "----"


def parse_script(text: str) -> list[Item]:
    lines = text.splitlines()
    items: list[Item] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            items.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != _SEPARATOR:
            raise ScriptError(f"line {i + 1}: command {line!r} is not followed by {_SEPARATOR}")
        j = i + 2
        while j < len(lines) and lines[j].strip():
            j += 1
        items.append(Block(line.strip(), "\n".join(lines[i + 2:j]), i + 1))
        i = j
    return items


def render_script(items: list[Item], outputs: dict[int, str]) -> str:
    """The script text with each block's output replaced by ``outputs[id(block)]``."""
    out: list[str] = []
    for item in items:
        if isinstance(item, Block):
            out += [item.command, _SEPARATOR, outputs[id(item)]]
        else:
            out.append(item)
    return "\n".join(out) + "\n"


def run_script(path: Path) -> tuple[str, str]:
    """Run the script at ``path``: (its text as stored, its text with actual outputs)."""
    text = path.read_text()
    items = parse_script(text)
    env = InteractionEnv()
    outputs: dict[int, str] = {}
    for item in items:
        if isinstance(item, Block):
            try:
                outputs[id(item)] = env.run(item.command)
            except ScriptError as e:
                raise ScriptError(f"{path.name}:{item.line}: {e}") from None
    return text, render_script(items, outputs)
