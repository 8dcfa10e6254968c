"""A linearizability checker for histories of the KV seam.

:func:`check` decides whether a :class:`~kvfs.lincheck.history.History` is linearizable
with respect to :class:`~kvfs.lincheck.kvmodel.KVModel`: whether every completed operation,
and any subset of the open-ended ones, can be given one instant after its call (and before
its return, if it returned) such that, taken in the order of those instants, the outputs are
exactly what the sequential model answers.  The verdict is ``OK``, ``ILLEGAL`` (with the
longest linearizable prefix found and the operations that could not go next) or
``UNKNOWN`` (the search budget ran out).

The search (after Wing & Gong, with Lowe's just-in-time linearization as Porcupine uses
it): call and return events sit in one time-ordered doubly linked list.  The operations
whose call precedes the first remaining return are the *minimal* ones -- the only ones that
may be linearized next.  A depth-first search linearizes one of them if the model accepts
its output, unlinks its events and goes on; when none fits it backtracks.  Events at equal
times count as concurrent (calls sort before returns).  Every pruning below keeps the
verdict exact; the brute-force comparison in ``tests/test_lincheck.py`` checks that.
  * Memoization: a (linearized set as a bitset, model state) pair explored once is never
    explored again -- a second visit would fail the same way.
  * Reads without branching: a minimal operation that never changes the state (a read, a
    commit seen to fail, a commit without writes) and whose output fits now is placed at
    once, and nothing else is tried there.  A valid order that places it later stays valid
    with it moved here: nothing that must precede it is unplaced, and it changes nothing.
  * Revisions never go back: a read, or a failed commit, that reports revision R must be
    placed while the store is at R or below; a successful commit with puts that reports R,
    while the store is at R - 1.  A node whose revision has passed the bound of any
    unplaced operation is dead, and so is a step that would take it there.
  * One commit makes each revision: a read that saw key k with mod revision R means the
    commit that made revision R put k (with the value seen), so a step to revision R that
    did not is dead.
  * Open-ended operations (outcome unknown) have no return event, so they block nothing;
    they are tried after the completed ones, only where they change the state (elsewhere
    placing one equals leaving it out), and the search succeeds once every *completed*
    operation is placed -- the rest took effect later or never.  Open-ended reads are
    dropped up front.  And an open-ended operation p is placed only if the operation placed
    right after it could not trade places with it: one that touches a key p may write, or
    one whose output or effect involves the revision (all writes, when revisions are
    tracked).  Any valid order can be rewritten to satisfy this by moving each open-ended
    operation later past neighbours it commutes with, and dropping it at the end.

Partitioning.  Linearizability is local (Herlihy & Wing): a history over independent
objects is linearizable iff each object's sub-history is.  Keys of this store are *not*
independent in general: every write takes the next value of one global revision counter,
so an output that shows a revision number (a commit's revision, a read's header revision,
``current_revision``, a mod or create revision other than 0) or a compare against a nonzero
mod revision ties the key to every write to every other key.  So :func:`check` partitions
only when :func:`partition_blocker` finds none of these: no ``current_revision`` call, no
compare against a nonzero mod revision, and no output field carrying a revision other than
an observed mod revision of 0 (which only says "absent", a fact about the key alone).  Then
no output depends on the counter, each key is an independent register-with-existence, and
operations touching several keys (multi-key commits, ``get_many``, ranges and range deletes,
which touch every key of the history that falls inside them) merely join those keys into
one object: the partitions are the connected components of keys, and each is checked on
its own against the model restricted to its keys.  Otherwise the whole history is checked
at once.  In the same revision-free case the model also forgets revisions
(``KVModel.forget_revisions``), so that states differing only in revisions nobody can see
are memoized as one.

Budget: ``max_steps`` (model steps, shared by all partitions) and ``timeout`` (seconds on
``clock``) bound the search; when either runs out the verdict is ``UNKNOWN``, never a hang.

Speed, measured with the test file's generator (KVState applied at random instants inside
random intervals): 2,000 operations from 5 clients over 4 keys -- gets, ranges, get_many,
current_revision, compare-and-swap and blind commits, 2% of them with unknown outcome -- on
Python 3.11, one core of a 2-core box, median of 10 histories:
  * linearizable, every revision recorded:                     0.03 s (max 0.04 s)
  * the same without header revisions on gets (as the seam's
    ``get`` returns them):                                     0.03 s (max 0.04 s)
  * one read corrupted in the second half (ILLEGAL):           0.05 s (max 0.19 s)
  * 10% of operations with unknown outcome:                    0.04 s (max 0.07 s)
  * values only, no revisions (partitioned):                   0.03 s (max 0.06 s)
Without the reductions a values-only history is far slower (seconds, or UNKNOWN), and
histories with many concurrent open-ended writes whose effects are never observed remain
the expensive case.

This module does no I/O, starts no threads and reads no clock of its own: a ``timeout``
needs a ``clock`` passed in (``time.monotonic``, say), which keeps the package within the
pure-package import list of ``tests/test_raft_purity.py``.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kvfs.lincheck.history import (
    Commit,
    CommitOut,
    CurrentRevision,
    Get,
    GetMany,
    GetManyOut,
    GetOut,
    History,
    Operation,
    Range,
    RangeOut,
    RevisionOut,
)
from kvfs.lincheck.kvmodel import (
    KVModel,
    State,
    in_range,
    observed_mods,
    read_only,
    revision_bound,
)

DEFAULT_MAX_STEPS = 5_000_000


class Verdict(enum.Enum):
    OK = "linearizable"
    ILLEGAL = "not linearizable"
    UNKNOWN = "unknown (search budget exhausted)"


@dataclass(frozen=True, slots=True)
class Stuck:
    """An operation that could not be linearized next, and why."""

    op: Operation
    reason: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What :func:`check` found.

    ``orders`` (OK only): for each partition, op ids in a valid linearization order (open-ended
    operations that were not needed are left out).  On ILLEGAL or UNKNOWN: ``failed_keys``
    names the partition's keys, ``prefix`` is the longest linearizable prefix the search
    found there, ``state`` the model state after it, and ``stuck`` the completed operations
    that were minimal there and could not be placed next.
    """

    verdict: Verdict
    partitions: tuple[frozenset[bytes], ...]
    partition_note: str
    steps: int
    orders: tuple[tuple[int, ...], ...] = ()
    failed_keys: frozenset[bytes] | None = None
    prefix: tuple[Operation, ...] = ()
    stuck: tuple[Stuck, ...] = ()
    state: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def explain(self, max_prefix: int = 20) -> str:
        """A human-readable report (the prefix shows its last ``max_prefix`` operations)."""
        lines = [f"{self.verdict.value}; {self.partition_note}; {self.steps} model steps"]
        if self.note:
            lines.append(self.note)
        if self.verdict is Verdict.OK:
            return "\n".join(lines)
        if self.failed_keys is not None and len(self.partitions) > 1:
            keys = ", ".join(repr(k) for k in sorted(self.failed_keys))
            lines.append(f"in the partition of keys {{{keys}}}:")
        n = len(self.prefix)
        lines.append(f"longest linearizable prefix found: {n} operation{'' if n == 1 else 's'}")
        shown = self.prefix[-max_prefix:] if max_prefix > 0 else ()
        if len(shown) < len(self.prefix):
            lines.append(f"  ... ({len(self.prefix) - len(shown)} earlier)")
        lines += [f"  {op.describe()}" for op in shown]
        lines.append(f"store after it: {self.state}")
        if self.stuck:
            lines.append("none of these can be placed next:")
            lines += [f"  {s.op.describe()}\n      {s.reason}" for s in self.stuck]
        return "\n".join(lines)


# -- partitioning ------------------------------------------------------------------------


def _shows_revision(out: object) -> bool:
    if isinstance(out, GetOut):
        return (out.revision is not None or out.create_revision is not None
                or out.mod_revision not in (None, 0))
    if isinstance(out, GetManyOut):
        return out.revision is not None or any(r not in (None, 0) for _, r in out.items)
    if isinstance(out, RangeOut):
        return out.revision is not None or any(r not in (None, 0) for _, _, r in out.kvs)
    if isinstance(out, CommitOut):
        return out.revision is not None
    return isinstance(out, RevisionOut)


def partition_blocker(ops: Iterable[Operation]) -> str | None:
    """Why the history must be checked whole, or None when checking by key is sound.

    See the module docstring: any revision number in an input or output couples all keys.
    """
    for op in ops:
        if isinstance(op.input, CurrentRevision):
            return f"op {op.id} reads the global revision"
        if isinstance(op.input, Commit) and any(r != 0 for _, r in op.input.compares):
            return f"op {op.id} compares a mod revision"
        if op.output is not None and _shows_revision(op.output):
            return f"op {op.id}'s output shows a revision"
    return None


def _universe(ops: Iterable[Operation], initial_keys: Iterable[bytes]) -> list[bytes]:
    """Every key that can ever be present, sorted: the initial ones and those put."""
    return sorted({k for op in ops if isinstance(op.input, Commit) for k, _ in op.input.puts}
                  | set(initial_keys))


def _covered(universe: list[bytes], start: bytes, end: bytes) -> list[bytes]:
    """The keys of the sorted ``universe`` in ``[start, end)`` (``b"\\x00"``: no bound)."""
    lo = bisect.bisect_left(universe, start)
    if end == b"\x00":
        return universe[lo:]
    return [k for k in universe[lo:bisect.bisect_left(universe, end)]
            if in_range(k, start, end)]


def _touched(op: Operation, universe: list[bytes]) -> set[bytes]:
    """The keys whose state ``op`` may read or write, among keys that can ever exist."""
    inp = op.input
    if isinstance(inp, Get):
        return {inp.key}
    if isinstance(inp, GetMany):
        return set(inp.keys)
    if isinstance(inp, Range):
        return set(_covered(universe, inp.start, inp.end))
    if isinstance(inp, Commit):
        return {k for k, _ in inp.compares} | _written(op, universe)
    return set()


def _written(op: Operation, universe: list[bytes]) -> set[bytes]:
    """The keys ``op`` may change, among keys that can ever exist (and those it puts)."""
    inp = op.input
    if not isinstance(inp, Commit):
        return set()
    keys = {k for k, _ in inp.puts}
    for k, end in inp.deletes:
        keys.update([k] if end is None else _covered(universe, k, end))
    return keys


def split_by_key(ops: Sequence[Operation],
                 initial_keys: Iterable[bytes] = ()) -> list[tuple[frozenset[bytes],
                                                                   list[Operation]]]:
    """Operations grouped by connected components of the keys they touch.

    A key can only ever be present if some commit puts it (or it is initially present), so
    ranges touch only such keys.  Operations touching no such key form one group of their
    own (keyed by the empty set): their outputs do not depend on any key's state.  Sound
    only when :func:`partition_blocker` returns None.
    """
    universe = _universe(ops, initial_keys)
    parent: dict[bytes, bytes] = {}

    def find(k: bytes) -> bytes:
        root = k
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[k] != root:  # path compression
            parent[k], k = root, parent[k]
        return root

    touched = [_touched(op, universe) for op in ops]
    for keys in touched:
        it = iter(keys)
        first = next(it, None)
        if first is None:
            continue
        r = find(first)
        for k in it:
            s = find(k)
            if s != r:
                parent[s] = r
    groups: dict[bytes | None, list[Operation]] = {}
    members: dict[bytes | None, set[bytes]] = {}
    for op, keys in zip(ops, touched, strict=True):
        root = find(next(iter(keys))) if keys else None
        groups.setdefault(root, []).append(op)
        members.setdefault(root, set()).update(keys)
    return [(frozenset(members[r]), groups[r]) for r in groups]


# -- the search --------------------------------------------------------------------------


class _Budget:
    def __init__(self, max_steps: int | None, timeout: float | None,
                 clock: Callable[[], float] | None) -> None:
        self.steps = 0
        self.max_steps = max_steps
        self.clock = clock
        self.deadline = None if timeout is None or clock is None else clock() + timeout
        self.exhausted = ""

    def next_check(self) -> int:
        """The step count at which to call :meth:`check` next (clocks are slow to read)."""
        nxt = self.steps + 1024
        return nxt if self.max_steps is None else min(nxt, self.max_steps)

    def check(self) -> bool:
        """False (with ``exhausted`` set) once a limit is passed."""
        if self.max_steps is not None and self.steps >= self.max_steps:
            self.exhausted = f"step budget of {self.max_steps} exhausted"
            return False
        if self.deadline is not None and self.clock is not None and self.clock() >= self.deadline:
            self.exhausted = "timeout reached"
            return False
        return True


@dataclass(slots=True)
class _Outcome:
    verdict: Verdict
    order: list[int]  # indices into the partition's ops: the linearization or best prefix
    state: State
    minimal: list[int]  # at the best prefix: indices of the minimal operations


_NO_BOUND = 1 << 62


class _Node:
    """A search node: its state, the candidates to try from it and how far that got."""

    __slots__ = ("state", "after", "cands", "pos", "low", "lim1", "lim1_op", "lim2")

    def __init__(self, state: State, after: int, low: int) -> None:
        self.state = state
        self.after = after  # the open-ended operation placed last, or -1
        self.cands: list[int] = []
        self.pos = 0
        self.low = low  # in the bound order, every operation before this one is placed
        self.lim1 = _NO_BOUND  # the lowest revision bound of an unplaced operation
        self.lim1_op = -1  # whose it is
        self.lim2 = _NO_BOUND  # the second lowest


def _search(ops: Sequence[Operation], model: KVModel, budget: _Budget) -> _Outcome:
    """Depth-first search for a linearization of ``ops`` (see the module docstring)."""
    universe = _universe(ops, model.data)
    n = len(ops)
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    ro = [read_only(op.input, op.output) for op in ops]
    pending = [op.output is None for op in ops]
    to_place = n - sum(pending)

    # Revision bounds, lowest first: a node whose revision has passed the bound of any
    # unplaced operation is dead (revisions never go back).
    bounded = sorted((b, i) for i, b in enumerate(revision_bound(op.input, op.output)
                                                  for op in ops) if b is not None)
    bound_of = [b for b, _ in bounded] + [_NO_BOUND]
    bound_op = [i for _, i in bounded] + [-1]
    n_bounded = len(bounded)
    # What reads saw at each revision: the commit that made it must have put those values.
    seen_at: dict[int, list[tuple[bytes, bytes | None]]] = {}
    for op in ops:
        for mod, k, value in observed_mods(op.input, op.output):
            seen_at.setdefault(mod, []).append((k, value))

    # The event list: entries 0..E-1 in time order, E is the head sentinel, -1 ends it.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            events.append((op.ret, 1, i))
    events.sort()
    n_ev = len(events)
    head = n_ev
    nxt = list(range(1, n_ev + 1)) + [0 if n_ev else -1]
    if n_ev:
        nxt[n_ev - 1] = -1
    prv = [head] + list(range(n_ev))
    is_call = [kind == 0 for _, kind, _ in events]
    entry_op = [i for _, _, i in events]
    call_entry = [0] * n
    ret_entry = [-1] * n
    for e, (_, kind, i) in enumerate(events):
        if kind == 0:
            call_entry[i] = e
        else:
            ret_entry[i] = e

    def minimal() -> list[int]:
        out = []
        e = nxt[head]
        while e >= 0 and is_call[e]:
            out.append(entry_op[e])
            e = nxt[e]
        return out

    step = model.step
    bumps = not model.forget_revisions  # whether every change takes the revision one up
    # For the open-ended rule: keys each operation touches, keys each open-ended one may
    # write (computed when first needed), and which operations depend on the revision.
    touched: list[set[bytes] | None] = [None] * n
    written: list[set[bytes] | None] = [None] * n
    sees_revision = [bumps and (not ro[i] or revision_bound(inputs[i], outputs[i]) is not None)
                     for i in range(n)]

    def interacts(p: int, q: int) -> bool:
        """Whether q may not be moved before the open-ended p (they need not commute)."""
        if sees_revision[q]:
            return True
        tq = touched[q]
        if tq is None:
            tq = touched[q] = _touched(ops[q], universe)
        wp = written[p]
        if wp is None:
            wp = written[p] = _written(ops[p], universe)
        return not tq.isdisjoint(wp)

    cache: set[tuple[int, State, int]] = set()
    bits = 0
    placed = 0  # completed operations linearized so far
    is_placed = bytearray(n)
    path: list[int] = []
    best = _Outcome(Verdict.ILLEGAL, [], model.init(), [])
    best_depth = -1

    def expand(state: State, after: int, low: int) -> _Node:
        """The node at ``state``: one forced read, or the writes to try, in order."""
        while low < n_bounded and is_placed[bound_op[low]]:
            low += 1
        node = _Node(state, after, low)
        if low < n_bounded:
            node.lim1, node.lim1_op = bound_of[low], bound_op[low]
            low += 1
            while low < n_bounded and is_placed[bound_op[low]]:
                low += 1
            node.lim2 = bound_of[low]
        if state.revision > node.lim1:
            return node  # dead: no candidates
        # An open-ended operation is worth placing only where it changes the state, which
        # takes the revision one up: not possible when that passes a bound already.
        opens_fit = not bumps or state.revision < node.lim1
        opens: list[int] = []
        for i in minimal():
            if pending[i]:
                if opens_fit:
                    opens.append(i)
            elif not ro[i]:
                node.cands.append(i)
            else:
                budget.steps += 1
                if step(state, inputs[i], outputs[i]) is not None:
                    # Forced: this node is linearizable iff the one with i placed here is.
                    node.cands = [] if (bits | (1 << i), state, -1) in cache else [i]
                    return node
        node.cands += opens
        return node

    check_at = budget.next_check()
    nodes = [expand(model.init(), -1, 0)]
    while True:
        if placed == to_place:
            return _Outcome(Verdict.OK, path, nodes[-1].state, [])
        node = nodes[-1]
        state = node.state
        cands = node.cands
        after = node.after
        child: State | None = None
        while node.pos < len(cands):
            i = cands[node.pos]
            node.pos += 1
            if after >= 0 and not interacts(after, i):
                continue  # see the open-ended rule in the module docstring
            budget.steps += 1
            if budget.steps >= check_at:
                if not budget.check():
                    if len(path) > best_depth:
                        best = _Outcome(Verdict.UNKNOWN, list(path), state, minimal())
                    best.verdict = Verdict.UNKNOWN
                    return best
                check_at = budget.next_check()
            new = step(state, inputs[i], outputs[i])
            if new is None or (pending[i] and new == state):
                continue
            rev = new.revision
            if rev != state.revision:
                # Dead on arrival if the new revision passes the bound of another unplaced
                # operation (this spares expanding the child; it ends runs of open-ended
                # writes), or if some read saw this revision's writes differently.
                if rev > (node.lim2 if i == node.lim1_op else node.lim1):
                    continue
                seen = seen_at.get(rev)
                if seen is not None and not _agrees(new, rev, seen):
                    continue
            key = (bits | (1 << i), new, i if pending[i] else -1)
            if key in cache:
                continue
            cache.add(key)
            # Place i: drop its call and return events from the list.
            bits = key[0]
            path.append(i)
            is_placed[i] = 1
            placed += not pending[i]
            for e in (call_entry[i], ret_entry[i]):
                if e >= 0:
                    p, q = prv[e], nxt[e]
                    nxt[p] = q
                    if q >= 0:
                        prv[q] = p
            child = new
            break
        if child is not None:
            nodes.append(expand(child, i if pending[i] else -1, node.low))
            continue
        # Every candidate here failed: remember the deepest such node, then backtrack.
        if len(path) > best_depth:
            best_depth = len(path)
            best = _Outcome(Verdict.ILLEGAL, list(path), state, minimal())
        nodes.pop()
        if not nodes:
            return best
        i = path.pop()
        bits ^= 1 << i
        is_placed[i] = 0
        placed -= not pending[i]
        for e in (ret_entry[i], call_entry[i]):  # restore in reverse order (dancing links)
            if e >= 0:
                p, q = prv[e], nxt[e]
                nxt[p] = e
                if q >= 0:
                    prv[q] = e


def _agrees(state: State, rev: int, seen: list[tuple[bytes, bytes | None]]) -> bool:
    """Whether ``state``, just made at ``rev``, holds what reads saw written at ``rev``."""
    data = state.data
    for key, value in seen:
        e = data.get(key)
        if e is None or e[1] != rev or (value is not None and e[0] != value):
            return False
    return True


def _stuck(ops: Sequence[Operation], model: KVModel, outcome: _Outcome) -> tuple[Stuck, ...]:
    """The completed minimal operations at the best prefix, each with why it cannot go next."""
    placed = set(outcome.order)
    state = outcome.state
    out = []
    for i in outcome.minimal:
        op = ops[i]
        if op.output is None:
            continue
        why = model.explain(state, op.input, op.output)
        new = model.step(state, op.input, op.output) if why is None else None
        if new is not None and new.revision != state.revision:
            why = _revision_conflict(ops, placed | {i}, new)
        if why is None:
            why = ("it fits here, but every continuation fails"
                   if outcome.verdict is Verdict.ILLEGAL else
                   "it fits here; the budget ran out before every continuation was tried")
        out.append(Stuck(op, why))
    return tuple(out)


def _revision_conflict(ops: Sequence[Operation], placed: set[int], new: State) -> str | None:
    """Which unplaced operation rules out a step to ``new`` (the search's revision rules)."""
    rev = new.revision
    for j, other in enumerate(ops):
        if j in placed:
            continue
        b = revision_bound(other.input, other.output)
        if b is not None and rev > b:
            return (f"it would take the store to revision {rev}, past what op {other.id} "
                    f"requires (at most {b})")
    for other in ops:
        for mod, key, value in observed_mods(other.input, other.output):
            if mod == rev and not _agrees(new, rev, [(key, value)]):
                shown = "" if value is None else f"={value!r}"
                return (f"it would make revision {rev}, but op {other.id} saw {key!r}{shown} "
                        f"written at revision {rev}")
    return None


def check(history: History | Iterable[Operation], model: KVModel | None = None, *,
          partition: bool = True, forget_revisions: bool = True,
          max_steps: int | None = DEFAULT_MAX_STEPS, timeout: float | None = None,
          clock: Callable[[], float] | None = None) -> CheckResult:
    """Check ``history`` for linearizability against ``model`` (default: an empty store).

    When no input or output carries a revision (:func:`partition_blocker` is None), two
    exact reductions apply: ``partition`` checks each group of coupled keys on its own, and
    ``forget_revisions`` checks against the model without revisions, so that states that
    differ only in revisions nobody sees are explored once.  Turning them off changes the
    speed, never the verdict.  The search stops with ``Verdict.UNKNOWN`` after ``max_steps``
    model steps or ``timeout`` seconds on ``clock`` (required with a timeout; for example
    ``time.monotonic``).
    """
    if timeout is not None and clock is None:
        raise ValueError("a timeout needs a clock, for example clock=time.monotonic")
    ops = list(history.operations if isinstance(history, History) else history)
    if len({op.id for op in ops}) != len(ops):
        raise ValueError("operation ids must be unique")
    model = model or KVModel()
    # An open-ended read observes nothing and changes nothing: it constrains nothing.
    ops = [op for op in ops if not (op.output is None and read_only(op.input, None))]
    blocker = partition_blocker(ops)
    if blocker is not None and model.forget_revisions:
        raise ValueError(f"a model without revisions cannot check this history: {blocker}")
    if blocker is None and forget_revisions:
        model = model.without_revisions()
    groups: list[tuple[frozenset[bytes], list[Operation]]]
    if blocker is None and partition:
        groups = split_by_key(ops, model.data)
        groups.sort(key=lambda g: len(g[1]))  # small partitions first: cheap failures first
        note = f"checked as {len(groups)} independent key partitions"
    else:
        universe = _universe(ops, model.data)
        all_keys = set(universe).union(*(_touched(op, universe) for op in ops))
        groups = [(frozenset(all_keys), ops)]
        note = f"checked whole ({blocker or 'partitioning disabled'})"
    if model.forget_revisions:
        note += ", without revisions"

    budget = _Budget(max_steps, timeout, clock)
    orders: list[tuple[int, ...]] = []
    for keys, group in groups:
        sub = model.restrict(keys) if len(groups) > 1 else model
        outcome = _search(group, sub, budget)
        if outcome.verdict is not Verdict.OK:
            # ILLEGAL settles it; UNKNOWN means the budget is spent for the rest too.
            return _failure(outcome.verdict, groups, note, budget, keys, group, sub, outcome)
        orders.append(tuple(group[i].id for i in outcome.order))
    return CheckResult(Verdict.OK, tuple(k for k, _ in groups), note, budget.steps,
                       orders=tuple(orders))


def _failure(verdict: Verdict, groups: list[tuple[frozenset[bytes], list[Operation]]],
             note: str, budget: _Budget, keys: frozenset[bytes], group: list[Operation],
             model: KVModel, outcome: _Outcome) -> CheckResult:
    return CheckResult(
        verdict, tuple(k for k, _ in groups), note, budget.steps,
        failed_keys=keys,
        prefix=tuple(group[i] for i in outcome.order),
        stuck=_stuck(group, model, outcome),
        state=model.describe(outcome.state),
        note=budget.exhausted if verdict is Verdict.UNKNOWN else "")
