"""The linearizability checker (kvfs.lincheck): classic histories, generated ones, text format.

Generated histories come from kvfs.kv.state.KVState -- the state machine the stores really
run -- applied at random instants inside random concurrent intervals, so they are
linearizable by construction and cross-check the checker's own model against the store's.
Small generated histories, some of them corrupted, are also checked against a brute-force
search over every order, which keeps the checker's prunings honest.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from itertools import combinations

import pytest

from kvfs.kv.state import KVState
from kvfs.lincheck import (
    CheckResult,
    Commit,
    CommitOut,
    CurrentRevision,
    Get,
    GetMany,
    GetManyOut,
    GetOut,
    History,
    Input,
    KVModel,
    Operation,
    Output,
    Range,
    RangeOut,
    RevisionOut,
    Verdict,
    check,
    jsonlite,
    partition_blocker,
    split_by_key,
)
from kvfs.lincheck.kvmodel import matches

A, B, C = b"a", b"b", b"c"


def put(key: bytes, value: bytes, *, expect: int | None = None) -> Commit:
    """A put, guarded by ``key``'s mod revision when ``expect`` is given."""
    return Commit(compares=[] if expect is None else [(key, expect)], puts=[(key, value)])


def op(h: History, client: int, inp: Input, out: Output | None, call: float,
       ret: float | None = None) -> int:
    """Record one operation; ``out=None`` leaves it open-ended."""
    t = h.invoke(client, inp, at=call)
    if out is not None:
        assert ret is not None
        h.ok(t, out, at=ret)
    return t


def verdict(h: History) -> Verdict:
    """The verdict, which must not depend on the reductions (partitioning, no revisions).

    Each is turned off alone: both off is slow on histories without revisions (the brute
    force test below covers that combination on small histories).
    """
    results = [check(h, partition=p, forget_revisions=f)
               for p, f in ((True, True), (False, True), (True, False))]
    assert len({r.verdict for r in results}) == 1, [r.explain() for r in results]
    return results[0].verdict


# -- classic histories -------------------------------------------------------------------


def test_sequential_history_is_linearizable_and_its_order_is_returned() -> None:
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h, 1, Get(A), GetOut(b"1", 1, 1, 1), 2, 3)
    op(h, 2, put(A, b"2", expect=1), CommitOut(True, 2), 4, 5)
    op(h, 2, CurrentRevision(), RevisionOut(2), 6, 7)
    res = check(h)
    assert res.ok and res.orders == ((0, 1, 2, 3),)


def test_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, None), 0, 1)
    op(h, 2, Get(A), GetOut(None, None), 2, 3)
    assert verdict(h) is Verdict.ILLEGAL
    res = check(h)
    assert [o.id for o in res.prefix] == [0]
    assert [s.op.id for s in res.stuck] == [1]
    assert "b'1'" in res.stuck[0].reason
    # The same read overlapping the write may see either value.
    h2 = History()
    op(h2, 1, put(A, b"1"), CommitOut(True, None), 0, 2)
    op(h2, 2, Get(A), GetOut(None, None), 1, 3)
    assert verdict(h2) is Verdict.OK


def test_two_writes_observed_in_opposite_orders_is_not_linearizable() -> None:
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, None), 0, 10)
    op(h, 2, put(A, b"2"), CommitOut(True, None), 0, 10)
    op(h, 3, Get(A), GetOut(b"1", None), 1, 2)
    op(h, 3, Get(A), GetOut(b"2", None), 3, 4)
    op(h, 4, Get(A), GetOut(b"2", None), 1, 2)
    op(h, 4, Get(A), GetOut(b"1", None), 3, 4)
    assert verdict(h) is Verdict.ILLEGAL


@pytest.mark.parametrize("first", [b"1", b"2"])
def test_concurrent_writes_may_be_observed_in_either_order(first: bytes) -> None:
    second = b"2" if first == b"1" else b"1"
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, None), 0, 10)
    op(h, 2, put(A, b"2"), CommitOut(True, None), 0, 10)
    op(h, 3, Get(A), GetOut(first, None), 1, 2)
    op(h, 3, Get(A), GetOut(second, None), 3, 4)
    op(h, 4, Get(A), GetOut(second, None), 5, 6)
    assert verdict(h) is Verdict.OK
    # With revisions recorded, the order is pinned: the value read last has revision 2.
    h2 = History()
    op(h2, 1, put(A, b"1"), CommitOut(True, 1 if first == b"1" else 2), 0, 10)
    op(h2, 2, put(A, b"2"), CommitOut(True, 2 if first == b"1" else 1), 0, 10)
    op(h2, 3, Get(A), GetOut(first, 1, 1), 1, 2)
    op(h2, 3, Get(A), GetOut(second, 2, 2), 3, 4)
    assert check(h2).ok
    h3 = History()
    op(h3, 1, put(A, b"1"), CommitOut(True, 1), 0, 10)
    op(h3, 2, put(A, b"2"), CommitOut(True, 2), 0, 10)
    op(h3, 3, Get(A), GetOut(b"2", 2, 2), 1, 2)
    op(h3, 3, Get(A), GetOut(b"1", 1, 2), 3, 4)  # revision 1 read after revision 2
    assert check(h3).verdict is Verdict.ILLEGAL


def test_unknown_write_observed_by_a_later_read_is_linearizable() -> None:
    h = History()
    op(h, 1, put(A, b"1"), None, 0)
    op(h, 2, Get(A), GetOut(b"1", 1, 1, 1), 5, 6)
    op(h, 2, CurrentRevision(), RevisionOut(1), 7, 8)
    assert verdict(h) is Verdict.OK


def test_unknown_write_never_observed_is_linearizable() -> None:
    h = History()
    t = h.invoke(1, put(A, b"1"), at=0)
    h.unknown(t)
    op(h, 2, Get(A), GetOut(None, 0, 0), 5, 6)
    op(h, 2, Get(A), GetOut(None, 0, 0), 7, 8)
    op(h, 3, put(B, b"x"), CommitOut(True, 1), 9, 10)  # revision 1: the lost write never ran
    assert check(h).ok


def test_unknown_write_observed_then_unobserved_is_not_linearizable() -> None:
    h = History()
    op(h, 1, put(A, b"1"), None, 0)
    op(h, 2, Get(A), GetOut(b"1", None), 5, 6)
    op(h, 3, Get(A), GetOut(None, None), 7, 8)
    assert verdict(h) is Verdict.ILLEGAL
    # Unobserved, then observed, is fine: it took effect in between.
    h2 = History()
    op(h2, 1, put(A, b"1"), None, 0)
    op(h2, 2, Get(A), GetOut(None, None), 5, 6)
    op(h2, 3, Get(A), GetOut(b"1", None), 7, 8)
    assert verdict(h2) is Verdict.OK


def test_unknown_write_cannot_take_effect_before_its_call() -> None:
    h = History()
    op(h, 2, Get(A), GetOut(b"1", None), 0, 1)
    op(h, 1, put(A, b"1"), None, 2)
    assert verdict(h) is Verdict.ILLEGAL


def test_compare_and_swap_race_where_both_succeed_is_not_linearizable() -> None:
    h = History()
    op(h, 1, put(A, b"x", expect=0), CommitOut(True, None), 0, 5)
    op(h, 2, put(A, b"y", expect=0), CommitOut(True, None), 0, 5)
    assert verdict(h) is Verdict.ILLEGAL
    # On a mod revision, with revisions recorded.
    h2 = History()
    op(h2, 0, put(A, b"0"), CommitOut(True, 1), 0, 1)
    op(h2, 1, put(A, b"x", expect=1), CommitOut(True, 2), 2, 5)
    op(h2, 2, put(A, b"y", expect=1), CommitOut(True, 3), 2, 5)
    assert check(h2).verdict is Verdict.ILLEGAL


def test_compare_and_swap_race_where_one_fails_is_linearizable() -> None:
    h = History()
    op(h, 1, put(A, b"x", expect=0), CommitOut(True, None), 0, 5)
    op(h, 2, put(A, b"y", expect=0), CommitOut(False, None), 0, 5)
    op(h, 3, Get(A), GetOut(b"x", None), 6, 7)
    assert verdict(h) is Verdict.OK
    h2 = History()
    op(h2, 0, put(A, b"0"), CommitOut(True, 1), 0, 1)
    op(h2, 1, put(A, b"x", expect=1), CommitOut(False, 2), 2, 5)
    op(h2, 2, put(A, b"y", expect=1), CommitOut(True, 2), 2, 5)
    op(h2, 3, Get(A), GetOut(b"y", 2, 2, 1), 6, 7)
    assert check(h2).ok


def test_failed_commit_reports_the_current_revision() -> None:
    def history(reported: int) -> History:
        h = History()
        op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
        op(h, 2, put(A, b"2", expect=0), CommitOut(False, reported), 2, 3)
        return h

    assert check(history(1)).ok
    bad = check(history(2))  # a failed compare writes nothing: no new revision
    assert bad.verdict is Verdict.ILLEGAL
    assert "failed rev 1" in bad.stuck[0].reason
    assert check(history(0)).verdict is Verdict.ILLEGAL  # nor the revision before the write


def test_successful_commit_that_changes_nothing_keeps_the_revision() -> None:
    def history(first: int, second: int) -> History:
        h = History()
        op(h, 1, Commit(deletes=[B]), CommitOut(True, first), 0, 1)  # B is absent
        op(h, 1, Commit(deletes=[(b"x", b"z")]), CommitOut(True, first), 2, 3)
        op(h, 1, Commit(), CommitOut(True, first), 4, 5)
        op(h, 1, put(A, b"1"), CommitOut(True, second), 6, 7)
        op(h, 1, Commit(deletes=[A]), CommitOut(True, second + 1), 8, 9)
        return h

    assert check(history(0, 1)).ok
    assert check(history(1, 2)).verdict is Verdict.ILLEGAL


def test_revision_going_backwards_is_not_linearizable() -> None:
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h, 2, Get(B), GetOut(None, 0, 0), 2, 3)  # served at revision 0 after revision 1
    assert check(h).verdict is Verdict.ILLEGAL
    # Each read alone is fine per key; only the global revision exposes it.
    h2 = History()
    op(h2, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h2, 1, put(B, b"1"), CommitOut(True, 2), 2, 3)
    op(h2, 2, Get(C), GetOut(None, 0, 2), 4, 5)
    op(h2, 3, Get(C), GetOut(None, 0, 1), 6, 7)
    assert check(h2).verdict is Verdict.ILLEGAL
    h3 = History()
    op(h3, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h3, 2, CurrentRevision(), RevisionOut(0), 2, 3)
    assert check(h3).verdict is Verdict.ILLEGAL


def test_revisions_of_writes_to_different_keys_must_follow_real_time() -> None:
    # Per key each write is fine; together, revision 2 completed before revision 1 began.
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, 2), 0, 1)
    op(h, 2, put(B, b"1"), CommitOut(True, 1), 2, 3)
    assert partition_blocker(h.operations) is not None
    res = check(h)
    assert res.verdict is Verdict.ILLEGAL and len(res.partitions) == 1
    # Without revisions there is nothing to contradict, and the keys are checked apart.
    h2 = History()
    op(h2, 1, put(A, b"1"), CommitOut(True, None), 0, 1)
    op(h2, 2, put(B, b"1"), CommitOut(True, None), 2, 3)
    res2 = check(h2)
    assert res2.ok and len(res2.partitions) == 2


def test_range_inconsistent_with_point_reads_is_not_linearizable() -> None:
    def history(kvs: list[tuple[bytes, bytes, int | None]]) -> History:
        h = History()
        op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
        op(h, 1, put(B, b"2"), CommitOut(True, 2), 2, 3)
        op(h, 2, Get(B), GetOut(b"2", 2), 4, 5)
        op(h, 3, Range(A, C), RangeOut(kvs), 6, 7)
        return h

    assert check(history([(A, b"1", 1), (B, b"2", 2)])).ok
    assert check(history([(A, b"1", 1)])).verdict is Verdict.ILLEGAL
    assert check(history([(B, b"2", 2), (A, b"1", 1)])).verdict is Verdict.ILLEGAL  # order
    assert check(history([(A, b"1", 1), (B, b"2", 1)])).verdict is Verdict.ILLEGAL  # mod rev


def test_range_concurrent_with_a_write_sees_it_whole_or_not_at_all() -> None:
    def history(kvs: list[tuple[bytes, bytes, int | None]]) -> History:
        h = History()
        op(h, 1, put(A, b"1"), CommitOut(True, None), 0, 1)
        op(h, 1, Commit(puts=[(B, b"2"), (C, b"3")]), CommitOut(True, None), 2, 4)
        op(h, 2, Range(A, b"\x00"), RangeOut(kvs), 1.5, 10)
        return h

    assert verdict(history([(A, b"1", None)])) is Verdict.OK
    assert verdict(history([(A, b"1", None), (B, b"2", None), (C, b"3", None)])) is Verdict.OK
    assert verdict(history([(B, b"2", None), (C, b"3", None)])) is Verdict.ILLEGAL
    assert verdict(history([(A, b"1", None), (B, b"2", None)])) is Verdict.ILLEGAL


def test_range_limit_and_keys_only() -> None:
    h = History()
    op(h, 1, Commit(puts=[(A, b"1"), (B, b"2"), (C, b"3")]), CommitOut(True, 1), 0, 1)
    op(h, 2, Range(A, b"\x00", limit=2), RangeOut([(A, b"1", 1), (B, b"2", 1)], 1, True),
       2, 3)
    op(h, 2, Range(B, b"\x00", limit=2, keys_only=True),
       RangeOut([(B, b"", 1), (C, b"", 1)], 1, False), 4, 5)
    assert check(h).ok
    h2 = History()
    op(h2, 1, Commit(puts=[(A, b"1"), (B, b"2")]), CommitOut(True, 1), 0, 1)
    op(h2, 2, Range(A, b"\x00", limit=2), RangeOut([(A, b"1", 1), (B, b"2", 1)], 1, True),
       2, 3)
    assert check(h2).verdict is Verdict.ILLEGAL  # nothing lies beyond the page


def test_get_many_reads_one_revision() -> None:
    def history(items: list[tuple[bytes | None, int | None]]) -> History:
        h = History()
        op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
        op(h, 1, put(B, b"2"), CommitOut(True, 2), 2, 3)
        op(h, 2, GetMany([A, B]), GetManyOut(items), 1.5, 2.5)
        return h

    assert check(history([(b"1", 1), (None, 0)])).ok
    assert check(history([(b"1", 1), (b"2", 2)])).ok
    assert check(history([(None, 0), (b"2", 2)])).verdict is Verdict.ILLEGAL


def test_create_revision_is_kept_by_overwrites_and_reset_by_recreation() -> None:
    def history(create: int) -> History:
        h = History()
        op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
        op(h, 1, put(A, b"2"), CommitOut(True, 2), 2, 3)
        op(h, 1, Get(A), GetOut(b"2", 2, 2, create), 4, 5)
        return h

    assert check(history(1)).ok
    assert check(history(2)).verdict is Verdict.ILLEGAL
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h, 1, Commit(puts=[(A, b"2")], deletes=[A]), CommitOut(True, 2), 2, 3)
    op(h, 1, Get(A), GetOut(b"2", 2, 2, 2), 4, 5)
    assert check(h).ok


def test_initial_state_of_a_store_already_in_use() -> None:
    model = KVModel(revision=7, data={A: (b"old", 5, 3)})
    h = History()
    op(h, 1, Get(A), GetOut(b"old", 5, 7, 3), 0, 1)
    op(h, 1, put(A, b"new", expect=5), CommitOut(True, 8), 2, 3)
    assert check(h, model).ok
    assert check(h).verdict is Verdict.ILLEGAL  # not from an empty store
    with pytest.raises(ValueError):
        KVModel(revision=2, data={A: (b"x", 3, 1)})
    with pytest.raises(ValueError, match="without revisions"):
        check(h, model.without_revisions())


def test_explanation_names_the_prefix_and_the_blocked_operations() -> None:
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h, 2, Get(A), GetOut(b"1", 1), 2, 3)
    op(h, 3, Get(A), GetOut(b"1", 1, 2), 4, 5)
    res = check(h)
    assert not res.ok
    text = res.explain()
    assert "not linearizable" in text
    assert "longest linearizable prefix found: 2 operations" in text
    assert "op 2 (client 3, [4, 5]): get(b'a') -> b'1' mod 1 at rev 2" in text
    assert "here the store answers b'1' mod 1 create 1 at rev 1" in text
    assert res.state == "revision 1; b'a'=b'1'@1/1"


def test_explanation_names_the_read_that_contradicts_a_revision() -> None:
    h = History()
    op(h, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h, 2, Get(A), GetOut(b"zz", 1), 2, 3)
    res = check(h)
    assert res.verdict is Verdict.ILLEGAL
    assert [s.op.id for s in res.stuck] == [0]
    assert res.stuck[0].reason == ("it would make revision 1, but op 1 saw b'a'=b'zz' written "
                                   "at revision 1")
    h2 = History()
    op(h2, 1, put(A, b"1"), CommitOut(True, 1), 0, 1)
    op(h2, 1, put(A, b"2"), CommitOut(True, 2), 2, 3)
    op(h2, 2, Get(A), GetOut(b"1", 1, 1), 0, 3)
    op(h2, 3, put(B, b"1"), None, 0)
    res2 = check(h2)
    assert res2.ok
    assert res2.orders == ((0, 2, 1),)  # the lost write did not happen before the read


def test_recorder_checks_its_input() -> None:
    h = History()
    t = h.invoke(1, Get(A))
    with pytest.raises(TypeError):
        h.ok(t, CommitOut(True, 1))
    h.ok(t, GetOut(None, 0))
    with pytest.raises(ValueError):
        h.ok(t, GetOut(None, 0))
    t2 = h.invoke(1, Get(A), at=10)
    with pytest.raises(ValueError):
        h.ok(t2, GetOut(None, 0), at=9)
    h.ok(t2, GetOut(None, 0))
    assert [(o.call, o.ret) for o in h.operations] == [(0, 1), (10, 11)]
    with pytest.raises(ValueError):
        check([Operation(1, 1, 0, 1, Get(A), GetOut(None, 0))] * 2)


# -- budget ------------------------------------------------------------------------------


def _exponential_history(n: int) -> History:
    """n concurrent writes to distinct keys, then a range no order can produce."""
    h = History()
    keys = [b"k%02d" % i for i in range(n)]
    for i, k in enumerate(keys):
        op(h, i, put(k, b"v"), CommitOut(True, None), 0, 10)
    op(h, n, Range(b"k", b"l"), RangeOut([(k, b"w", None) for k in keys]), 0, 10)
    return h


def test_pathological_history_runs_out_of_budget_instead_of_hanging() -> None:
    h = _exponential_history(24)
    res = check(h, max_steps=20_000)
    assert res.verdict is Verdict.UNKNOWN
    assert "step budget of 20000" in res.explain()
    assert res.steps <= 21_000
    ticks = iter(range(1_000_000))
    res2 = check(h, max_steps=None, timeout=50.0, clock=lambda: float(next(ticks)))
    assert res2.verdict is Verdict.UNKNOWN and "timeout" in res2.note
    with pytest.raises(ValueError, match="clock"):
        check(h, timeout=1.0)
    res3 = check(h, max_steps=None, timeout=0.05, clock=time.monotonic)
    assert res3.verdict is Verdict.UNKNOWN
    # Small enough, the same shape is decided.
    assert check(_exponential_history(6)).verdict is Verdict.ILLEGAL


# -- generated histories -----------------------------------------------------------------


@dataclass
class _Plan:
    client: int
    call: float
    lin: float | None  # the instant it takes effect; None: never
    ret: float | None  # None: outcome unknown


def _observe(state: KVState, inp: Input, revisions: bool) -> Output:
    """What the real state machine answers, applying ``inp`` to ``state``."""
    def r(x: int) -> int | None:
        return x if revisions else None

    if isinstance(inp, Get):
        e = state.get(inp.key)
        if e is None:
            return GetOut(None, 0, r(state.revision), r(0))
        return GetOut(e.value, r(e.mod_revision), r(state.revision), r(e.create_revision))
    if isinstance(inp, GetMany):
        items: list[tuple[bytes | None, int | None]] = []
        for k in inp.keys:
            e = state.get(k)
            items.append((None, 0) if e is None else (e.value, r(e.mod_revision)))
        return GetManyOut(items, r(state.revision))
    if isinstance(inp, Range):
        kvs = list(state.scan(inp.start, inp.end))
        more = bool(inp.limit) and len(kvs) > inp.limit
        if inp.limit:
            kvs = kvs[:inp.limit]
        return RangeOut([(k, b"" if inp.keys_only else e.value, r(e.mod_revision))
                         for k, e in kvs], r(state.revision), more)
    if isinstance(inp, Commit):
        res = state.apply(("txn", list(inp.compares), [(k, v, 0) for k, v in inp.puts],
                           list(inp.deletes)))
        return CommitOut(res.succeeded, r(res.revision))
    return RevisionOut(state.revision)


class _Gen:
    def __init__(self, seed: int, keys: list[bytes], register: bool) -> None:
        self.rng = random.Random(seed)
        self.keys = keys
        self.register = register
        self.values = 0

    def value(self) -> bytes:
        self.values += 1
        return b"v%d" % self.values

    def input(self, state: KVState) -> Input:
        rng, keys = self.rng, self.keys
        k = rng.choice(keys)
        x = rng.random()
        if self.register:
            # Single keys, compares only against "absent", and the odd multi-key commit or
            # range within a family of keys (first letter): partitions are the families.
            if x < 0.45:
                return Get(k)
            fam = [j for j in keys if j[:1] == k[:1]]
            if x < 0.55 and len(fam) > 1:
                return Commit(puts=[(j, self.value()) for j in rng.sample(fam, 2)])
            if x < 0.62:
                return Range(k[:1], k[:1] + b"\xff")
            if x < 0.75:
                return Commit(deletes=[k])
            return put(k, self.value(), expect=0 if rng.random() < 0.4 else None)
        if x < 0.35:
            return Get(k)
        if x < 0.42:
            return Range(b"", b"\x00", limit=rng.choice([0, 0, 2]))
        if x < 0.47:
            return GetMany(rng.sample(keys, 2))
        if x < 0.50:
            return CurrentRevision()
        if x < 0.80:  # compare-and-swap, on the true mod revision or a stale one
            e = state.get(k)
            mod = 0 if e is None else e.mod_revision
            if rng.random() < 0.4:
                mod = max(0, mod - rng.randint(1, 3))
            return put(k, self.value(), expect=mod)
        if x < 0.90:
            return put(k, self.value())
        if x < 0.95:
            return Commit(puts=[(j, self.value()) for j in rng.sample(keys, 2)])
        return Commit(deletes=[k] if rng.random() < 0.7 else [(b"", b"\x00")])


def generate(seed: int, n_ops: int, n_clients: int = 5, n_keys: int = 4,
             p_unknown: float = 0.02, register: bool = False) -> History:
    """A linearizable history: KVState applied at a random instant inside each interval."""
    if register:
        keys = [b"%c%d" % (f, i) for f in b"ab" for i in range(n_keys // 2)] + [b"c0"]
    else:
        keys = [b"k%d" % i for i in range(n_keys)]
    gen = _Gen(seed, keys, register)
    rng = gen.rng
    plans: list[_Plan] = []
    for c in range(n_clients):
        t = rng.random()
        for _ in range(n_ops // n_clients + (c < n_ops % n_clients)):
            call = t + rng.expovariate(4.0)
            dur = rng.expovariate(1.0) + 0.01
            if rng.random() < p_unknown:
                # Timed out: it takes effect some time after its call, or never.
                lin = call + rng.expovariate(0.3) if rng.random() < 0.5 else None
                plans.append(_Plan(c, call, lin, None))
            else:
                plans.append(_Plan(c, call, call + rng.random() * dur, call + dur))
            t = call + dur
    state = KVState()
    h = History()
    effective = sorted((p for p in plans if p.lin is not None), key=lambda p: p.lin or 0)
    for p in effective + [p for p in plans if p.lin is None]:
        inp = gen.input(state)
        out = _observe(state, inp, not register) if p.lin is not None else None
        t = h.invoke(p.client, inp, at=p.call)
        if p.ret is not None:
            assert out is not None
            h.ok(t, out, at=p.ret)
    return h


def _replace(h: History, target: Operation, output: Output) -> History:
    return History.of(o if o.id != target.id else Operation(
        o.id, o.client, o.call, o.ret, o.input, output) for o in h.operations)


def _assert_valid_order(h: History, res: CheckResult) -> None:
    """The returned order respects real time and replays on KVState to the same outputs."""
    ops = {o.id: o for o in h.operations}
    (order,) = res.orders
    placed = {i: n for n, i in enumerate(order)}
    assert all(i in placed for i, o in ops.items() if o.output is not None)
    for i, o in ops.items():
        for j, p in ops.items():
            if o.ret is not None and i in placed and j in placed and o.ret < p.call:
                assert placed[i] < placed[j], (i, j)
    state = KVState()
    for i in order:
        out = _observe(state, ops[i].input, True)
        observed = ops[i].output
        assert observed is None or matches(observed, out), (i, observed, out)


@pytest.mark.parametrize("seed", range(12))
def test_generated_histories_pass_and_corrupted_ones_fail(seed: int) -> None:
    h = generate(seed, 150, p_unknown=0.05)
    res = check(h, partition=False)
    assert res.ok, res.explain()
    _assert_valid_order(h, res)
    rng = random.Random(seed)
    ops = [o for o in h.operations if o.output is not None]
    # A read of a value nobody wrote.
    g = rng.choice([o for o in ops if isinstance(o.output, GetOut)])
    assert isinstance(g.output, GetOut)
    bad = _replace(h, g, GetOut(b"never-written", g.output.mod_revision, g.output.revision))
    res = check(bad)
    assert res.verdict is Verdict.ILLEGAL
    assert res.stuck and g.id not in {o.id for o in res.prefix}
    # A commit reporting a revision beyond any the history could reach.
    w = rng.choice([o for o in ops if isinstance(o.output, CommitOut) and o.output.succeeded])
    beyond = sum(isinstance(o.input, Commit) for o in h.operations) + 1
    assert check(_replace(h, w, CommitOut(True, beyond))).verdict is Verdict.ILLEGAL


def test_generated_history_of_2000_operations_checks_quickly() -> None:
    h = generate(2024, 2000, n_clients=5, n_keys=4)
    outs = [o.output for o in h.operations]
    assert 10 < outs.count(None) < 100  # some outcomes unknown
    assert sum(isinstance(o, CommitOut) and not o.succeeded for o in outs) > 100  # CAS lost
    start = time.perf_counter()
    res = check(h)
    elapsed = time.perf_counter() - start
    assert res.ok, res.explain()
    assert elapsed < 10, elapsed  # about 0.1 s on the CI box; see checker docstring


def test_partitioned_and_whole_checks_agree() -> None:
    found = {Verdict.OK: 0, Verdict.ILLEGAL: 0}
    for seed in range(20):
        h = generate(1000 + seed, 60, n_clients=4, n_keys=4, p_unknown=0.1, register=True)
        assert partition_blocker(h.operations) is None
        res = check(h)
        assert res.ok and len(res.partitions) >= 2, res.partitions
        # Families a and b join their keys (multi-key commits, ranges); c0 stands alone.
        assert all(len({k[:1] for k in keys}) <= 1 for keys in res.partitions)
        rng = random.Random(seed)
        written = {k: [v for o in h.operations if isinstance(o.input, Commit)
                       for j, v in o.input.puts if j == k] for k in (b"a0", b"a1", b"b0", b"b1")}
        for _ in range(4):  # a read changed to another value of its key: either verdict
            g = rng.choice([o for o in h.operations
                            if isinstance(o.input, Get) and o.output is not None])
            assert isinstance(g.input, Get)
            choices = written.get(g.input.key, []) + [None]
            found[verdict(_replace(h, g, GetOut(rng.choice(choices), None)))] += 1
    assert found[Verdict.OK] >= 10 and found[Verdict.ILLEGAL] >= 10, found


def test_partitions_follow_the_keys_operations_couple() -> None:
    h = History()
    op(h, 1, Commit(puts=[(A, b"1"), (B, b"1")]), CommitOut(True, None), 0, 1)
    op(h, 1, put(C, b"1"), CommitOut(True, None), 2, 3)
    op(h, 1, put(b"d", b"1"), CommitOut(True, None), 2, 3)
    op(h, 2, Range(b"c", b"e"), RangeOut([(C, b"1", None), (b"d", b"1", None)]), 4, 5)
    op(h, 2, Get(b"zz"), GetOut(None, 0), 4, 5)
    op(h, 2, Range(b"x", b"y"), RangeOut([]), 4, 5)
    groups = {keys: [o.id for o in ops] for keys, ops in split_by_key(h.operations)}
    assert groups == {frozenset({A, B}): [0], frozenset({C, b"d"}): [1, 2, 3],
                      frozenset({b"zz"}): [4], frozenset(): [5]}
    assert check(h).ok
    for blocked in (Get(A), CurrentRevision()):
        h2 = History.of(h.operations)
        out: Output = GetOut(b"1", 1) if isinstance(blocked, Get) else RevisionOut(4)
        op(h2, 3, blocked, out, 6, 7)
        assert partition_blocker(h2.operations) is not None
        assert len(check(h2).partitions) == 1
    h3 = History.of(h.operations)
    op(h3, 3, put(A, b"2", expect=1), CommitOut(True, None), 6, 7)
    assert "compares a mod revision" in (partition_blocker(h3.operations) or "")


# -- against brute force -----------------------------------------------------------------


def _agree(observed: Output, actual: Output) -> bool:
    """Whether ``observed`` is ``actual`` with some revision fields left unrecorded (None)."""
    def rev(o: int | bool | None, a: int | bool | None) -> bool:
        return o is None or o == a

    if isinstance(observed, GetOut) and isinstance(actual, GetOut):
        return (observed.value == actual.value and rev(observed.mod_revision, actual.mod_revision)
                and rev(observed.revision, actual.revision)
                and rev(observed.create_revision, actual.create_revision))
    if isinstance(observed, GetManyOut) and isinstance(actual, GetManyOut):
        return (len(observed.items) == len(actual.items) and rev(observed.revision, actual.revision)
                and all(ov == av and rev(om, am) for (ov, om), (av, am)
                        in zip(observed.items, actual.items, strict=True)))
    if isinstance(observed, RangeOut) and isinstance(actual, RangeOut):
        return (len(observed.kvs) == len(actual.kvs) and rev(observed.revision, actual.revision)
                and rev(observed.more, actual.more)
                and all(ok == ak and ov == av and rev(om, am) for (ok, ov, om), (ak, av, am)
                        in zip(observed.kvs, actual.kvs, strict=True)))
    if isinstance(observed, CommitOut) and isinstance(actual, CommitOut):
        return observed.succeeded == actual.succeeded and rev(observed.revision, actual.revision)
    return observed == actual


def brute_force(h: History) -> bool:
    """Linearizable?  Tries every subset of the open-ended operations and every order of
    them and the completed ones that real time allows, replaying each prefix on KVState."""
    ops = h.operations
    done = [o for o in ops if o.output is not None]
    opens = [o for o in ops if o.output is None]

    def extend(prefix: list[Operation], rest: list[Operation]) -> bool:
        if not rest:
            return True
        for o in rest:
            if any(x.ret is not None and x.ret < o.call for x in rest if x is not o):
                continue  # something still unplaced returned before o was called
            state = KVState()
            for p in prefix:
                _observe(state, p.input, True)
            actual = _observe(state, o.input, True)
            if o.output is not None and not _agree(o.output, actual):
                continue
            if extend(prefix + [o], [x for x in rest if x is not o]):
                return True
        return False

    return any(extend([], done + list(chosen))
               for r in range(len(opens) + 1) for chosen in combinations(opens, r))


def _mutate(h: History, rng: random.Random) -> History:
    """``h`` with one output or one interval changed at random (maybe still linearizable)."""
    ops = h.operations
    target = rng.choice(ops)
    values = [v for o in ops if isinstance(o.input, Commit) for _, v in o.input.puts]

    def nudge(r: int | None) -> int | None:
        return None if r is None else max(0, r + rng.choice([-1, 1]))

    out = target.output
    call, ret = target.call, target.ret
    if out is None or rng.random() < 0.25:
        call = rng.uniform(0, max(o.ret or o.call for o in ops))
        ret = None if ret is None else call + rng.uniform(0, 2)
    elif isinstance(out, GetOut):
        if rng.random() < 0.5:
            out = GetOut(rng.choice(values + [None]), out.mod_revision, out.revision,
                         out.create_revision)
        else:
            out = GetOut(out.value, nudge(out.mod_revision), nudge(out.revision))
    elif isinstance(out, CommitOut):
        out = (CommitOut(not out.succeeded, out.revision) if rng.random() < 0.5
               else CommitOut(out.succeeded, nudge(out.revision)))
    elif isinstance(out, RangeOut):
        out = RangeOut(out.kvs[1:], out.revision, out.more) if out.kvs and rng.random() < 0.5 \
            else RangeOut(out.kvs, nudge(out.revision), out.more)
    elif isinstance(out, GetManyOut):
        out = GetManyOut(out.items, nudge(out.revision) if out.revision is not None else 1)
    elif isinstance(out, RevisionOut):
        out = RevisionOut(max(0, out.revision + rng.choice([-1, 1])))
    return History.of(o if o is not target else Operation(o.id, o.client, call, ret, o.input, out)
                      for o in ops)


@pytest.mark.parametrize("register", [False, True])
def test_checker_agrees_with_brute_force_on_small_histories(register: bool) -> None:
    found = {True: 0, False: 0}
    for seed in range(500):
        rng = random.Random(seed)
        h = generate(seed, rng.choice([5, 6, 7]), n_clients=rng.choice([2, 3, 4]),
                     n_keys=rng.choice([2, 4]), p_unknown=rng.choice([0.1, 0.3, 0.5]),
                     register=register)
        for _ in range(rng.choice([0, 1, 1, 2])):
            h = _mutate(h, rng)
        expected = brute_force(h)
        found[expected] += 1
        for partition in (True, False):
            for forget in (True, False):
                res = check(h, partition=partition, forget_revisions=forget)
                assert res.ok is expected, (seed, partition, forget, h.dumps(), res.explain())
    assert found[True] >= 100 and found[False] >= 100, found


# -- text format -------------------------------------------------------------------------


def test_text_format_round_trip() -> None:
    h = generate(7, 200, p_unknown=0.1)
    t = h.invoke(9, Commit(compares=[(b"\xff\x00", 0)], puts=[(b"\xff\x00", b"\xe9\n\"")],
                           deletes=[(b"a", b"\x00"), b"q"]), at=1000)
    h.unknown(t)
    t = h.invoke("client-x", Range(b"", b"\x00", limit=3, keys_only=True), at=1001)
    h.ok(t, RangeOut([(b"\xff\x00", b"", 4)], 5, False), at=1002.5)
    text = h.dumps()
    assert all(line.isascii() for line in text.splitlines())
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert [json.loads(line)[0] for line in lines[:2]] == ["call", "call"]  # plain JSON
    assert all(jsonlite.loads(line) == json.loads(line) for line in lines)
    back = History.loads(text)
    assert back.operations == h.operations
    assert back.dumps() == text
    assert check(back).verdict is check(h).verdict
    # Hand-written lines parse too, and bad ones are reported by line number.
    small = History.loads('# a comment\n["call", 0, 1, 0, ["get", "a"]]\n'
                          '["ok", 0, 1, ["get", null, 0, 0, null]]\n'
                          '["call", 1, 2, 2, ["commit", [], [["a", "x"]], []]]\n')
    assert [o.output for o in small.operations] == [GetOut(None, 0, 0), None]
    with pytest.raises(ValueError, match="line 2"):
        History.loads('["call", 0, 1, 0, ["get", "a"]]\n["ok", 0, 1, ["get", 5, 0]]\n')
    with pytest.raises(ValueError, match="line 1"):
        History.loads('["call", 0, 1, 0, ["frobnicate"]]\n')


def test_jsonlite_reads_what_json_writes_and_writes_what_json_reads() -> None:
    every_byte = bytes(range(256)).decode("latin-1")
    values: list[object] = [
        None, True, False, 0, -17, 2**70, 1.5, -2.25e-7, "", every_byte, "\U0001f600",
        [], [[], [1, [None, "x"]]], ["a\"b\\c", 3, 4.0],
    ]
    for v in values:
        text = jsonlite.dumps(v)
        assert json.loads(text) == v, text
        assert jsonlite.loads(text) == v
        assert jsonlite.loads(json.dumps(v)) == v
        assert jsonlite.loads(json.dumps(v, indent=2, ensure_ascii=False)) == v
    assert jsonlite.loads(' [ 1 ,"\\u00e9\\/" , [ ] ] ') == [1, "\u00e9/", []]
    for bad in ("[1, 2", "[1 2]", '"abc', '{"a": 1}', "[1] x", "tru", '"\\q"', "1e999",
                '"\\u12"', ""):
        with pytest.raises(ValueError):
            jsonlite.loads(bad)
    with pytest.raises(ValueError):
        jsonlite.dumps(float("nan"))
    with pytest.raises(TypeError):
        jsonlite.dumps({"a": 1})
