"""A network partition of the Raft store: three ``kvfs raft serve`` members, each in a
network namespace of its own on one bridge (``tests/raft_netns.py``), and the leader cut
off from the other two (blackhole routes; the test still reaches every member).

Checked for every partition:

* the old leader steps down within the check-quorum window (bounded here by four
  election timeouts plus 5 s of grace for a loaded machine: ticks are timer-driven), and a
  client talking only to the old leader gets errors -- never an acknowledgement of a write
  it sent after the cut, and every write it saw acknowledged survives;
* the other two elect a new leader of a higher term, which accepts writes;
* no two members claim leadership of one term, and no two members name different leaders
  for one term (every member's status is polled throughout);
* once healed, the old leader follows the new one and catches up: every member's state,
  read through that member alone, hashes the same, and holds every acknowledged write.

``KVFS_RAFT_PARTITIONS`` sets how many partitions one run makes (default 2).  Figures
(time to step down, to the first write on the majority side, to rejoin) are printed; run
with ``-s`` to see them.  Needs root and iproute2 (fails without them).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from raft_cluster import (
    NAMES,
    BridgedCluster,
    RaftCluster,
    converged_digests,
    status,
    wait_leader,
)

from kvfs.kv.api import KVError, Put

PARTITIONS = int(os.environ.get("KVFS_RAFT_PARTITIONS", "2"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BridgedCluster]:
    with BridgedCluster(tmp_path, "test-partition", tick_ms=100, election_ticks=10) as c:
        yield c


@dataclass
class Observed:
    """Every (term, leader) any member reported, and who claimed to lead each term."""

    claims: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    named: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    polls: int = 0


async def poll_statuses(cluster: RaftCluster, seen: Observed) -> None:
    """Ask each member for its status, over and over (cancelled by the test)."""
    engines = {name: cluster.engine(name, timeout=1) for name in cluster.names}
    try:
        while True:
            for name, engine in engines.items():
                try:
                    s = await engine.status()
                except KVError:
                    continue
                seen.polls += 1
                term = int(s["term"])
                if s["role"] == "leader":
                    seen.claims[term].add(name)
                if s["leader"]:
                    seen.named[term].add(int(s["leader"]))
            await trio.sleep(0.05)
    finally:
        for engine in engines.values():
            await engine.aclose()


@dataclass
class Writes:
    acked: dict[bytes, bytes] = field(default_factory=dict)
    unknown: dict[bytes, bytes] = field(default_factory=dict)
    acked_after_cut: list[bytes] = field(default_factory=list)  # invoked after the cut
    errors: list[str] = field(default_factory=list)


async def old_leader_client(cluster: RaftCluster, name: str, tag: bytes, writes: Writes,
                            cut_at: list[float]) -> None:
    """Write through ``name`` alone until cancelled, recording every outcome."""
    engine = cluster.engine(name, timeout=3)
    try:
        i = 0
        while True:
            key, value = b"%s/old/%05d" % (tag, i), b"via the old leader %d" % i
            i += 1
            invoked = trio.current_time()
            writes.unknown[key] = value
            try:
                assert (await engine.commit([], [Put(key, value)])).succeeded
            except KVError as exc:
                writes.errors.append(type(exc).__name__)
                continue
            del writes.unknown[key]
            writes.acked[key] = value
            if cut_at and invoked > cut_at[0]:
                writes.acked_after_cut.append(key)
    finally:
        await engine.aclose()


async def write_some(cluster: RaftCluster, names: tuple[str, ...], tag: bytes, count: int,
                     writes: Writes) -> None:
    engine = cluster.engine(*names, timeout=60)
    try:
        for i in range(count):
            key, value = b"%s/%05d" % (tag, i), b"%s %d" % (tag, i)
            writes.unknown[key] = value
            assert (await engine.commit([], [Put(key, value)])).succeeded
            del writes.unknown[key]
            writes.acked[key] = value
    finally:
        await engine.aclose()


async def test_partitioned_leader_steps_down_and_rejoins(cluster: BridgedCluster) -> None:
    net = cluster.net
    seen = Observed()
    writes = Writes()
    stepdown_bound = 4 * cluster.election_timeout + 5
    async with trio.open_nursery() as background:
        background.start_soon(poll_statuses, cluster, seen)
        await write_some(cluster, NAMES, b"before", 20, writes)
        for n in range(PARTITIONS):
            old, old_term = await wait_leader(cluster)
            others = tuple(name for name in NAMES if name != old)
            tag = b"p%d" % n
            cut_at: list[float] = []
            async with trio.open_nursery() as clients:
                clients.start_soon(old_leader_client, cluster, old, tag, writes, cut_at)
                await trio.sleep(0.5)  # a few writes acknowledged before the cut
                errors_before = len(writes.errors)
                net.isolate(old)
                cut = trio.current_time()
                cut_at.append(cut)
                # The old leader steps down once a majority has been silent for an
                # election timeout (check-quorum).
                with trio.fail_after(stepdown_bound):
                    while True:
                        s = await status(cluster, old)
                        if s is not None and s["role"] != "leader":
                            break
                        await trio.sleep(0.05)
                stepped_down = trio.current_time() - cut
                # The majority elects a leader of a higher term and takes writes.
                await write_some(cluster, others, tag + b"/majority", 1, writes)
                first_write = trio.current_time() - cut
                new, new_term = await wait_leader(cluster, others)
                await write_some(cluster, others, tag + b"/more", 30, writes)
                # The old leader's client is told its writes failed (never that they
                # succeeded) while the cut lasts.
                with trio.fail_after(60):
                    while len(writes.errors) == errors_before:
                        await trio.sleep(0.05)
                clients.cancel_scope.cancel()
            errors = writes.errors[errors_before:]
            assert new_term > old_term, (old, old_term, new, new_term)
            assert not writes.acked_after_cut, \
                f"the cut-off old leader acknowledged {writes.acked_after_cut[:5]}"
            net.heal()
            healed = trio.current_time()
            # The old leader follows the new one (or a later one) and catches up.
            with trio.fail_after(60):
                while True:
                    s = await status(cluster, old)
                    if s is not None and s["role"] == "follower" and s["leader"] \
                            and s["term"] >= new_term:
                        break
                    await trio.sleep(0.05)
            rejoined = trio.current_time() - healed
            digests = await converged_digests(cluster)
            assert all(d.same_state(digests[0]) for d in digests), digests
            print(f"\npartition {n}: {old} (term {old_term}) cut off; it stepped down after "
                  f"{stepped_down:.2f} s; first write on the majority side after "
                  f"{first_write:.2f} s, {new} leads term {new_term}; the old leader's client "
                  f"saw {len(errors)} errors ({', '.join(sorted(set(errors)))}); "
                  f"rejoined {rejoined:.2f} s after the heal; {digests[0].keys} keys, "
                  f"state {digests[0].sha[:12]} on all three")
        background.cancel_scope.cancel()
    engine = cluster.engine(timeout=60)
    try:
        stored = {kv.key: kv.value for kv in (await engine.range(b"", b"\x00")).kvs}
    finally:
        await engine.aclose()
    lost = sorted(k for k, v in writes.acked.items() if stored.get(k) != v)
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    expected = writes.acked | writes.unknown
    assert all(expected.get(k) == v for k, v in stored.items())
    two_leaders = {t: names for t, names in seen.claims.items() if len(names) > 1}
    assert not two_leaders, f"two members led one term: {two_leaders}"
    disputed = {t: ids for t, ids in seen.named.items() if len(ids) > 1}
    assert not disputed, f"members named different leaders for one term: {disputed}"
    print(f"{PARTITIONS} partitions: {len(writes.acked)} writes acknowledged, "
          f"{seen.polls} status answers, leaders by term "
          f"{ {t: sorted(n) for t, n in sorted(seen.claims.items())} }")
