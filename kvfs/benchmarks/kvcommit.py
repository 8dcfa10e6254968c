"""Commit throughput and latency of a metadata engine, through kvfs's own KV seam.

Each of ``clients`` concurrent clients commits, one after another for ``seconds``, a
transaction of the shape a kvfs metadata change has: a compare on a key of its own (its
modification revision is what the client last saw) and a put of a ``value_bytes`` value.
The clients are spread over ``processes`` worker processes, each with its own engine
connection, so that one Python process's CPU does not cap the figure; etcd and kvfs's
Raft store are measured with the same client code, which is what makes their ratio fair.

Reported: commits per second over all clients, and the p50 and p99 latency of one commit
in milliseconds.  The keys live under ``/kvfs-bench/<random>/`` and are deleted afterwards.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass

import trio

from kvfs.kv.api import Compare, Delete, Put, prefix_end


@dataclass(frozen=True)
class CommitFigures:
    """What one run measured."""

    clients: int
    commits: int
    seconds: float
    commits_per_second: float
    p50_ms: float
    p99_ms: float

    def summary(self) -> str:
        return (f"{self.clients:3d} clients: {self.commits_per_second:9.1f} commits/s, "
                f"p50 {self.p50_ms:7.2f} ms, p99 {self.p99_ms:7.2f} ms "
                f"({self.commits} commits in {self.seconds:.1f} s)")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


async def _worker(url: str, prefix: bytes, first_client: int, clients: int, seconds: float,
                  value: bytes) -> list[float]:
    from kvfs.volume import open_engine

    latencies: list[float] = []
    engine = await open_engine(url)
    try:
        async def client(n: int) -> None:
            key = prefix + b"%06d" % n
            seen = 0  # the key's modification revision as this client last wrote it
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                res = await engine.commit([Compare(key, seen)], [Put(key, value)])
                latencies.append(time.perf_counter() - t0)
                if not res.succeeded:
                    raise RuntimeError(f"benchmark key {key!r} changed under the benchmark")
                seen = res.revision

        async with trio.open_nursery() as nursery:
            for n in range(first_client, first_client + clients):
                nursery.start_soon(client, n)
    finally:
        await engine.aclose()
    return latencies


def _run_worker(args: tuple[str, bytes, int, int, float, int]) -> list[float]:
    url, prefix, first, clients, seconds, value_bytes = args
    return trio.run(_worker, url, prefix, first, clients, seconds, b"v" * value_bytes)


async def _cleanup(url: str, prefix: bytes) -> None:
    from kvfs.volume import open_engine

    engine = await open_engine(url)
    try:
        await engine.commit([], [], [Delete(prefix, prefix_end(prefix))])
    finally:
        await engine.aclose()


def run(url: str, *, clients: int, seconds: float = 10.0, value_bytes: int = 256,
        processes: int = 0) -> CommitFigures:
    """Measure ``url``'s engine with ``clients`` concurrent committers for ``seconds``.

    ``processes`` worker processes share the clients (0: one per 16 clients, at least one).
    """
    if clients < 1 or seconds <= 0 or value_bytes < 0:
        raise ValueError("clients must be >= 1, seconds > 0 and value bytes >= 0")
    processes = processes or max(1, min(clients, math.ceil(clients / 16)))
    prefix = b"/kvfs-bench/%s/" % os.urandom(6).hex().encode()
    shares = [clients // processes + (1 if i < clients % processes else 0)
              for i in range(processes)]
    jobs, first = [], 0
    for share in shares:
        jobs.append((url, prefix, first, share, seconds, value_bytes))
        first += share
    t0 = time.perf_counter()
    # spawn, not fork: a worker must not inherit the parent's trio or grpc state.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_run_worker, jobs)
    elapsed = time.perf_counter() - t0
    trio.run(_cleanup, url, prefix)
    latencies = sorted(lat for worker in results for lat in worker)
    # Throughput over the measured window, not the process start-up around it.
    window = min(elapsed, seconds) if latencies else elapsed
    return CommitFigures(clients=clients, commits=len(latencies), seconds=window,
                         commits_per_second=len(latencies) / window,
                         p50_ms=percentile(latencies, 0.50) * 1000,
                         p99_ms=percentile(latencies, 0.99) * 1000)
