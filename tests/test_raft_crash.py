"""A whole-cluster crash of the Raft store, as real processes on loopback: three ``kvfs
raft serve`` members take concurrent writes from several clients (each through every
member's endpoint), all three are killed with SIGKILL at the same random moment and
started again; every write a client saw acknowledged must then be there with its value,
and the members must converge to one state, read through each member alone.

The writers keep going across the crash (their in-flight writes are re-sent to the
restarted members under the same session and sequence number, so they are applied at most
once); a write that failed has an unknown outcome, so its key may or may not be there --
but if it is, it holds the value written.

``KVFS_RAFT_CRASHES`` sets the number of crash rounds (default 3; the closing run of the
Raft cluster work uses 20 or more).  ``KVFS_RAFT_SEED`` replays the random moments of a
run (the seed is printed).  Figures (acknowledged writes, the time from the restart to the
first acknowledged write) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from raft_cluster import RaftCluster, converged_digests, loopback_addresses

from kvfs.kv.api import KVError, Put

CRASHES = int(os.environ.get("KVFS_RAFT_CRASHES", "3"))
SEED = int(os.environ.get("KVFS_RAFT_SEED", str(random.randrange(1 << 30))))
WRITERS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftCluster]:
    with RaftCluster(tmp_path, "test-crash", loopback_addresses(), tick_ms=100,
                     election_ticks=10, snapshot_count=300) as c:
        yield c


@dataclass
class Ledger:
    """What the writers were told: acknowledged keys, and keys whose write failed (their
    outcome is unknown), each with the value written."""

    acked: dict[bytes, bytes] = field(default_factory=dict)
    unknown: dict[bytes, bytes] = field(default_factory=dict)
    ack_times: list[float] = field(default_factory=list)  # trio time of each ack
    errors: int = 0


async def writer(cluster: RaftCluster, ledger: Ledger, n: int, round_: int,
                 stop: trio.Event) -> None:
    """Commit unique keys one at a time until ``stop`` is set."""
    engine = cluster.engine(timeout=30)
    try:
        i = 0
        while not stop.is_set():
            key = b"r%03d/w%d/%06d" % (round_, n, i)
            value = b"written by %d in round %d (%d)" % (n, round_, i)
            i += 1
            try:
                result = await engine.commit([], [Put(key, value)])
            except KVError:
                ledger.unknown[key] = value
                ledger.errors += 1
                continue
            assert result.succeeded
            ledger.acked[key] = value
            ledger.ack_times.append(trio.current_time())
    finally:
        await engine.aclose()


async def check_round(cluster: RaftCluster, ledger: Ledger) -> int:
    """Every acknowledged key is there with its value, nothing else is, and the members
    hold one state; returns the number of keys."""
    digests = await converged_digests(cluster)
    assert all(d.same_state(digests[0]) for d in digests), digests
    engine = cluster.engine(timeout=60)
    try:
        result = await engine.range(b"", b"\x00")
    finally:
        await engine.aclose()
    stored = {kv.key: kv.value for kv in result.kvs}
    missing = sorted(k for k in ledger.acked if stored.get(k) != ledger.acked[k])
    assert not missing, f"{len(missing)} acknowledged writes lost or changed, e.g. " \
                        f"{missing[:5]}"
    expected = ledger.acked | ledger.unknown
    stray = sorted(k for k in stored if expected.get(k) != stored[k])
    assert not stray, f"keys nobody wrote (or with another value): {stray[:5]}"
    return len(stored)


async def test_acknowledged_writes_survive_whole_cluster_crashes(cluster: RaftCluster) -> None:
    print(f"\nKVFS_RAFT_SEED={SEED}, {CRASHES} crash rounds")
    rng = random.Random(SEED)
    ledger = Ledger()
    resumed: list[float] = []
    for round_ in range(CRASHES):
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for n in range(WRITERS):
                nursery.start_soon(writer, cluster, ledger, n, round_, stop)
            await trio.sleep(rng.uniform(1.0, 4.0))
            before = len(ledger.acked)
            # All three at the same moment: SIGKILLs back to back.
            await trio.to_thread.run_sync(cluster.kill)
            await trio.sleep(rng.uniform(0.0, 1.0))
            restarted = trio.current_time()
            await trio.to_thread.run_sync(cluster.start)
            # The writers retry through the outage; wait for the first acknowledgement
            # given after the restart (a figure, not an assertion).
            with trio.fail_after(120):
                while not any(t > restarted for t in ledger.ack_times):
                    await trio.sleep(0.02)
            resumed.append(min(t for t in ledger.ack_times if t > restarted) - restarted)
            await trio.sleep(rng.uniform(0.5, 1.5))
            stop.set()
        keys = await check_round(cluster, ledger)
        print(f"round {round_}: {before} writes acknowledged before the crash, "
              f"{len(ledger.acked)} so far, {keys} keys stored, first write "
              f"{resumed[-1]:.2f} s after the restart")
    print(f"{CRASHES} whole-cluster crashes: {len(ledger.acked)} writes acknowledged, "
          f"{len(ledger.unknown)} with unknown outcome ({ledger.errors} errors); first write "
          f"after a restart took median {statistics.median(resumed):.2f} s, max "
          f"{max(resumed):.2f} s")
