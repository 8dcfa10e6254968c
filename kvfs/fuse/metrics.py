"""A mount's Prometheus metrics: what it counts, and the loopback endpoint serving them.

What a mount records, and where:

* every FUSE request through the handlers' error wrapper in :mod:`kvfs.fuse.ops`
  (:class:`FuseStats`: count and latency by operation, error replies by operation and
  errno, bytes read and written);
* every engine call through :class:`MeteredEngine`, the mount's engine wrapped once below
  everything else (latency and errors by call, commits, failed compares, the session
  lease's renewals, and the delay of the coherence watch: how long after this mount's own
  commit returned the watch delivered it);
* transactions run again, by the transaction function and reason, through
  :data:`kvfs.kv.txn.retry_observer`;
* and, read only when scraped: the hit counters of the block cache, the disk block cache and
  the read hints, blocks read ahead, block store errors, whether the metadata is served
  offline, the usage counters and the free space ``statfs`` reports, and the volume's
  name, UUID and engine.

Recording is plain arithmetic on the trio thread -- a FUSE request costs a clock read, a
dict lookup and a bisect, and allocates nothing once its operation has been seen -- so the
hot paths stay cheap (about a fifth of what a prometheus_client ``Histogram.observe`` with
its lock costs).  prometheus_client comes in at scrape time only: :class:`_Collector` turns
the figures into metric families of a registry private to the mount (never the global
default registry).  Scrapes run on the trio thread too (the HTTP server is trio's, from
:mod:`kvfs.raftkv.httpserver`), so nothing needs a lock.

``-o metrics=HOST:PORT`` chooses the endpoint (default :data:`DEFAULT_METRICS`; ``off`` for
none).  A port already taken moves the endpoint up to :data:`PORT_TRIES` ports up, so
several mounts of one host each get one; the port used is logged.  If none is free, a
given address refuses the mount and the default one only logs a warning.  Names follow
Prometheus conventions: the ``kvfs_`` prefix, base units (seconds, bytes), ``_total`` on
counters.  docs/operations.md ("Metrics") lists them all.
"""

from __future__ import annotations

import errno
import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    KeyValue,
    KVEngine,
    Put,
    RangeResult,
    WatchBatch,
)
from kvfs.kv.delegating import DelegatingEngine
from kvfs.objstore.diskcache import CachedStore
from kvfs.raftkv.httpserver import parse_address, serve_http
from kvfs.vfs.fs import NOMINAL_CAPACITY

if TYPE_CHECKING:
    from kvfs.volume import Volume

log = logging.getLogger("kvfs.metrics")

DEFAULT_METRICS = "127.0.0.1:9567"
# Ports tried after a taken one: the given port and up to this many above it.
PORT_TRIES = 20
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _exponential(start: float, count: int) -> tuple[float, ...]:
    return tuple(start * 2 ** i for i in range(count))


# Histogram buckets (upper bounds, seconds).  A FUSE request answered from caches takes
# 10-100 microseconds in the daemon; an engine round trip to etcd about a millisecond.
FUSE_BUCKETS = _exponential(0.00001, 20)       # 10 us .. 5.2 s
ENGINE_BUCKETS = _exponential(0.0001, 17)      # 100 us .. 6.6 s
WATCH_BUCKETS = _exponential(0.001, 16)        # 1 ms .. 33 s


class Timings:
    """Observations of one histogram: a count per bucket (the last one: above every
    bound), their sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as prometheus_client wants."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((floatToGoString(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class FuseStats:
    """What the FUSE handlers record (see :func:`kvfs.fuse.ops._errors`)."""

    def __init__(self) -> None:
        self.ops: dict[str, Timings] = {}
        self.errors: dict[tuple[str, int], int] = {}
        self.read_bytes = 0
        self.written_bytes = 0

    def ended(self, op: str, seconds: float, failed: int) -> None:
        """Request ``op`` took ``seconds`` and was answered with errno ``failed`` (0: it
        succeeded)."""
        timings = self.ops.get(op)
        if timings is None:
            timings = self.ops[op] = Timings(FUSE_BUCKETS)
        timings.observe(seconds)
        if failed:
            key = (op, failed)
            self.errors[key] = self.errors.get(key, 0) + 1


class EngineStats:
    """What :class:`MeteredEngine` and the transaction retry hook record."""

    # Commits awaiting their watch event, to time the watch by (bounded: commits outside
    # the watched keys never see one and are dropped once the watch has passed them).
    PENDING_LIMIT = 10_000

    def __init__(self) -> None:
        self.calls: dict[str, Timings] = {}
        self.errors: dict[str, int] = {}
        self.commits = 0
        self.conflicts = 0
        self.retries: dict[tuple[str, str], int] = {}
        self._op_names: dict[str, str] = {}
        self.watch_lag = Timings(WATCH_BUCKETS)
        self.watch_events = 0
        self.watching = 0  # watches open now
        self._pending: deque[tuple[int, float]] = deque()
        self._pending_at: dict[int, float] = {}
        # The session lease: when a grant or keep-alive last succeeded, and whether a
        # keep-alive found it gone (or it was revoked) since.
        self.lease_alive_at: float | None = None
        self.lease_lost = False

    def timings(self, call: str) -> Timings:
        timings = self.calls.get(call)
        if timings is None:
            timings = self.calls[call] = Timings(ENGINE_BUCKETS)
        return timings

    def failed(self, call: str) -> None:
        self.errors[call] = self.errors.get(call, 0) + 1

    def retried(self, fn: Callable[..., Any], reason: str) -> None:
        """:data:`kvfs.kv.txn.retry_observer`: ``fn`` runs again because of ``reason``.

        The operation is named by where the transaction function was defined
        (``Metadata.rename`` for a ``fn`` local to ``Metadata.rename``)."""
        qualname = getattr(fn, "__qualname__", type(fn).__name__)
        op = self._op_names.get(qualname)
        if op is None:
            op = self._op_names[qualname] = qualname.split(".<locals>", 1)[0]
        key = (op, reason)
        self.retries[key] = self.retries.get(key, 0) + 1

    def committed(self, revision: int) -> None:
        self.commits += 1
        if self.watching:
            now = time.perf_counter()
            self._pending.append((revision, now))
            self._pending_at[revision] = now
            if len(self._pending) > self.PENDING_LIMIT:
                self._pending_at.pop(self._pending.popleft()[0], None)

    def delivered(self, batch: WatchBatch) -> None:
        """A watch delivered ``batch``: time this mount's commits in it, and forget the
        ones at or below its revision that it did not hold (outside the watched keys).

        A commit whose answer arrives after its own watch event is not timed."""
        self.watch_events += len(batch.events)
        if not self._pending_at:
            return
        now = time.perf_counter()
        for ev in batch.events:
            at = self._pending_at.pop(ev.mod_revision, None)
            if at is not None:
                self.watch_lag.observe(now - at)
        while self._pending and self._pending[0][0] <= batch.revision:
            self._pending_at.pop(self._pending.popleft()[0], None)


class MeteredEngine(DelegatingEngine):
    """Delegates everything to ``inner``, recording each call into ``stats``."""

    def __init__(self, inner: KVEngine, stats: EngineStats) -> None:
        super().__init__(inner)
        self.stats = stats
        self._get = stats.timings("get")
        self._get_many = stats.timings("get_many")
        self._range = stats.timings("range")
        self._commit = stats.timings("commit")

    async def get(self, key: bytes) -> KeyValue | None:
        start = time.perf_counter()
        try:
            return await self.inner.get(key)
        except Exception:
            self.stats.failed("get")
            raise
        finally:
            self._get.observe(time.perf_counter() - start)

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        start = time.perf_counter()
        try:
            return await self.inner.get_many(keys)
        except Exception:
            self.stats.failed("get_many")
            raise
        finally:
            self._get_many.observe(time.perf_counter() - start)

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        began = time.perf_counter()
        try:
            return await self.inner.range(start, end, limit=limit, keys_only=keys_only)
        except Exception:
            self.stats.failed("range")
            raise
        finally:
            self._range.observe(time.perf_counter() - began)

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        start = time.perf_counter()
        try:
            res = await self.inner.commit(compares, puts, deletes)
        except Exception:
            self.stats.failed("commit")
            raise
        finally:
            self._commit.observe(time.perf_counter() - start)
        if res.succeeded:
            self.stats.committed(res.revision)
        else:
            self.stats.conflicts += 1
        return res

    def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        return _ObservedWatch(self.inner.watch(start, end, start_revision), self.stats)

    async def current_revision(self) -> int:
        return await self._timed("current_revision", self.inner.current_revision())

    async def lease_grant(self, ttl: float) -> int:
        lease = await self._timed("lease_grant", self.inner.lease_grant(ttl))
        self.stats.lease_alive_at, self.stats.lease_lost = time.monotonic(), False
        return lease

    async def lease_keepalive(self, lease: int) -> bool:
        alive = await self._timed("lease_keepalive", self.inner.lease_keepalive(lease))
        if alive:
            self.stats.lease_alive_at = time.monotonic()
        else:
            self.stats.lease_lost = True
        return alive

    async def lease_revoke(self, lease: int) -> None:
        await self._timed("lease_revoke", self.inner.lease_revoke(lease))
        self.stats.lease_lost = True

    async def compact(self, revision: int) -> None:
        await self._timed("compact", self.inner.compact(revision))

    async def _timed(self, call: str, request: Any) -> Any:
        start = time.perf_counter()
        try:
            return await request
        except Exception:
            self.stats.failed(call)
            raise
        finally:
            self.stats.timings(call).observe(time.perf_counter() - start)


class _ObservedWatch:
    """A watch's batches, each reported to the stats as it passes (an iterator, not a
    generator, so closing and finalizing it is exactly the inner watch's)."""

    def __init__(self, inner: AsyncIterator[WatchBatch], stats: EngineStats) -> None:
        self._inner = inner
        self._stats = stats
        self._open = False

    def __aiter__(self) -> _ObservedWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        if not self._open:
            self._open = True
            self._stats.watching += 1
        try:
            batch = await self._inner.__anext__()
        except BaseException:
            self._stats.watching -= 1
            self._open = False
            raise
        self._stats.delivered(batch)
        return batch

    async def aclose(self) -> None:
        if self._open:
            self._stats.watching -= 1
            self._open = False
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def engine_kind(url: str) -> str:
    """The ``engine`` label of a META_URL: embedded, etcd, raft or memory."""
    if url.startswith("etcd://"):
        return "etcd"
    if url.startswith("raft://"):
        return "raft"
    if url.startswith("mem://"):
        return "memory"
    return "embedded"


def parse_option(value: str) -> str | None:
    """The endpoint of ``-o metrics=VALUE`` (None for ``off``); ValueError with a one-line
    message for anything but ``HOST:PORT`` or ``off``."""
    if value == "off":
        return None
    parse_address(value, "option metrics")
    return value


class MountMetrics:
    """One mount's metrics: the recorders, the registry, the HTTP endpoint."""

    def __init__(self, url: str) -> None:
        self.engine_kind = engine_kind(url)
        self.fuse = FuseStats()
        self.engine = EngineStats()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.volume: Volume | None = None
        self.session_ttl = 0.0
        self.listeners: list[trio.SocketListener] | None = None

    def meter(self, kv: KVEngine) -> MeteredEngine:
        """``kv``, wrapped so its calls are recorded: the mount's engine under everything
        else (volume, session, watch), opened once."""
        return MeteredEngine(kv, self.engine)

    def attach(self, volume: Volume, session_ttl: float) -> None:
        """The volume whose caches, usage and format the scrape reads; the session lease's
        TTL, past which a lease not renewed counts as down."""
        self.volume = volume
        self.session_ttl = session_ttl

    async def listen(self, address: str, *, given: bool) -> bool:
        """Bind the endpoint at ``address`` (``HOST:PORT``), or the first free port of the
        :data:`PORT_TRIES` above it; True once bound.  If nothing could be bound: a
        ``given`` address raises OSError with a one-line message, the default one logs a
        warning and returns False (the mount goes on without metrics)."""
        host, port = parse_address(address, "option metrics")
        last = port if port == 0 else min(port + PORT_TRIES, 65535)
        failure: OSError | None = None
        for candidate in range(port, last + 1):
            try:
                self.listeners = await trio.open_tcp_listeners(candidate, host=host)
            except OSError as exc:
                failure = exc
                if exc.errno == errno.EADDRINUSE:
                    continue
                break
            bound = self.listeners[0].socket.getsockname()[1]
            moved = f" ({address} was taken)" if port and bound != port else ""
            log.info("metrics on http://%s/metrics%s", _join(host, bound), moved)
            return True
        assert failure is not None
        why = failure.strerror or str(failure)
        if failure.errno == errno.EADDRINUSE and port:
            why = f"ports {port} to {last} are taken"
        if given:
            raise OSError(f"option metrics={address}: cannot listen ({why}); choose another "
                          f"HOST:PORT, or metrics=off")
        log.warning("no metrics endpoint: cannot listen on %s (%s); choose one with "
                    "-o metrics=HOST:PORT, or turn it off with -o metrics=off", address, why)
        return False

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve ``/metrics`` on the bound endpoint until cancelled; started with the
        port (0, returning at once, when nothing is bound)."""
        if self.listeners is None:
            task_status.started(0)
            return
        try:
            await serve_http(self.listeners, {"/metrics": self._scrape},
                             task_status=task_status)
        finally:
            for listener in self.listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    def _scrape(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, self.exposition()

    def exposition(self) -> bytes:
        """Every metric of the mount in the Prometheus text format."""
        return generate_latest(self.registry)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


class _Collector:
    """Builds the metric families from the recorders at scrape time."""

    def __init__(self, metrics: MountMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._fuse()
        yield from self._engine()
        volume = self.m.volume
        if volume is not None:
            yield from self._volume(volume)

    def _fuse(self) -> Iterator[Metric]:
        fuse = self.m.fuse
        ops = sorted(fuse.ops.items())
        total = CounterMetricFamily("kvfs_fuse_ops", "FUSE requests answered, by operation.",
                                    labels=["op"])
        duration = HistogramMetricFamily(
            "kvfs_fuse_op_duration_seconds",
            "Time to answer a FUSE request, by operation.", labels=["op"])
        for op, timings in ops:
            total.add_metric([op], timings.count)
            duration.add_metric([op], timings.buckets(), timings.sum)
        yield total
        yield duration
        errors = CounterMetricFamily(
            "kvfs_fuse_errors", "FUSE requests answered with an error, by operation and "
            "errno.", labels=["op", "errno"])
        for (op, code), n in sorted(fuse.errors.items()):
            errors.add_metric([op, _errno_name(code)], n)
        yield errors
        yield CounterMetricFamily("kvfs_read_bytes", "Bytes read through FUSE.",
                                  value=fuse.read_bytes)
        yield CounterMetricFamily("kvfs_written_bytes", "Bytes written through FUSE.",
                                  value=fuse.written_bytes)

    def _engine(self) -> Iterator[Metric]:
        engine = self.m.engine
        duration = HistogramMetricFamily(
            "kvfs_engine_request_duration_seconds",
            "Time of a metadata engine call (a round trip on a remote engine), by call.",
            labels=["call"])
        for call, timings in sorted(engine.calls.items()):
            duration.add_metric([call], timings.buckets(), timings.sum)
        yield duration
        errors = CounterMetricFamily(
            "kvfs_engine_request_errors", "Metadata engine calls that failed (unreachable, "
            "full, refused), by call.", labels=["call"])
        for call, n in sorted(engine.errors.items()):
            errors.add_metric([call], n)
        yield errors
        yield CounterMetricFamily("kvfs_engine_commits",
                                  "Transactions committed to the metadata engine.",
                                  value=engine.commits)
        yield CounterMetricFamily(
            "kvfs_engine_conflicts", "Commits refused because a key read had changed (a "
            "failed compare; the transaction is retried).", value=engine.conflicts)
        retries = CounterMetricFamily(
            "kvfs_engine_retries", "Transactions run again, by operation (where the "
            "transaction is defined) and reason (conflict, retry: reads that did not fit "
            "together, cache: an error met on records from the cache, checked against "
            "the engine).",
            labels=["op", "reason"])
        for (op, reason), n in sorted(engine.retries.items()):
            retries.add_metric([op, reason], n)
        yield retries
        lag = HistogramMetricFamily(
            "kvfs_watch_lag_seconds", "Time from this mount's commit returning to the "
            "coherence watch delivering it (shared engines only).",
            buckets=engine.watch_lag.buckets(), sum_value=engine.watch_lag.sum)
        yield lag
        yield CounterMetricFamily("kvfs_watch_events",
                                  "Changes delivered by the coherence watch.",
                                  value=engine.watch_events)
        alive_at = engine.lease_alive_at
        up = (not engine.lease_lost and alive_at is not None
              and time.monotonic() - alive_at < self.m.session_ttl)
        yield GaugeMetricFamily("kvfs_session_up", "1 while the mount's session lease is "
                                "known alive (renewed within its TTL), else 0.",
                                value=int(up))

    def _volume(self, volume: Volume) -> Iterator[Metric]:
        slices, meta = volume.slices, volume.meta
        yield CounterMetricFamily("kvfs_block_cache_hits",
                                  "Block reads answered by the block cache.",
                                  value=slices.cache_hits)
        yield CounterMetricFamily("kvfs_block_cache_misses",
                                  "Block reads that went to the block store.",
                                  value=slices.cache_misses)
        yield CounterMetricFamily("kvfs_block_store_errors",
                                  "Block store reads, writes and deletes that failed.",
                                  value=slices.store_errors)
        yield CounterMetricFamily("kvfs_block_readahead",
                                  "Blocks fetched ahead of sequential readers.",
                                  value=slices.prefetched)
        if isinstance(volume.store, CachedStore):
            disk = volume.store
            yield CounterMetricFamily("kvfs_disk_cache_hits",
                                      "Block fetches answered by the disk block cache.",
                                      value=disk.hits)
            yield CounterMetricFamily("kvfs_disk_cache_misses",
                                      "Block fetches the disk block cache sent to the store.",
                                      value=disk.misses)
            yield CounterMetricFamily("kvfs_disk_cache_corrupt",
                                      "Disk cache files that failed their checksum "
                                      "(deleted, and the block fetched again).",
                                      value=disk.corrupt)
            yield GaugeMetricFamily("kvfs_disk_cache_bytes",
                                    "Bytes held by the disk block cache.",
                                    value=disk.cached_bytes)
            yield GaugeMetricFamily("kvfs_disk_cache_capacity_bytes",
                                    "The disk block cache's bound (cache_size).",
                                    value=disk.capacity)
        cache = volume.cache
        yield CounterMetricFamily("kvfs_metadata_cache_hits",
                                  "Metadata reads the mount's record cache answered.",
                                  value=cache.cache.hits)
        yield CounterMetricFamily("kvfs_metadata_cache_misses",
                                  "Metadata reads the record cache could not answer.",
                                  value=cache.cache.misses)
        yield GaugeMetricFamily("kvfs_metadata_cache_bytes",
                                "Bytes held by the record cache (its bound: 64 MiB).",
                                value=cache.cache.size_bytes)
        yield GaugeMetricFamily("kvfs_metadata_cache_entries",
                                "Records (values and known absences) the cache holds.",
                                value=len(cache.cache))
        yield GaugeMetricFamily("kvfs_metadata_cache_answering", "1 while the record cache "
                                "may answer reads (its watch keeps up), else 0.",
                                value=int(cache.answering()))
        yield GaugeMetricFamily("kvfs_engine_reachable", "1 while the metadata engine "
                                "answers, 0 while cached metadata is served offline.",
                                value=int(not cache.offline))
        used = meta.usage.used_space
        yield GaugeMetricFamily("kvfs_used_bytes", "Bytes of file data the volume holds "
                                "(its usage counters, as df shows).", value=used)
        yield GaugeMetricFamily("kvfs_used_inodes", "Inodes the volume holds.",
                                value=meta.usage.used_inodes)
        try:
            free = volume.free_space()
        except OSError:
            free = None  # the storage cannot be asked now: leave the figure out
        else:
            if free is None:  # as statfs: a nominal capacity that fills as files grow
                free = max(0, NOMINAL_CAPACITY - used)
        if free is not None:
            yield GaugeMetricFamily("kvfs_free_bytes", "Bytes the volume can still take, "
                                    "as df shows.", value=free)
        info = GaugeMetricFamily("kvfs_volume_info", "The mounted volume (always 1).",
                                 labels=["name", "uuid", "engine"])
        info.add_metric([volume.fmt.name, volume.fmt.uuid, self.m.engine_kind], 1)
        yield info
