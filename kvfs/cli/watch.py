"""``kvfs watch MOUNTPOINT/PATH --check CMD --reload CMD``: validate and reload on change.

Run on every host that mounts the volume.  The volume's metadata engine is found from the
mount table (the mount's source is its META_URL, or a label with ``KVFS_META_URL`` in the
environment, as for ``kvfs mount``), so the watcher sees changes made on any host.  See
:mod:`kvfs.watch.watcher` for the loop and :mod:`kvfs.watch.record` for what each host
records in the volume (shown by ``kvfs status``).

Exit status: with ``--once``, 0 if the check and the reload passed, 2 if either failed;
1 with ``kvfs: error: ...`` for bad input (a path that is missing or not inside a kvfs
mount, a volume whose engine cannot be shared).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

import trio

from kvfs.cli.mount import META_URL_ENV, is_label, is_local
from kvfs.fuse import mounttab
from kvfs.kv.api import StoreLocked
from kvfs.volume import VolumeError, open_engine, read_format
from kvfs.watch.watcher import WatchConfig, Watcher

EXIT_FAILED = 2


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "watch", help="check and reload a service when a tree changes on any host",
        description="Watch MOUNTPOINT/PATH for changes made on any host; after a quiet "
                    "window run the check and, only if it passes, the reload.  The outcome "
                    "is recorded in the volume (see kvfs status).")
    p.add_argument("path", metavar="MOUNTPOINT/PATH")
    p.add_argument("--check", required=True, metavar="CMD",
                   help="shell command validating the tree; exit 0 means valid")
    p.add_argument("--reload", required=True, metavar="CMD",
                   help="shell command applying it, run only after a passing check")
    p.add_argument("--quiet-ms", type=_positive, default=500.0, metavar="N",
                   help="milliseconds without changes before acting (default 500)")
    p.add_argument("--timeout", type=_positive, default=30.0, metavar="S",
                   help="seconds a check or reload may run before it is killed and counts "
                        "as failed (default 30)")
    p.add_argument("--once", action="store_true",
                   help="check and reload the current state once, then exit")
    p.add_argument("--host", default=socket.gethostname(), metavar="NAME",
                   help="the name this host records under (default: its hostname)")
    p.add_argument("--lease-ttl", type=_positive, default=15.0, metavar="S",
                   help="seconds after which a dead watcher's record disappears (default 15)")
    return p


def locate(path: str) -> tuple[str, mounttab.MountEntry, str]:
    """``(mountpoint, mount entry, path within the volume)`` of the kvfs mount holding
    ``path``; VolumeError if ``path`` is missing or not inside a kvfs mount."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise VolumeError(f"{path}: no such file or directory")
    mp = real
    while (entry := mounttab.find(mp)) is None:
        if mp == "/":
            raise VolumeError(f"{path} is not inside a kvfs mount")
        mp = os.path.dirname(mp)
    if not entry.is_kvfs:
        raise VolumeError(f"{path} is not inside a kvfs mount (it is on {entry.fstype} "
                          f"mounted at {mp})")
    rel = os.path.relpath(real, mp)
    return mp, entry, "/" if rel == "." else "/" + rel


def meta_url(entry: mounttab.MountEntry) -> str:
    """The META_URL of a kvfs mount, from its source; VolumeError if its engine cannot be
    opened by a second process."""
    url = entry.source
    if is_label(url):
        url = os.environ.get(META_URL_ENV, "")
        if not url:
            raise VolumeError(f"the mount at {entry.mountpoint} shows the label "
                              f"{entry.source!r}; set {META_URL_ENV} to its META_URL")
    if is_local(url):
        raise VolumeError(f"the mount at {entry.mountpoint} uses an embedded store, which "
                          f"only its mount can open; watching needs a shared engine "
                          f"(etcd:// or raft://)")
    return url


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    """SIGTERM or SIGINT ends the watch cleanly: its record goes with its revoked lease."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def run(args: argparse.Namespace) -> int:
    mp, entry, vpath = locate(args.path)
    url = meta_url(entry)
    cfg = WatchConfig(root=os.path.realpath(args.path), path=vpath, check=args.check,
                      reload=args.reload, host=args.host, quiet=args.quiet_ms / 1000,
                      timeout=args.timeout, lease_ttl=args.lease_ttl)

    async def go() -> int:
        try:
            kv = await open_engine(url)
        except StoreLocked as e:
            raise VolumeError(f"cannot open the volume of {mp}: {e}") from None
        try:
            if await read_format(kv) is None:
                raise VolumeError(f"{url}: not a formatted kvfs volume")
            watcher = Watcher(kv, cfg)
            if args.once:
                record = await watcher.once()
                print(f"revision {record.revision}: check {record.check}, "
                      f"reload {record.reload}", file=sys.stderr)
                return 0 if record.result == "ok" else EXIT_FAILED
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                await watcher.run()  # returns only when cancelled
            return 0
        finally:
            await kv.aclose()

    return trio.run(go)
