"""Side by side, in one run: three kvfs Raft members against three etcd members.

    python -m kvfs.benchmarks.raftvsetcd [--seconds 10] [--dir DIR] [--mounts]

Starts a three-member etcd cluster (Debian's ``etcd`` binary) and a three-member
``kvfs raft serve`` cluster on 127.0.0.1, with their data directories side by side under
``--dir`` (so both sync to the same disk), and measures both with the same client code
(:mod:`kvfs.benchmarks.kvcommit`): commit throughput and p50/p99 latency with 1 and 64
concurrent clients.  With ``--mounts`` it also formats a volume on each, mounts it, and
runs ``kvfs bench small`` on both mounts.  Prints a table of the figures and the
kvfs/etcd ratios; every process it started is stopped before it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kvfs.benchmarks import kvcommit, smallfiles
from kvfs.benchmarks.launch import free_ports

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
NAMES = ("m1", "m2", "m3")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within 30 s")


class _Processes:
    """The servers this run started; all stopped (TERM, then KILL) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_etcd(procs: _Processes, base: Path) -> str:
    """Three etcd members; returns the etcd:// URL of all three."""
    ports = free_ports(6)
    peer, client = dict(zip(NAMES, ports[:3], strict=True)), dict(zip(NAMES, ports[3:],
                                                                        strict=True))
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in peer.items())
    started = []
    for name in NAMES:
        d = base / f"etcd-{name}"
        d.mkdir(parents=True)
        argv = [ETCD, "--name", name, "--data-dir", str(d / "data"),
                "--listen-client-urls", f"http://127.0.0.1:{client[name]}",
                "--advertise-client-urls", f"http://127.0.0.1:{client[name]}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer[name]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[name]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "kvfs-bench", "--logger", "zap",
                "--log-outputs", str(d / "etcd.log")]
        started.append((procs.start(argv, d / "stdout.log"), client[name], f"etcd {name}"))
    for proc, port, what in started:
        _wait_port(port, proc, what)
    return "etcd://" + ",".join(f"127.0.0.1:{client[n]}" for n in NAMES) + "/bench"


def start_raft(procs: _Processes, base: Path) -> str:
    """Three ``kvfs raft serve`` members; returns the raft:// URL of all three."""
    ports = free_ports(6)
    peer, client = dict(zip(NAMES, ports[:3], strict=True)), dict(zip(NAMES, ports[3:],
                                                                        strict=True))
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in peer.items())
    clients = ",".join(f"{n}=127.0.0.1:{p}" for n, p in client.items())
    started = []
    for name in NAMES:
        d = base / f"raft-{name}"
        argv = [sys.executable, "-m", "kvfs.cli.main", "raft", "serve", "--name", name,
                "--data-dir", str(d), "--listen-peer", f"http://127.0.0.1:{peer[name]}",
                "--listen-client", f"http://127.0.0.1:{client[name]}",
                "--initial-cluster", initial, "--initial-cluster-clients", clients,
                "--initial-cluster-token", "kvfs-bench", "--initial-cluster-state", "new"]
        started.append((procs.start(argv, base / f"raft-{name}.log"), client[name],
                        f"kvfs raft member {name}"))
    for proc, port, what in started:
        _wait_port(port, proc, what)
    return "raft://" + ",".join(f"127.0.0.1:{client[n]}" for n in NAMES) + "/bench"


@contextlib.contextmanager
def _mounted(url: str, mountpoint: Path, log: Path) -> Iterator[Path]:
    """A kvfs volume formatted on ``url`` and mounted (in the foreground process of a
    child) at ``mountpoint`` until the block ends."""
    kvfs = [sys.executable, "-m", "kvfs.cli.main"]
    subprocess.run([*kvfs, "format", url, "bench"], check=True, capture_output=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([*kvfs, "mount", url, str(mountpoint)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mounting {url} failed: see {log}")
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run([*kvfs, "umount", str(mountpoint)], capture_output=True)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvfs.benchmarks.raftvsetcd",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=10.0, help="per commit measurement")
    ap.add_argument("--dir", default="", help="where the data directories go "
                    "(default: a new directory under /var/tmp)")
    ap.add_argument("--clients", default="1,64", help="client counts (default 1,64)")
    ap.add_argument("--mounts", action="store_true", help="also run `bench small` on mounts")
    ap.add_argument("--count", type=int, default=500, help="operations per `bench small` phase")
    args = ap.parse_args(argv)
    if not os.access(ETCD, os.X_OK):
        print(f"error: {ETCD} is missing (apt-get install etcd-server)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="kvfs-raftvsetcd-", dir=args.dir or "/var/tmp"))
    procs = _Processes()
    rows: list[tuple[str, float, float]] = []
    try:
        urls = {"etcd": start_etcd(procs, base), "kvfs raft": start_raft(procs, base)}
        time.sleep(2)  # both clusters elect a leader
        for clients in (int(c) for c in args.clients.split(",")):
            figures = {}
            for name, url in urls.items():
                figures[name] = kvcommit.run(url, clients=clients, seconds=args.seconds)
                print(f"{name:10} {figures[name].summary()}", flush=True)
            k, e = figures["kvfs raft"], figures["etcd"]
            rows.append((f"commits/s, {clients} clients", k.commits_per_second,
                         e.commits_per_second))
            rows.append((f"p50 ms, {clients} clients", k.p50_ms, e.p50_ms))
            rows.append((f"p99 ms, {clients} clients", k.p99_ms, e.p99_ms))
        if args.mounts:
            small = {}
            for name, url in urls.items():
                tag = name.replace(" ", "-")
                with _mounted(url, base / f"mnt-{tag}", base / f"mount-{tag}.log") as mp:
                    small[name] = smallfiles.run(str(mp), count=args.count)
            for phase, value in small["kvfs raft"].items():
                rows.append((f"bench small: {phase}", value, small["etcd"][phase]))
    finally:
        procs.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    print()
    print("| measure | kvfs raft | etcd | kvfs / etcd |")
    print("|---|---|---|---|")
    for what, k_value, e_value in rows:
        ratio = k_value / e_value if e_value else float("nan")
        print(f"| {what} | {k_value:.1f} | {e_value:.1f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
