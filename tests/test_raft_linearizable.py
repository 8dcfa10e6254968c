"""Linearizability of the Raft store under a nemesis: three ``kvfs raft serve`` members,
each in a network namespace of its own on one bridge (``tests/raft_netns.py``), serve
eight clients (each its own ``raft://`` engine over all three members) that issue
compare-and-set commits on a few overlapping keys, blind writes, deletes, gets and ranges.
Every call is recorded with its invoke and completion time (one trio clock) and what it
returned; a call that failed (the engine gave up after its timeout) has an unknown
outcome.  Meanwhile a nemesis, one fault at a time, kills a member with SIGKILL and starts
it again, pauses one with SIGSTOP/SIGCONT, or cuts one off from the other two (the leader
half of the time).  The history is then checked with ``kvfs.lincheck``.

Three watchers (one starting on each member) follow every change from revision 1 across
the faults (the engine resumes a watch on another member from the revision after the last
one delivered; a watch that gives up is resumed by the test the same way).  Each must
deliver exactly the events of a reference watch read at the end -- in revision order, with
no gap and no duplicate -- and every acknowledged commit's writes must be in that reference
at its revision.

``KVFS_RAFT_NEMESIS_SECONDS`` sets how long clients and nemesis run (default 20; the
closing run of the Raft cluster work uses 60 or more).  ``KVFS_RAFT_SEED`` replays the
clients' and the nemesis's random choices (the seed is printed; the timing of real
processes is not replayed).  A failing history is saved next to the members' logs for
``History.loads``.  Figures (operations, faults, checker result) are printed; run with
``-s``.  Needs root and iproute2 (fails without them).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from raft_cluster import NAMES, BridgedCluster, RaftCluster, status
from raft_netns import BridgedHosts

from kvfs.kv.api import Compare, Delete, EngineUnavailable, KVError, Put
from kvfs.lincheck import (
    Commit,
    CommitOut,
    Get,
    GetOut,
    History,
    Range,
    RangeOut,
    Verdict,
    check,
)
from kvfs.raftkv.client import RaftClientEngine

SECONDS = float(os.environ.get("KVFS_RAFT_NEMESIS_SECONDS", "20"))
SEED = int(os.environ.get("KVFS_RAFT_SEED", str(random.randrange(1 << 30))))
CLIENTS = 8
KEYS = [b"k0", b"k1", b"k2", b"k3"]
# Half the clients give up soon (their calls then have unknown outcomes), half ride out
# most faults.
CLIENT_TIMEOUTS = (2.0, 10.0)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BridgedCluster]:
    # Snapshots every 300 entries: restarted and cut-off members catch up through them.
    with BridgedCluster(tmp_path, "test-lin", tick_ms=100, election_ticks=10,
                        snapshot_count=300) as c:
        yield c


@dataclass
class Run:
    history: History = field(default_factory=History)
    end: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    # Every successful commit: (revision, puts, deletes) for the watch cross-check.
    commits: list[tuple[int, tuple[tuple[bytes, bytes], ...]]] = field(default_factory=list)


async def client(run: Run, engine: RaftClientEngine, n: int, rng: random.Random) -> None:
    """Random calls until the run's end, each recorded in the history."""
    h = run.history
    known: dict[bytes, int] = {}  # mod revision last seen per key (0: absent)
    i = 0
    while trio.current_time() < run.end:
        i += 1
        key = rng.choice(KEYS)
        value = b"c%d-%d" % (n, i)
        r = rng.random()
        if r < 0.25:
            token = h.invoke(n, Get(key), at=trio.current_time())
            try:
                kv = await engine.get(key)
            except KVError:
                h.unknown(token)
                run.outcomes["get failed"] += 1
                continue
            h.ok(token, GetOut(None, 0) if kv is None else
                 GetOut(kv.value, kv.mod_revision, None, kv.create_revision),
                 at=trio.current_time())
            known[key] = 0 if kv is None else kv.mod_revision
            run.outcomes["get"] += 1
            continue
        if r < 0.35:
            token = h.invoke(n, Range(b"", b"\x00"), at=trio.current_time())
            try:
                result = await engine.range(b"", b"\x00")
            except KVError:
                h.unknown(token)
                run.outcomes["range failed"] += 1
                continue
            h.ok(token, RangeOut([(kv.key, kv.value, kv.mod_revision) for kv in result.kvs],
                                 result.revision, result.more), at=trio.current_time())
            known = {k: 0 for k in KEYS} | {kv.key: kv.mod_revision for kv in result.kvs}
            run.outcomes["range"] += 1
            continue
        compares: list[tuple[bytes, int]] = []
        puts: list[tuple[bytes, bytes]] = []
        deletes: list[bytes] = []
        if r < 0.75:  # compare-and-set, sometimes writing a second key too
            compares.append((key, known.get(key, 0)))
            puts.append((key, value))
            if rng.random() < 0.2:
                other = rng.choice([k for k in KEYS if k != key])
                puts.append((other, value + b"+"))
        elif r < 0.9:  # blind write
            puts.append((key, value))
        else:  # compare-and-delete
            compares.append((key, known.get(key, 0)))
            deletes.append(key)
        kind = "cas" if compares else "put"
        token = h.invoke(n, Commit(compares, puts, deletes), at=trio.current_time())
        try:
            res = await engine.commit([Compare(k, m) for k, m in compares],
                                      [Put(k, v) for k, v in puts],
                                      [Delete(k) for k in deletes])
        except KVError:
            h.unknown(token)
            run.outcomes[f"{kind} unknown"] += 1
            continue
        h.ok(token, CommitOut(res.succeeded, res.revision), at=trio.current_time())
        run.outcomes[f"{kind} {'ok' if res.succeeded else 'refused'}"] += 1
        if res.succeeded:
            run.commits.append((res.revision, tuple(puts)))
            for k, _ in puts:
                known[k] = res.revision
            for k in deletes:
                known[k] = 0


async def leader_of(cluster: RaftCluster) -> str | None:
    for name in cluster.names:
        s = await status(cluster, name, timeout=1)
        if s is not None and s["role"] == "leader":
            return name
    return None


async def nemesis(run: Run, cluster: RaftCluster, net: BridgedHosts,
                  rng: random.Random) -> None:
    """One fault at a time until the run's end; every fault is healed before the next."""
    while True:
        await trio.sleep(rng.uniform(0.5, 2.0))
        if trio.current_time() >= run.end:
            return
        kind = rng.choice(["kill", "pause", "partition"])
        leader = await leader_of(cluster)
        target = leader if leader is not None and rng.random() < 0.5 else rng.choice(NAMES)
        hold = rng.uniform(1.0, 3.0)
        run.faults[f"{kind}{' leader' if target == leader else ''}"] += 1
        if kind == "kill":
            await trio.to_thread.run_sync(cluster.kill, target)
            try:
                await trio.sleep(hold)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(cluster.start, target)
        elif kind == "pause":
            cluster.pause(target)
            try:
                await trio.sleep(hold)
            finally:
                cluster.resume(target)
        else:
            net.isolate(target)
            try:
                await trio.sleep(hold)
            finally:
                net.heal()


Event = tuple[int, bytes, bytes | None]  # (mod revision, key, value or None: deleted)


@dataclass
class Watcher:
    events: list[Event] = field(default_factory=list)
    next_revision: int = 1
    failovers: int = 0  # the engine moved to another member (or the test resumed it)


async def watcher(cluster: RaftCluster, w: Watcher, first: str) -> None:
    """Follow every change of the volume from revision 1 until cancelled, starting on
    member ``first``."""
    order = NAMES.index(first)
    engine = cluster.engine(*NAMES[order:], *NAMES[:order], timeout=CLIENT_TIMEOUTS[0])
    try:
        endpoint = engine.current_endpoint
        while True:
            try:
                async for batch in engine.watch(b"", b"\x00", w.next_revision):
                    w.events.extend((e.mod_revision, e.key, e.value) for e in batch.events)
                    w.next_revision = batch.revision + 1
                    if engine.current_endpoint != endpoint:
                        endpoint = engine.current_endpoint
                        w.failovers += 1
            except EngineUnavailable:
                w.failovers += 1  # every member failed for the timeout: start again
    finally:
        await engine.aclose()


async def current_revision(cluster: RaftCluster) -> int:
    engine = cluster.engine(timeout=60)
    try:
        return await engine.current_revision()
    finally:
        await engine.aclose()


async def reference_events(cluster: RaftCluster, revision: int) -> list[Event]:
    """Every event of revisions 1..``revision``, from one watch on the healed cluster."""
    engine = cluster.engine(timeout=60)
    out: list[Event] = []
    try:
        with trio.fail_after(120):
            async for batch in engine.watch(b"", b"\x00", 1):
                out.extend((e.mod_revision, e.key, e.value) for e in batch.events)
                if batch.revision >= revision:
                    return out
    finally:
        await engine.aclose()
    raise AssertionError("the reference watch ended")


def first_difference(got: list[Event], want: list[Event]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"event {i}: got {a}, expected {b}"
    return f"got {len(got)} events, expected {len(want)}"


async def test_linearizable_under_kills_pauses_and_partitions(
        cluster: BridgedCluster, tmp_path: Path) -> None:
    print(f"\nKVFS_RAFT_SEED={SEED}, {SECONDS:g} s of faults")
    rng = random.Random(SEED)
    run = Run()
    # One watcher starting on each member: every kill ends one of their watches.
    watchers = [Watcher() for _ in NAMES]
    engines = [cluster.engine(timeout=CLIENT_TIMEOUTS[n % 2]) for n in range(CLIENTS)]
    try:
        async with trio.open_nursery() as background:
            for w, first in zip(watchers, NAMES, strict=True):
                background.start_soon(watcher, cluster, w, first)
            run.end = trio.current_time() + SECONDS
            async with trio.open_nursery() as nursery:
                nursery.start_soon(nemesis, run, cluster, cluster.net,
                                   random.Random(rng.random()))
                for n, engine in enumerate(engines):
                    nursery.start_soon(client, run, engine, n, random.Random(rng.random()))
            # Healed and quiet: the watchers must catch up with the last revision.
            last = await current_revision(cluster)
            with trio.fail_after(120):
                for w in watchers:
                    while w.next_revision <= last:
                        await trio.sleep(0.05)
            background.cancel_scope.cancel()
    finally:
        for engine in engines:
            await engine.aclose()

    reference = await reference_events(cluster, last)
    assert [e[0] for e in reference] == sorted(e[0] for e in reference)
    for i, w in enumerate(watchers):
        assert w.events == reference, f"watcher {i}: {first_difference(w.events, reference)}"
    by_revision: dict[int, set[tuple[bytes, bytes | None]]] = {}
    for rev, key, value in reference:
        by_revision.setdefault(rev, set()).add((key, value))
    for rev, puts in run.commits:
        assert set(puts) <= by_revision.get(rev, set()), \
            f"commit at revision {rev} wrote {puts}; the watch saw {by_revision.get(rev)}"

    started = time.monotonic()
    result = check(run.history, timeout=600, clock=time.monotonic)
    took = time.monotonic() - started
    ops = len(run.history)
    print(f"{ops} operations by {CLIENTS} clients ({dict(sorted(run.outcomes.items()))}); "
          f"faults {dict(sorted(run.faults.items()))}; {len(reference)} watch events, "
          f"watch failovers {[w.failovers for w in watchers]}; checker: "
          f"{result.verdict.name} in {took:.1f} s")
    if result.verdict is not Verdict.OK:
        saved = cluster.base / "history.txt"
        saved.write_text(run.history.dumps())
        pytest.fail(f"the history is {result.verdict.name} (saved to {saved}):\n"
                    f"{result.explain()[:6000]}", pytrace=False)
    assert sum(run.faults.values()) > 0
