"""``kvfs stats MOUNTPOINT``: a live view of one mount, like ``juicefs stats``.

Every interval it asks the mount for its metrics samples (the control socket's ``metrics``
request, so it works with the HTTP endpoint off) and shows what changed since the last
ones: FUSE operations per second and their mean latency by operation, engine calls per
second and their mean latency by call, commits, conflicts and retries, block cache and
metadata cache hit ratios, the coherence watch's mean lag, and bytes read and written per
second.  On a terminal the table is redrawn in place; otherwise each interval's table is
printed after the last one, and ``--json`` prints one JSON object per interval (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from kvfs.cli.history import ask
from kvfs.errors import VolumeError
from kvfs.mountpath import locate

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("stats", help="live operation rates and latencies of a mount",
                       description="Show a mount's FUSE operations, engine calls, cache hit "
                                   "ratios, watch lag and bytes in and out, every interval.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="a kvfs mount (or a path in one)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between two views (default 1)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="stop after N views (default: until interrupted)")
    p.add_argument("--json", action="store_true", help="one JSON object per interval")
    return p


def snapshot(mountpoint: str) -> Samples:
    samples = ask(mountpoint, {"op": "metrics"})["samples"]
    return {(name, frozenset(labels.items())): float(value)
            for name, labels, value in samples}


def _by_label(s: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in s.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def _one(s: Samples, name: str) -> float:
    return sum(v for (n, _), v in s.items() if n == name)


def _ratio(hits: float, misses: float) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def _timed(before: Samples, after: Samples, family: str, label: str, seconds: float
           ) -> dict[str, dict[str, float]]:
    """``label value -> {per_s, mean_ms}`` of a histogram's observations between two
    snapshots (only those with any)."""
    c0, c1 = (_by_label(x, family + "_count", label) for x in (before, after))
    s0, s1 = (_by_label(x, family + "_sum", label) for x in (before, after))
    out = {}
    for key in sorted(c1):
        n = c1[key] - c0.get(key, 0.0)
        if n > 0:
            out[key] = {"per_s": n / seconds,
                        "mean_ms": 1000 * (s1[key] - s0.get(key, 0.0)) / n}
    return out


def delta(before: Samples, after: Samples, seconds: float) -> dict[str, Any]:
    """What happened between two snapshots ``seconds`` apart (rates per second)."""
    def rate(name: str) -> float:
        return (_one(after, name) - _one(before, name)) / seconds

    def change(name: str) -> float:
        return _one(after, name) - _one(before, name)

    lag_n = change("kvfs_watch_lag_seconds_count")
    retries = change("kvfs_engine_retries_total")
    return {
        "interval": seconds,
        "fuse": _timed(before, after, "kvfs_fuse_op_duration_seconds", "op", seconds),
        "fuse_errors_per_s": rate("kvfs_fuse_errors_total"),
        "engine": _timed(before, after, "kvfs_engine_request_duration_seconds", "call",
                         seconds),
        "commits_per_s": rate("kvfs_engine_commits_total"),
        "conflicts_per_s": rate("kvfs_engine_conflicts_total"),
        "retries_per_s": retries / seconds,
        "block_cache_hit_ratio": _ratio(change("kvfs_block_cache_hits_total"),
                                        change("kvfs_block_cache_misses_total")),
        "metadata_cache_hit_ratio": _ratio(change("kvfs_metadata_cache_hits_total"),
                                           change("kvfs_metadata_cache_misses_total")),
        "watch_lag_ms": (1000 * change("kvfs_watch_lag_seconds_sum") / lag_n
                         if lag_n else None),
        "watch_events_per_s": rate("kvfs_watch_events_total"),
        "read_bytes_per_s": rate("kvfs_read_bytes_total"),
        "written_bytes_per_s": rate("kvfs_written_bytes_total"),
        "session_up": bool(_one(after, "kvfs_session_up")),
        "engine_reachable": bool(_one(after, "kvfs_engine_reachable")),
    }


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}/s" if unit == "B" else f"{n:.1f} {unit}/s"
        n /= 1024
    raise AssertionError("unreachable")


def _pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}%"


def render(mountpoint: str, d: dict[str, Any]) -> str:
    lines = [f"kvfs stats {mountpoint}  (last {d['interval']:.1f} s; "
             f"session {'up' if d['session_up'] else 'DOWN'}, engine "
             f"{'reachable' if d['engine_reachable'] else 'UNREACHABLE'})",
             f"  read {_bytes(d['read_bytes_per_s'])}, written "
             f"{_bytes(d['written_bytes_per_s'])}; block cache hits "
             f"{_pct(d['block_cache_hit_ratio'])}, metadata cache hits "
             f"{_pct(d['metadata_cache_hit_ratio'])}",
             f"  commits {d['commits_per_s']:.1f}/s, conflicts {d['conflicts_per_s']:.1f}/s, "
             f"retries {d['retries_per_s']:.1f}/s; watch lag "
             f"{'-' if d['watch_lag_ms'] is None else format(d['watch_lag_ms'], '.2f') + ' ms'},"
             f" {d['watch_events_per_s']:.1f} events/s; FUSE errors "
             f"{d['fuse_errors_per_s']:.1f}/s"]
    for title, rows in (("FUSE OPERATION", d["fuse"]), ("ENGINE CALL", d["engine"])):
        lines.append(f"  {title:18} {'PER S':>10} {'MEAN MS':>10}")
        if not rows:
            lines.append("  (none)")
        for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["per_s"]):
            lines.append(f"  {name:18} {r['per_s']:10.1f} {r['mean_ms']:10.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise VolumeError(f"invalid --interval {args.interval:g} (a positive number of "
                          "seconds)")
    if args.count < 0:
        raise VolumeError(f"invalid --count {args.count} (0: until interrupted)")
    if not os.path.isdir(args.mountpoint):
        raise VolumeError(f"{args.mountpoint}: not a directory")
    mountpoint = locate(args.mountpoint)[0]
    tty = sys.stdout.isatty() and not args.json
    before, at = snapshot(mountpoint), time.monotonic()
    shown = 0
    while args.count == 0 or shown < args.count:
        time.sleep(max(0.0, at + args.interval - time.monotonic()))
        after, now = snapshot(mountpoint), time.monotonic()
        d = delta(before, after, now - at)
        if args.json:
            print(json.dumps({"time": time.time(), **d}), flush=True)
        else:
            # On a terminal: home the cursor and clear the screen, then draw.
            print(("\033[H\033[J" if tty else ("\n" if shown else "")) +
                  render(mountpoint, d), flush=True)
        before, at = after, now
        shown += 1
    return 0
