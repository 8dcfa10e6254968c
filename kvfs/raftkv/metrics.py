"""A Raft store member's health and Prometheus metrics.

The node and the disk report what happens to an observer passed to them
(:class:`RaftObserver`, whose methods do nothing, by default -- so the core and every test
that builds a node without metrics is unaffected): each synced disk write, each snapshot
saved, each leader change, each proposal's start and end.  :class:`RaftMetrics` is the
observer ``kvfs raft serve`` uses; it keeps counters and histograms, and
:meth:`RaftMetrics.exposition` writes them, with gauges read from the node and the
transport at scrape time, in the Prometheus text format (version 0.0.4).
:func:`health` is etcd's ``/health`` for one member.

``kvfs raft serve --listen-metrics HOST:PORT`` (default ``127.0.0.1:7381``, next to the
usual client and peer ports 7379 and 7380; ``off`` for none) serves, over plain HTTP:

``GET /health``
    200 ``{"health": "true"}`` when the member knows a leader and has applied its commit
    index up to :data:`HEALTH_MAX_APPLY_LAG` entries; else 503
    ``{"health": "false", "reason": ...}``.
``GET /metrics``
    the Prometheus text format:

    ==============================================  ========  ==============================
    ``kvfs_raft_wal_fsync_duration_seconds``        histogram each disk save that synced
    ``kvfs_raft_snapshot_save_duration_seconds``    histogram each snapshot made durable
    ``kvfs_raft_commit_duration_seconds``           histogram client command: proposed to
                                                              applied here
    ``kvfs_raft_leader_changes_seen_total``         counter   new leaders learned of
    ``kvfs_raft_has_leader``, ``..._is_leader``     gauge     0 or 1
    ``kvfs_raft_proposals_pending``                 gauge     client commands in flight here
    ``kvfs_raft_proposals_failed_total``            counter   gave up (no leader in time, ...)
    ``kvfs_raft_proposals_refused_total``           counter   refused by the space quota
    ``kvfs_raft_proposals_committed``, ``_applied`` gauge     commit / applied index (etcd's
                                                              proposals_*_total)
    ``kvfs_raft_term``                              gauge     current term
    ``kvfs_raft_commit_index``, ``..._applied_index`` gauge   log indexes
    ``kvfs_raft_state_size_bytes``                  gauge     keys and values held
    ``kvfs_raft_quota_bytes``                       gauge     this member's ``--quota-bytes``
    ``kvfs_raft_peer_messages_sent_total``          counter   per ``peer`` (hex id)
    ``kvfs_raft_peer_messages_dropped_total``       counter   per ``peer``
    ``kvfs_raft_peer_failures_total``               counter   per ``peer``: failed dials, broken
                                                              connections
    ``kvfs_raft_peer_messages_received_total``      counter   from all peers
    ==============================================  ========  ==============================

Metric names follow Prometheus conventions: the ``kvfs_raft_`` prefix, base units
(seconds, bytes), ``_total`` on counters only.  The disk reports from a worker thread while
the trio thread scrapes, so every recording takes a lock.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from kvfs.kv.api import NoSpace
from kvfs.raft import Role
from kvfs.raftkv.httpserver import Route, parse_address, serve_http

if TYPE_CHECKING:
    from kvfs.raftkv.node import RaftNode
    from kvfs.raftkv.transport import PeerTransport

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ``kvfs raft serve`` defaults: the health and metrics port next to the usual client (7379)
# and peer (7380) ports, on loopback; and etcd's default backend quota.
DEFAULT_LISTEN_METRICS = "127.0.0.1:7381"
DEFAULT_QUOTA_BYTES = 2 << 30

# How far the applied index may trail the commit index on a healthy member.
HEALTH_MAX_APPLY_LAG = 1000


class RaftObserver:
    """What a node and its disk report.  This base reports to nobody; see RaftMetrics."""

    def wal_synced(self, seconds: float) -> None:
        """A disk save wrote and fsync'd its records in ``seconds``."""

    def snapshot_saved(self, seconds: float) -> None:
        """A snapshot of the state machine was made durable in ``seconds``."""

    def leader_changed(self) -> None:
        """This member learned of a new leader (another one than it knew last)."""

    def proposal_started(self) -> None:
        """A client's command is being proposed through this member."""

    def proposal_ended(self, seconds: float, error: BaseException | None) -> None:
        """That command returned (``error`` None: applied here, ``seconds`` after it
        started) or gave up with ``error``."""


class Histogram:
    """Cumulative buckets, a sum and a count (a Prometheus histogram)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def samples(self, name: str) -> list[str]:
        lines = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            running += n
            lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_number(self.sum)}")
        lines.append(f"{name}_count {self.count}")
        return lines


def _exponential(start: float, count: int) -> list[float]:
    return [start * 2 ** i for i in range(count)]


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class RaftMetrics(RaftObserver):
    """Counters and histograms of one member, and their exposition with the gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.wal_fsync = Histogram(_exponential(0.0005, 15))        # 0.5 ms .. 8 s
        self.snapshot_save = Histogram(_exponential(0.005, 14))     # 5 ms .. 41 s
        self.commit = Histogram(_exponential(0.0005, 17))           # 0.5 ms .. 33 s
        self.leader_changes = 0
        self.proposals_pending = 0
        self.proposals_failed = 0
        self.proposals_refused = 0

    # -- the observer ------------------------------------------------------------------------

    def wal_synced(self, seconds: float) -> None:
        with self._lock:
            self.wal_fsync.observe(seconds)

    def snapshot_saved(self, seconds: float) -> None:
        with self._lock:
            self.snapshot_save.observe(seconds)

    def leader_changed(self) -> None:
        with self._lock:
            self.leader_changes += 1

    def proposal_started(self) -> None:
        with self._lock:
            self.proposals_pending += 1

    def proposal_ended(self, seconds: float, error: BaseException | None) -> None:
        with self._lock:
            self.proposals_pending -= 1
            if error is None:
                self.commit.observe(seconds)
            elif isinstance(error, NoSpace):
                self.proposals_refused += 1  # applied, and refused by the quota
            elif isinstance(error, Exception):
                self.proposals_failed += 1  # not cancellation: the caller went away

    # -- exposition --------------------------------------------------------------------------

    def exposition(self, node: RaftNode, transport: PeerTransport | None,
                   quota_bytes: int) -> str:
        """Every metric of the member in the Prometheus text format."""
        status = node.rawnode.status()
        out = _Writer()
        with self._lock:
            out.histogram("kvfs_raft_wal_fsync_duration_seconds",
                          "Time of each disk save that wrote and fsync'd log records.",
                          self.wal_fsync)
            out.histogram("kvfs_raft_snapshot_save_duration_seconds",
                          "Time to make a snapshot of the state machine durable; the count "
                          "is the number of snapshots taken.", self.snapshot_save)
            out.histogram("kvfs_raft_commit_duration_seconds",
                          "Time from proposing a client's command to applying it here.",
                          self.commit)
            out.scalar("kvfs_raft_leader_changes_seen_total", "counter",
                       "Leader changes this member has seen.", self.leader_changes)
            out.scalar("kvfs_raft_proposals_pending", "gauge",
                       "Client commands proposed through this member, not yet answered.",
                       self.proposals_pending)
            out.scalar("kvfs_raft_proposals_failed_total", "counter",
                       "Client commands proposed through this member that gave up "
                       "(no leader in time, member stopped, superseded).",
                       self.proposals_failed)
            out.scalar("kvfs_raft_proposals_refused_total", "counter",
                       "Client commands proposed through this member that the space quota "
                       "refused.", self.proposals_refused)
        out.scalar("kvfs_raft_has_leader", "gauge",
                   "1 if this member knows a leader, else 0.", int(node.leader != 0))
        out.scalar("kvfs_raft_is_leader", "gauge",
                   "1 if this member is the leader, else 0.", int(node.role is Role.LEADER))
        out.scalar("kvfs_raft_term", "gauge", "The member's current term.",
                   status.hard_state.term)
        out.scalar("kvfs_raft_commit_index", "gauge", "The highest log index known committed.",
                   status.hard_state.commit)
        out.scalar("kvfs_raft_applied_index", "gauge",
                   "The highest log index applied to the state machine.", node.kv.applied_index)
        out.scalar("kvfs_raft_proposals_committed", "gauge",
                   "Entries committed (as etcd's proposals_committed_total: the commit "
                   "index).", status.hard_state.commit)
        out.scalar("kvfs_raft_proposals_applied", "gauge",
                   "Entries applied (as etcd's proposals_applied_total: the applied index).",
                   node.kv.applied_index)
        out.scalar("kvfs_raft_state_size_bytes", "gauge",
                   "Keys and values held by the state machine: what the quota limits.",
                   node.kv.size_bytes)
        out.scalar("kvfs_raft_quota_bytes", "gauge",
                   "The space quota this member proposes writes under (0: none).", quota_bytes)
        if transport is not None:
            peers = sorted(transport.peers)
            stats = [(f"{int(peer):x}", transport.peer_stats(peer)) for peer in peers]
            out.labelled("kvfs_raft_peer_messages_sent_total", "counter",
                         "Raft messages written to a peer's connection.",
                         ((peer, s.sent) for peer, s in stats))
            out.labelled("kvfs_raft_peer_messages_dropped_total", "counter",
                         "Raft messages to a peer dropped (queue full, peer unreachable, "
                         "frame too large).", ((peer, s.dropped) for peer, s in stats))
            out.labelled("kvfs_raft_peer_failures_total", "counter",
                         "Dials to a peer that failed, connections to it that broke.",
                         ((peer, s.failures) for peer, s in stats))
            out.scalar("kvfs_raft_peer_messages_received_total", "counter",
                       "Raft messages from peers delivered to this member.",
                       transport.stats.received)
        return out.text()


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _head(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def scalar(self, name: str, kind: str, help_: str, value: float) -> None:
        self._head(name, kind, help_)
        self.lines.append(f"{name} {_number(value)}")

    def labelled(self, name: str, kind: str, help_: str,
                 values: Iterable[tuple[str, float]]) -> None:
        self._head(name, kind, help_)
        for peer, value in values:
            self.lines.append(f'{name}{{peer="{peer}"}} {_number(value)}')

    def histogram(self, name: str, help_: str, histogram: Histogram) -> None:
        self._head(name, "histogram", help_)
        self.lines.extend(histogram.samples(name))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def health(node: RaftNode) -> str | None:
    """Why this member is unhealthy, or None when it is healthy: it knows a leader and has
    applied its commit index up to :data:`HEALTH_MAX_APPLY_LAG` entries."""
    if node.leader == 0:
        return "no leader known"
    commit = node.rawnode.status().hard_state.commit
    lag = commit - node.kv.applied_index
    if lag > HEALTH_MAX_APPLY_LAG:
        return (f"applied index {node.kv.applied_index} trails the commit index {commit} by "
                f"more than {HEALTH_MAX_APPLY_LAG}")
    return None


def routes(metrics: RaftMetrics, node: RaftNode, transport: PeerTransport | None,
           quota_bytes: int) -> dict[str, Route]:
    """``/health`` (etcd's shape: 200 ``{"health": "true"}``, else 503 with a reason) and
    ``/metrics``."""
    def get_health() -> tuple[int, str, bytes]:
        reason = health(node)
        answer = {"health": "true"} if reason is None else {"health": "false", "reason": reason}
        return (200 if reason is None else 503, "application/json",
                json.dumps(answer).encode() + b"\n")

    def get_metrics() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, metrics.exposition(node, transport, quota_bytes).encode()

    return {"/health": get_health, "/metrics": get_metrics}


@dataclass(frozen=True, slots=True)
class MetricsPort:
    """The health and metrics port, bound (``listeners``) or given up (``failure``)."""

    address: str
    listeners: list[trio.SocketListener] | None
    failure: str | None = None


async def open_metrics_port(address: str | None, *, optional: bool) -> MetricsPort | None:
    """Listen on the health and metrics port ``address`` (``HOST:PORT``; None: no port).
    If that fails, an ``optional`` address (the default one, not asked for) is given up --
    :func:`serve_metrics` says so -- and any other raises OSError with a one-line message
    naming the flag.  Called before the member starts, so a busy port refuses it before it
    joins its cluster; nothing is logged until the member runs."""
    if address is None:
        return None
    host, port = parse_address(address, "--listen-metrics")
    try:
        return MetricsPort(address, await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        if not optional:
            raise OSError(f"--listen-metrics {address}: {exc.strerror or exc}") from None
        return MetricsPort(address, None, str(exc.strerror or exc))


async def serve_metrics(port: MetricsPort, metrics: RaftMetrics, node: RaftNode,
                        transport: PeerTransport | None, quota_bytes: int) -> None:
    """Serve ``/health`` and ``/metrics`` on ``port`` (from :func:`open_metrics_port`)
    until cancelled, or log why there is no such port."""
    if port.listeners is None:
        log.warning("no health and metrics port: cannot listen on %s (%s); choose one with "
                    "--listen-metrics HOST:PORT, or turn it off with --listen-metrics off",
                    port.address, port.failure)
        return
    host, _ = parse_address(port.address, "--listen-metrics")
    log.info("health and metrics on http://%s:%d (/health, /metrics)", host,
             port.listeners[0].socket.getsockname()[1])
    await serve_http(port.listeners, routes(metrics, node, transport, quota_bytes))
