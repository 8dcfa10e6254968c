"""Fault-injection scenarios: three real mounts of one etcd volume under a nemesis.

Mounts ``a`` and ``b`` reach etcd on 127.0.0.1; mount ``c``'s daemon runs in a network
namespace of its own and reaches etcd over a veth pair, so it can be partitioned
(tests/nemesis.py).  On every mount run the workloads of tests/workloads.py: random
operations on names all mounts share, an append-and-fsync logger, and a reader of files
read before the run.  Meanwhile the nemesis injects one kind of fault per scenario (or all
kinds, ``mixed``): etcd killed with -9 and restarted, etcd paused and continued, mount
``c`` partitioned from etcd, a mount daemon paused past its session lease TTL; and, on a
three-member cluster, one member at a time killed or paused (``cluster-minority``), which
the mounts must not notice at all: no EIO is allowed there.

Checks after the faults stop:

* every workload makes progress again on every mount (the same logger descriptor included);
* no EIO outside an outage window that disturbs that mount (plus ``GRACE`` seconds to
  reconnect), no ESTALE from the daemon, no wrong byte from a cached file, no error at
  all from the cached-file reader, not even during an outage.  A paused daemon is not an
  outage; only a request it had in flight when it stopped may fail, since its deadline
  passes during the pause (counted and printed apart).  A rename may get ESTALE from the
  kernel itself, when a directory another mount moved turns up inside it while the
  kernel still holds the old dentry (counted and printed apart; tests/workloads.py);
* every acknowledged log record is in its file, with no torn or duplicated record;
* once every file is closed, no session holds an unlinked file (``SS`` keys);
* the trees seen through the three mounts are identical once the watch has settled
  (names, types, modes, link counts, sizes, content hashes, symlink targets, xattrs);
* every daemon unmounts cleanly, and ``kvfs fsck`` finds nothing.

The report (printed; shown by pytest on failure or with ``-s``) gives the seed, the faults
injected, operation and error counts, and each unexpected error with its mount, operation,
time and the nearest fault window.

Short by default (``KVFS_FAULT_SECONDS``, 15 s of faults per scenario), for CI.  The long
run, on demand::

    KVFS_FAULT_SECONDS=600 .venv/bin/pytest -q -s tests/test_faults.py -k mixed

``KVFS_FAULT_SEED=N`` repeats a run's random choices (operations, faults, their lengths);
the interleaving with the daemons of course differs.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from etcd_cluster import EtcdProcesses, Member, etcd_procs, unique_prefix
from mounting import Mount, kvfs
from nemesis import (
    EtcdKill,
    EtcdPause,
    EtcdRestart,
    Fault,
    MountPause,
    Nemesis,
    NetNamespace,
    Partition,
    Timeline,
)
from workloads import (
    AppendLogger,
    CachedReader,
    RandomOps,
    Worker,
    check_log,
    judge,
    make_read_set,
    tree,
    tree_diff,
)

from kvfs.kv.api import prefix_end
from kvfs.meta import keys
from kvfs.volume import open_engine

pytestmark = pytest.mark.mount

__all__ = ["etcd_procs"]  # fixtures used by this module

SECONDS = float(os.environ.get("KVFS_FAULT_SECONDS", "15"))
SEED = int(os.environ.get("KVFS_FAULT_SEED", "0")) or random.randrange(1, 2**31)
TTL = 3  # session lease TTL of the mounts (seconds), so a pause outlives it quickly
TIMEOUT = 3  # the URL's timeout=: how long an unreachable etcd is retried before EIO
GRACE = 2.0  # seconds after a heal in which clients may still be reconnecting
MOUNTS = ("a", "b", "c")  # c runs in its own network namespace
# A short history, so compaction (and watches falling behind it) happens during the run.
OPTIONS = f"session_ttl={TTL},compact_retain=30"


@dataclass
class Rig:
    url: str
    members: list[Member]
    netns: NetNamespace
    mounts: dict[str, Mount]


@contextmanager
def rig(procs: EtcdProcesses, base: Path, tag: str, size: int) -> Iterator[Rig]:
    """Fresh etcd (one member, or a cluster of ``size``), a formatted volume and the three
    mounts; all torn down after."""
    netns = NetNamespace()
    try:
        # Blocks live in etcd: a low snapshot count keeps its memory and restarts in check,
        # as docs/etcd.md advises for such volumes.
        hosts, extra = (netns.host_addr,), ["--snapshot-count", "5000"]
        members = (procs.cluster(size, client_hosts=hosts, extra=extra) if size > 1 else
                   [procs.member(f"faults-{tag}", client_hosts=hosts, extra=extra)])
        try:
            prefix = unique_prefix(tag)
            query = f"{prefix}?timeout={TIMEOUT}"
            url = f"etcd://{','.join(m.endpoint for m in members)}/{query}"
            url_c = f"etcd://{','.join(m.endpoint_on(netns.host_addr) for m in members)}/{query}"
            kvfs("format", url, tag)
            mounts: dict[str, Mount] = {}
            try:
                for name in MOUNTS:
                    if name == "c":
                        mounts[name] = Mount(url_c, base / name, OPTIONS, wrap=netns.wrap)
                    else:
                        mounts[name] = Mount(url, base / name, OPTIONS)
                yield Rig(url, members, netns, mounts)
            finally:
                for m in mounts.values():
                    m.cleanup()
        finally:
            for member in members:
                member.kill()
    finally:
        netns.delete()


def _member_faults(r: Rig) -> list[Fault]:
    # A minority of a cluster lost or stalled: the mounts must not notice.
    return ([EtcdKill(m, outage=False) for m in r.members]
            + [EtcdPause(m, outage=False) for m in r.members])


# name -> (etcd members, the faults the nemesis draws from)
SCENARIOS: dict[str, tuple[int, Callable[[Rig], list[Fault]]]] = {
    "etcd-kill": (1, lambda r: [EtcdKill(r.members[0])]),
    "etcd-pause": (1, lambda r: [EtcdPause(r.members[0])]),
    "partition": (1, lambda r: [Partition("c", r.netns)]),
    "mount-pause": (1, lambda r: [MountPause(n, m, TTL) for n, m in r.mounts.items()]),
    "cluster-minority": (3, _member_faults),
    "mixed": (1, lambda r: [EtcdKill(r.members[0]), EtcdPause(r.members[0]),
                            EtcdRestart(r.members[0]), Partition("c", r.netns),
                            *(MountPause(n, m, TTL) for n, m in r.mounts.items())]),
}


def holds_left(url: str) -> list[tuple[int, int]]:
    """(session, inode) of every ``SS`` hold in the volume."""

    async def go() -> list[tuple[int, int]]:
        kv = await open_engine(url)
        try:
            res = await kv.range(keys.SUSTAINED_PREFIX, prefix_end(keys.SUSTAINED_PREFIX))
            return [(keys.read_u64(x.key, 2), keys.read_u64(x.key, 10)) for x in res.kvs]
        finally:
            await kv.aclose()

    return trio.run(go)


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` passes (a hang bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_workloads(r: Rig, rng: random.Random) -> tuple[list[Worker], list[AppendLogger]]:
    """The read set, written on ``a`` and read on every mount; then every workload on every
    mount, not started yet."""
    a = r.mounts["a"].mountpoint
    for d in ("ops", "log", "ro"):
        os.mkdir(a / d)
    files = make_read_set(a / "ro", rng)
    for m in r.mounts.values():
        ro = m.mountpoint / "ro"

        def listed(ro: Path = ro) -> bool:
            return sorted(os.listdir(ro)) == sorted(files)

        assert wait_for(listed, 30), f"the read set did not show on {m.mountpoint}"
    workers: list[Worker] = []
    loggers: list[AppendLogger] = []
    for i, (name, m) in enumerate(r.mounts.items()):
        logger = AppendLogger(name, m.mountpoint / "log", SEED + 10 * i + 1)
        loggers.append(logger)
        workers += [RandomOps(name, m.mountpoint / "ops", SEED + 10 * i), logger,
                    CachedReader(name, m.mountpoint / "ro", SEED + 10 * i + 2, files)]
    return workers, loggers


def stop_workloads(workers: list[Worker], loggers: list[AppendLogger], healed: float,
                   t0: float) -> list[str]:
    """Wait until every workload works again since ``healed`` (the loggers on their old
    descriptors), then stop them all and close the loggers' descriptors."""
    problems = []
    if not wait_for(lambda: all(w.successes_since(healed) >= 5 for w in workers), 120):
        problems += [f"mount {w.mount}: {w.workload} made no progress after the faults "
                     f"(in {w.current[0] if w.current else '-'} since "
                     f"+{(w.current[1] if w.current else t0) - t0:.1f}s)"
                     for w in workers if w.successes_since(healed) < 5]
    for w in workers:
        w.stopping.set()
    for w in workers:
        w.join(120)
        if w.is_alive():
            problems.append(f"mount {w.mount}: {w.workload} hung in {w.current}")
    for logger in loggers:
        failed = logger.close()
        if failed is not None:
            logger.ops.append(failed)
    return problems


def check_volume(r: Rig, loggers: list[AppendLogger]) -> tuple[list[str], int]:
    """Holds, logs, trees on every mount, clean unmounts, fsck; and the tree's size."""
    problems = []
    # Every file is closed now, so no session may still hold an unlinked one.
    if not wait_for(lambda: not holds_left(r.url), 30):
        problems.append(f"holds (SS keys) left after every file was closed: "
                        f"{holds_left(r.url)[:10]}")
    for logger in loggers:
        problems += check_log(logger.mount, logger.path.read_bytes(), logger.acked)

    trees: dict[str, dict[str, tuple[object, ...]]] = {}
    walk_errors: dict[str, str] = {}

    def agree() -> bool:
        # A mount still catching up on its watch (after a partition, say) may list a name
        # that is gone by the time the walk stats it: not agreeing yet, like a diff.
        walk_errors.clear()
        for n, m in r.mounts.items():
            try:
                trees[n] = tree(m.mountpoint)
            except OSError as e:
                walk_errors[n] = f"{e!r}"
        return not walk_errors and trees["a"] == trees["b"] == trees["c"]

    if not wait_for(agree, 60):
        problems += [f"walking the tree of {n}: {e}" for n, e in walk_errors.items()]
        for n in ("b", "c"):
            if "a" in trees and n in trees:
                problems += [f"trees of a and {n} differ: {d}"
                             for d in tree_diff(trees["a"], trees[n])]
    for m in r.mounts.values():
        try:
            m.unmount()
        except AssertionError as e:
            problems.append(f"unmount of {m.mountpoint}: {e}")
    res = kvfs("fsck", r.url, check=False)
    if res.returncode:
        problems.append(f"fsck: {res.stdout}{res.stderr}")
    return problems, len(trees.get("a", {}))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_faults(scenario: str, etcd_procs: EtcdProcesses, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\n[{scenario}] seed {SEED} (KVFS_FAULT_SEED={SEED} repeats the choices), "
          f"{SECONDS:g} s of faults")
    size, faults = SCENARIOS[scenario]
    with rig(etcd_procs, tmp_path, scenario.replace("-", ""), size) as r:
        workers, loggers = start_workloads(r, rng)
        timeline = Timeline()
        nemesis = Nemesis(faults(r), timeline, rng)
        for w in workers:
            w.start()
        nemesis.start()
        try:
            time.sleep(SECONDS)
        finally:
            try:
                nemesis.stop()
            except AssertionError:
                for window in timeline.windows:
                    print(f"[{scenario}] fault {window.describe(timeline.t0)}")
                raise
        problems = stop_workloads(workers, loggers, time.monotonic(), timeline.t0)
        verdict = judge(workers, timeline, GRACE)
        problems += verdict.unexpected
        more, entries = check_volume(r, loggers)
        problems += more

    acked = sum(len(lg.acked) for lg in loggers)
    print(f"[{scenario}] faults injected: {timeline.counts()}; {verdict.ops} operations, "
          f"{acked} log records acknowledged, {entries} entries in the tree; EIO in outage "
          f"windows: {verdict.excused}; EIO in flight across a daemon stall: "
          f"{len(verdict.stalled)}; ESTALE (the kernel's, see tests/workloads.py): "
          f"{len(verdict.kernel_stale)} in {verdict.stale_episodes} episodes; "
          f"unexpected: {len(verdict.unexpected)}")
    print(f"[{scenario}] failed operations: {dict(sorted(verdict.failed_ops.items()))}")
    for p in verdict.stalled[:5]:
        print(f"[{scenario}] stalled: {p}")
    for p in verdict.kernel_stale[:5]:
        print(f"[{scenario}] ESTALE: {p}")
    for p in problems[:40]:
        print(f"[{scenario}] PROBLEM {p}")
    assert not problems, (f"{len(problems)} problems (seed {SEED}), first: "
                          + "\n".join(problems[:15]))
