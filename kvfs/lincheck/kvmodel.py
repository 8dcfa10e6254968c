"""The sequential specification of the etcd-like KV seam, for the linearizability checker.

:class:`KVModel` says what a correct store answers to each operation of
:mod:`kvfs.lincheck.history` when operations run one at a time, and :meth:`KVModel.step`
checks one observed output against it, exactly: values, mod and create revisions, the
revision a read was served at, ``succeeded``, the revision a commit reports, ``more``.
Output fields that are ``None`` were not recorded and match anything.

State: ``(revision, {key: (value, mod_revision, create_revision)})``, immutable
(:class:`State`); the store starts at ``KVModel(revision, data)``, empty at revision 0 by
default.  Semantics, identical to :mod:`kvfs.kv.state` (which follows etcd):
  * Reads (get, get_many, range, current_revision) change nothing and are served at the
    current revision.  An absent key reads as value None, mod revision 0, create revision 0.
    ``range(start, end)`` covers ``start <= key < end``; ``end == b"\\x00"`` means no upper
    bound.  With ``limit > 0`` it returns the first ``limit`` keys and ``more`` tells whether
    others exist; ``keys_only`` returns empty values.
  * A commit whose compares do not all hold writes nothing and reports the *current*
    revision.  Otherwise its deletes apply, then its puts, all at revision ``current + 1`` --
    but only if something changed: a put always changes its key (even to the same value),
    while a delete of an absent key, or a range delete that matches nothing, changes
    nothing.  A successful commit that changes nothing (no writes, or only deletes of absent
    keys) does **not** bump the revision and reports the current one.  This is etcd's rule:
    its MVCC write transaction increments the store revision only when it recorded changes
    (``storeTxnWrite.End``: ``if len(tw.changes) != 0``), and a delete-range that removes
    nothing records none.
  * A put keeps the key's create revision when the key exists and sets it to the new
    revision when it does not (a key deleted and put in one commit is created anew).

Leases, lease expiry, compaction and watches are not modelled: a history that uses them, or
a store written by clients outside the history, cannot be checked against this model.

For the checker's pruning, :func:`read_only` tells which operations never change the state,
:func:`revision_bound` the highest revision at which an operation can take effect, and
:func:`observed_mods` what a read says about the commit that made a given revision.
``KVModel(forget_revisions=True)`` keeps values only, for histories in which no revision
can be observed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kvfs.lincheck.history import (
    Commit,
    CommitOut,
    CurrentRevision,
    Get,
    GetMany,
    GetManyOut,
    GetOut,
    Input,
    Output,
    Range,
    RangeOut,
    RevisionOut,
    format_output,
)

Entry = tuple[bytes, int, int]  # value, mod_revision, create_revision

_MASK = (1 << 64) - 1


def _item_hash(key: bytes, entry: Entry) -> int:
    # A state's hash is the sum of its items' hashes, so it can be updated per write.  Raw
    # tuple hashes are nearly linear in their parts, and their sums collide wholesale for
    # states that hold the same values at permuted revisions; a splitmix64 finalizer on
    # each item's hash breaks that up.
    x = hash((key, entry)) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    """Whether a delete or range over ``[start, end)`` covers ``key`` (``None``: just start)."""
    if end is None:
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


class State:
    """An immutable store state: the revision and every present key's entry.

    Hashing is incremental (a sum of per-entry hashes maintained by the writes), so a state
    with many keys hashes in O(1); equality still compares the whole map, so the checker's
    memo table never confuses two states.
    """

    __slots__ = ("revision", "data", "_h")

    def __init__(self, revision: int, data: dict[bytes, Entry], h: int | None = None) -> None:
        self.revision = revision
        self.data = data  # never mutated once the state is built
        if h is None:
            h = sum(_item_hash(k, e) for k, e in data.items()) & _MASK
        self._h = h

    def __hash__(self) -> int:
        return hash((self.revision, self._h))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, State) and self.revision == other.revision
                and self._h == other._h and self.data == other.data)

    def __repr__(self) -> str:
        return f"State({self.describe()})"

    def describe(self, max_keys: int = 20) -> str:
        """``revision N; key=value@mod/create, ...`` with at most ``max_keys`` keys."""
        keys = sorted(self.data)
        parts = [f"{k!r}={self.data[k][0]!r}@{self.data[k][1]}/{self.data[k][2]}"
                 for k in keys[:max_keys]]
        if len(keys) > max_keys:
            parts.append(f"... ({len(keys) - max_keys} more keys)")
        body = ", ".join(parts) if parts else "no keys"
        return f"revision {self.revision}; {body}"


def read_only(inp: Input, out: Output | None) -> bool:
    """True when ``inp`` leaves the state unchanged in every state where ``out`` matches.

    Reads never write; a commit without puts or deletes never writes; and a commit observed
    to fail matches only states where its compares fail, where it writes nothing.
    """
    if isinstance(inp, Commit):
        if not inp.puts and not inp.deletes:
            return True
        return isinstance(out, CommitOut) and not out.succeeded
    return True


def _opt_eq(observed: int | bool | None, expected: int | bool | None) -> bool:
    return observed is None or observed == expected


def matches(observed: Output, expected: Output) -> bool:
    """Whether ``observed`` agrees with the model's full answer ``expected``."""
    if isinstance(observed, GetOut):
        assert isinstance(expected, GetOut)
        return (observed.value == expected.value
                and _opt_eq(observed.mod_revision, expected.mod_revision)
                and _opt_eq(observed.revision, expected.revision)
                and _opt_eq(observed.create_revision, expected.create_revision))
    if isinstance(observed, CommitOut):
        assert isinstance(expected, CommitOut)
        return (observed.succeeded == expected.succeeded
                and _opt_eq(observed.revision, expected.revision))
    if isinstance(observed, RangeOut):
        assert isinstance(expected, RangeOut)
        if (len(observed.kvs) != len(expected.kvs)
                or not _opt_eq(observed.revision, expected.revision)
                or not _opt_eq(observed.more, expected.more)):
            return False
        return all(ok == ek and ov == ev and _opt_eq(om, em)
                   for (ok, ov, om), (ek, ev, em) in zip(observed.kvs, expected.kvs,
                                                         strict=True))
    if isinstance(observed, GetManyOut):
        assert isinstance(expected, GetManyOut)
        if (len(observed.items) != len(expected.items)
                or not _opt_eq(observed.revision, expected.revision)):
            return False
        return all(ov == ev and _opt_eq(om, em)
                   for (ov, om), (ev, em) in zip(observed.items, expected.items, strict=True))
    assert isinstance(observed, RevisionOut) and isinstance(expected, RevisionOut)
    return observed.revision == expected.revision


def revision_bound(inp: Input, out: Output | None) -> int | None:
    """The highest store revision at which an operation can take effect (None: no bound).

    Revisions never decrease, so once the state's revision passes this bound the operation
    can no longer be placed.  A read or a failed commit shows the revision it saw.  A
    successful commit shows the revision after it: one past the revision before when it
    puts something (a put always changes the store), and at least the one before otherwise.
    """
    if out is None or out.revision is None:
        return None
    if isinstance(out, CommitOut) and out.succeeded and isinstance(inp, Commit) and inp.puts:
        return out.revision - 1
    return out.revision


def observed_mods(inp: Input, out: Output | None) -> list[tuple[int, bytes, bytes | None]]:
    """``(mod_revision, key, value)`` for every present key ``out`` shows with its mod revision.

    Each says that the one commit which made revision ``mod_revision`` put ``key`` with
    ``value`` (None: the value was not returned, as with ``keys_only``).
    """
    found: list[tuple[int, bytes, bytes | None]] = []
    if isinstance(out, GetOut) and isinstance(inp, Get):
        if out.value is not None and out.mod_revision:
            found.append((out.mod_revision, inp.key, out.value))
    elif isinstance(out, GetManyOut) and isinstance(inp, GetMany):
        found += [(m, k, v) for k, (v, m) in zip(inp.keys, out.items, strict=False)
                  if v is not None and m]
    elif isinstance(out, RangeOut) and isinstance(inp, Range):
        found += [(m, k, None if inp.keys_only else v) for k, v, m in out.kvs if m]
    return found


class KVModel:
    """The etcd-like KV store, one operation at a time (see module docstring).

    With ``forget_revisions`` the model keeps only which keys exist and their values: the
    revision never moves and every present key reads as mod and create revision 1.  That
    is exact only for histories where no input or output carries a revision other than a
    mod revision of 0 (see :func:`kvfs.lincheck.checker.partition_blocker`), and there it
    lets states that differ only in revisions no one can see count as one.
    """

    def __init__(self, revision: int = 0, data: Mapping[bytes, Entry] | None = None, *,
                 forget_revisions: bool = False) -> None:
        data = dict(data or {})
        for k, (_v, mod, create) in data.items():
            if not 0 < create <= mod <= revision:
                raise ValueError(f"initial entry {k!r}: need 0 < create_revision <= "
                                 f"mod_revision <= revision ({revision})")
        self.revision = revision
        self.data = data
        self.forget_revisions = forget_revisions

    def init(self) -> State:
        """The state before the history's first operation."""
        if self.forget_revisions:
            return State(0, {k: (e[0], 1, 1) for k, e in self.data.items()})
        return State(self.revision, dict(self.data))

    def restrict(self, keys: Iterable[bytes]) -> KVModel:
        """The same model with only ``keys`` initially present (for partitioned checks)."""
        wanted = set(keys)
        return KVModel(self.revision, {k: e for k, e in self.data.items() if k in wanted},
                       forget_revisions=self.forget_revisions)

    def without_revisions(self) -> KVModel:
        """This model with ``forget_revisions`` set."""
        return KVModel(self.revision, self.data, forget_revisions=True)

    def apply(self, state: State, inp: Input) -> tuple[State, Output]:
        """The state after ``inp`` and the complete answer a correct store gives."""
        rev = state.revision
        data = state.data
        if isinstance(inp, Get):
            e = data.get(inp.key)
            if e is None:
                return state, GetOut(None, 0, rev, 0)
            return state, GetOut(e[0], e[1], rev, e[2])
        if isinstance(inp, Commit):
            return self._commit(state, inp)
        if isinstance(inp, Range):
            keys = sorted(k for k in data if in_range(k, inp.start, inp.end))
            more = False
            if inp.limit > 0 and len(keys) > inp.limit:
                keys, more = keys[:inp.limit], True
            return state, RangeOut(
                ((k, b"" if inp.keys_only else data[k][0], data[k][1]) for k in keys),
                rev, more)
        if isinstance(inp, GetMany):
            items: list[tuple[bytes | None, int | None]] = []
            for k in inp.keys:
                e = data.get(k)
                items.append((None, 0) if e is None else (e[0], e[1]))
            return state, GetManyOut(items, rev)
        assert isinstance(inp, CurrentRevision)
        return state, RevisionOut(rev)

    def _commit(self, state: State, inp: Commit) -> tuple[State, Output]:
        data = state.data
        rev = state.revision
        for key, want in inp.compares:
            e = data.get(key)
            if (0 if e is None else e[1]) != want:
                return state, CommitOut(False, rev)
        new: dict[bytes, Entry] | None = None  # copied on the first change
        h = state._h
        new_rev = rev if self.forget_revisions else rev + 1
        for key, end in inp.deletes:
            cur = data if new is None else new
            victims = ([key] if key in cur else []) if end is None else [
                k for k in cur if in_range(k, key, end)]
            for k in victims:
                if new is None:
                    new = dict(data)
                h -= _item_hash(k, new.pop(k))
        for key, value in inp.puts:
            if new is None:
                new = dict(data)
            old = new.get(key)
            if old is not None:
                h -= _item_hash(key, old)
            entry = ((value, 1, 1) if self.forget_revisions
                     else (value, new_rev, new_rev if old is None else old[2]))
            new[key] = entry
            h += _item_hash(key, entry)
        if new is None:
            return state, CommitOut(True, rev)
        return State(new_rev, new, h & _MASK), CommitOut(True, new_rev)

    def step(self, state: State, inp: Input, out: Output | None) -> State | None:
        """The state after ``inp`` if ``out`` is what the store may answer here, else None.

        ``out is None`` (outcome unknown) matches any answer.
        """
        new, expected = self.apply(state, inp)
        if out is None or matches(out, expected):
            return new
        return None

    def explain(self, state: State, inp: Input, out: Output | None) -> str | None:
        """Why ``out`` cannot be the answer in ``state`` (None when it can)."""
        if self.step(state, inp, out) is not None:
            return None
        _, expected = self.apply(state, inp)
        if self.forget_revisions:
            expected = _values_only(expected)
        return f"here the store answers {format_output(expected)}"

    def describe(self, state: State) -> str:
        """``state`` in words (values only when revisions are forgotten)."""
        if not self.forget_revisions:
            return state.describe()
        keys = sorted(state.data)
        parts = [f"{k!r}={state.data[k][0]!r}" for k in keys[:20]]
        if len(keys) > 20:
            parts.append(f"... ({len(keys) - 20} more keys)")
        return ", ".join(parts) if parts else "no keys"


def _values_only(out: Output) -> Output:
    """``out`` without its revision fields (they are not tracked)."""
    if isinstance(out, GetOut):
        return GetOut(out.value, None)
    if isinstance(out, GetManyOut):
        return GetManyOut((v, None) for v, _ in out.items)
    if isinstance(out, RangeOut):
        return RangeOut(((k, v, None) for k, v, _ in out.kvs), None, out.more)
    if isinstance(out, CommitOut):
        return CommitOut(out.succeeded, None)
    return out
