"""The Raft simulator (kvfs.raftsim): a slice of random seeds against the real core, the
checker fed hand-made violating histories, and mutated cores that must be caught.

Every run draws a new base seed (or takes ``KVFS_SIM_SEED``) and prints it, so a CI failure
replays with ``KVFS_SIM_SEED=<base> pytest tests/test_raft_sim.py`` or, for the one failing
seed, with the ``python -m kvfs.raftsim --seed N -v`` command in the failure message.
``KVFS_SIM_SEEDS`` sets how many seeds run (default 2500, about a minute on 2 cores);
``KVFS_SIM_SEEDS=20000`` runs a long slice on demand.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ProcessPoolExecutor

import pytest

from kvfs.raft import core, log, storage
from kvfs.raft.types import NO_NODE, Entry, EntryKind, HardState, NodeId
from kvfs.raftsim import Checker, DictLog, SafetyViolation, run_seed
from kvfs.raftsim.__main__ import _run_chunk, replay_command
from kvfs.raftsim.checker import COMPACTED

SEEDS = int(os.environ.get("KVFS_SIM_SEEDS", "2500"))
JOBS = 2
N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)


def base_seed() -> int:
    value = os.environ.get("KVFS_SIM_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 40)


# -- the slice of seeds ------------------------------------------------------------------------


def test_random_slice_of_seeds_keeps_every_invariant() -> None:
    base = base_seed()
    print(f"raft simulator: base seed {base} (KVFS_SIM_SEED={base}), {SEEDS} seeds")
    chunk = 25
    chunks = [range(s, min(s + chunk, base + SEEDS)) for s in range(base, base + SEEDS, chunk)]
    failures = []
    ran = 0
    with ProcessPoolExecutor(max_workers=JOBS) as pool:
        for results in pool.map(_run_chunk, chunks):
            for seed, violation, _steps in results:
                ran += 1
                if violation is not None:
                    failures.append(f"{violation}\n  replay: {replay_command(seed)}")
    assert ran == SEEDS
    assert not failures, (f"base seed {base} (rerun with KVFS_SIM_SEED={base}): "
                          f"{len(failures)} of {SEEDS} seeds failed\n" + "\n".join(failures))


def test_a_seed_replays_exactly() -> None:
    seed = base_seed()
    first: list[str] = []
    second: list[str] = []
    a = run_seed(seed, first.append)
    b = run_seed(seed, second.append)
    assert first == second, f"seed {seed} did not replay identically"
    assert a.stats == b.stats
    assert len(first) > 100  # a one-node seed traces a few hundred lines


def test_seeds_exercise_the_faults() -> None:
    """The world really produces what the invariants are about (guards against a simulator
    that quietly stopped doing anything)."""
    totals: dict[str, int] = {}
    for seed in range(40):
        r = run_seed(seed)
        assert r.violation is None, r.violation
        for name in r.stats.__dataclass_fields__:
            totals[name] = totals.get(name, 0) + getattr(r.stats, name)
    for name in ("leaders", "crashes", "torn", "commits", "acked", "reads", "snapshots_sent",
                 "conf_applied"):
        assert totals[name] > 20, (name, totals)


# -- mutated cores must be caught ---------------------------------------------------------------


def first_violation(limit: int) -> SafetyViolation:
    for seed in range(limit):
        r = run_seed(seed)
        if r.violation is not None:
            return r.violation
    raise AssertionError(f"the mutated core passed {limit} seeds")


def test_catches_a_leader_counting_its_unpersisted_entries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = core.Raft._append_entries

    def append_and_count(self: core.Raft, entries: list[Entry]) -> None:
        original(self, entries)
        own = self.tracker.progress.get(self.id)
        if self.role is core.Role.LEADER and own is not None:
            if own.maybe_update(self.log.last_index()):
                self._maybe_commit()

    monkeypatch.setattr(core.Raft, "_append_entries", append_and_count)
    assert first_violation(20).invariant == "6 durability"


def test_catches_appends_accepted_without_the_previous_term(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def maybe_append(self: log.RaftLog, index: int, log_term: int, committed: int,
                     entries: tuple[Entry, ...]) -> int | None:
        if index > self.last_index():
            return None
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError("rewrites a committed entry")
            self.append(list(entries[conflict - entries[0].index:]))
        self.commit_to(min(committed, index + len(entries)))
        return index + len(entries)

    monkeypatch.setattr(log.RaftLog, "maybe_append", maybe_append)
    first_violation(100)


def test_catches_a_vote_that_is_not_persisted(monkeypatch: pytest.MonkeyPatch) -> None:
    original = storage.MemoryStorage.set_hard_state

    def forget_vote(self: storage.MemoryStorage, hs: HardState) -> None:
        original(self, HardState(hs.term, NO_NODE, hs.commit))

    monkeypatch.setattr(storage.MemoryStorage, "set_hard_state", forget_vote)
    first_violation(1500)


def test_catches_a_cluster_that_never_elects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.Raft, "hup", lambda self, transfer=False: None)
    assert first_violation(5).invariant == "liveness"


# -- the checker on hand-made histories --------------------------------------------------------


def test_checker_two_leaders_in_one_term() -> None:
    c = Checker(seed=7)
    c.leader(N1, 3, DictLog((1, 2, 3)))
    c.leader(N1, 3, DictLog((1, 2, 3)))  # the same node again (another life) is fine
    with pytest.raises(SafetyViolation, match="both leader of term 3") as e:
        c.leader(N2, 3, DictLog((1, 2, 3)))
    assert e.value.seed == 7


def test_checker_divergent_applied_entries() -> None:
    c = Checker()
    c.apply(N1, 5, 2, EntryKind.NORMAL, b"x", digest=11)
    with pytest.raises(SafetyViolation, match="applied"):
        c.apply(N2, 5, 2, EntryKind.NORMAL, b"y", digest=12)


def test_checker_same_prefix_different_state() -> None:
    c = Checker()
    c.apply(N1, 5, 2, EntryKind.NORMAL, b"x", digest=11)
    with pytest.raises(SafetyViolation, match="state after index 5"):
        c.apply(N2, 5, 2, EntryKind.NORMAL, b"x", digest=99)


def test_checker_lost_committed_entry() -> None:
    """An entry committed by term 2 is missing from the leader of term 3."""
    c = Checker()
    c.commit(N1, 2, 4, 2)
    c.leader(N2, 2, DictLog((1, 1, 1)))  # a leader of the same term is not later
    c.leader(N3, 4, DictLog((1, 1, 1, 2), first=4))  # present
    c.leader(N3, 5, DictLog((1, 1, 1, 2, 2), first=6))  # below its snapshot counts as present
    assert DictLog((1,), first=6).term_at(4) == COMPACTED
    with pytest.raises(SafetyViolation, match="leader completeness"):
        c.leader(N2, 3, DictLog((1, 1, 1, 3)))


def test_checker_committed_entry_not_durable() -> None:
    c = Checker()
    voters = frozenset({N1, N2, N3})
    c.durable(4, 2, voters, frozenset({N1, N3}), "test")
    with pytest.raises(SafetyViolation, match="durability"):
        c.durable(4, 2, voters, frozenset({N1}), "test")


def test_checker_two_entries_committed_at_one_index() -> None:
    c = Checker()
    c.commit(N1, 2, 4, 2)
    with pytest.raises(SafetyViolation, match="committed at index 4"):
        c.commit(N2, 3, 4, 3)


def test_checker_log_matching() -> None:
    c = Checker()
    c.log_entries(N1, [Entry(2, 5, EntryKind.NORMAL, b"a"), Entry(2, 6)], previous_term=1)
    with pytest.raises(SafetyViolation, match="different entry"):
        c.log_entries(N2, [Entry(2, 5, EntryKind.NORMAL, b"b")], previous_term=1)
    with pytest.raises(SafetyViolation, match="logs differ before it"):
        c.log_entries(N2, [Entry(2, 5, EntryKind.NORMAL, b"a")], previous_term=2)
    with pytest.raises(SafetyViolation, match="holds an entry of term 4"):
        c.term_bound(N1, 3, 4)


def test_checker_commit_going_backwards() -> None:
    c = Checker()
    c.life(N1, 1, commit=5, applied=4)
    c.life(N1, 2, commit=3, applied=0)  # a new life restarts from its disk
    with pytest.raises(SafetyViolation, match="commit fell"):
        c.life(N1, 2, commit=2, applied=0)
    c.persisted_commit(N1, 5)
    with pytest.raises(SafetyViolation, match="persisted commit fell"):
        c.persisted_commit(N1, 4)


def test_checker_stale_read() -> None:
    c = Checker()
    c.commit(N1, 2, 7, 2)
    c.read_request(N2, b"r1")
    c.read_state(N2, b"r1", 7)
    c.read_request(N3, b"r2")
    with pytest.raises(SafetyViolation, match="read index"):
        c.read_state(N3, b"r2", 6)


def test_checker_acknowledged_write_lost() -> None:
    c = Checker()
    c.ack(client=1, seq=3, index=9, term=2, observer_term=2)
    c.leader(N1, 2, DictLog((1,) * 8))  # same term: not a later leader
    with pytest.raises(SafetyViolation, match="acknowledged"):
        c.leader(N2, 3, DictLog((1,) * 8 + (3,)))


def test_checker_commit_observed_after_a_later_leader_was_elected() -> None:
    c = Checker()
    c.leader(N2, 5, DictLog((1, 1, 1)))
    c.commit(N1, 3, 4, 2)  # observed by a node still in term 3
    c.still_leader(N2, 3, DictLog((1, 1, 1)), 4)  # not a later term
    with pytest.raises(SafetyViolation, match="leader completeness"):
        c.still_leader(N2, 5, DictLog((1, 1, 1)), 4)
