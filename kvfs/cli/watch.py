"""``kvfs watch MOUNTPOINT/PATH --check CMD --reload CMD``: validate and reload on change.

Or ``kvfs watch --config FILE``: several trees (:mod:`kvfs.watch.config`), one
:class:`~kvfs.watch.watcher.Watcher` each, run concurrently by one process (trees on
different volumes each get their volume's engine, opened once).

Run on every host that mounts the volume.  The volume's metadata engine is found from the
mount table (the mount's source is its META_URL, or a label with ``KVFS_META_URL`` in the
environment, as for ``kvfs mount``), so the watcher sees changes made on any host.  See
:mod:`kvfs.watch.watcher` for the loop and :mod:`kvfs.watch.record` for what each host
records in the volume (shown by ``kvfs status``).

Exit status: with ``--once``, 0 if the check and the reload passed (for every tree), 2 if
either failed; 1 with ``kvfs: error: ...`` for bad input (a path that is missing or not
inside a kvfs mount, a volume whose engine cannot be shared, a bad config file, both a
path and ``--config`` or neither).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

import trio

from kvfs.kv.api import KVEngine, StoreLocked
from kvfs.mountpath import locate, meta_url
from kvfs.volume import VolumeError, open_engine, read_format
from kvfs.watch import config
from kvfs.watch.record import WatchRecord
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
    p.add_argument("path", metavar="MOUNTPOINT/PATH", nargs="?")
    p.add_argument("--check", metavar="CMD",
                   help="shell command validating the tree; exit 0 means valid")
    p.add_argument("--reload", metavar="CMD",
                   help="shell command applying it, run only after a passing check")
    p.add_argument("--config", metavar="FILE",
                   help="TOML file of [[watch]] entries (path, check, reload, and optional "
                        "quiet_ms, timeout), instead of MOUNTPOINT/PATH, --check and "
                        "--reload; the other flags give defaults for what it leaves out")
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


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    """SIGTERM or SIGINT ends the watch cleanly: its record goes with its revoked lease."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def _tree(path: str, check: str, reload: str, host: str, quiet_ms: float, timeout: float,
          lease_ttl: float) -> tuple[str, WatchConfig]:
    """``(META_URL, config)`` of one watched tree; VolumeError for a bad path."""
    _, entry, vpath = locate(path)
    return meta_url(entry), WatchConfig(
        root=os.path.realpath(path), path=vpath, check=check, reload=reload, host=host,
        quiet=quiet_ms / 1000, timeout=timeout, lease_ttl=lease_ttl)


def _trees(args: argparse.Namespace) -> list[tuple[str, WatchConfig]]:
    """The trees to watch, from the command line or the config file."""
    if args.config is None:
        if args.path is None:
            raise VolumeError("give MOUNTPOINT/PATH with --check and --reload, or --config "
                              "FILE")
        if args.check is None or args.reload is None:
            raise VolumeError("--check and --reload are both needed with MOUNTPOINT/PATH")
        return [_tree(args.path, args.check, args.reload, args.host, args.quiet_ms,
                      args.timeout, args.lease_ttl)]
    if args.path is not None or args.check is not None or args.reload is not None:
        raise VolumeError("--config FILE replaces MOUNTPOINT/PATH, --check and --reload; "
                          "give one or the other")
    wf = config.load(args.config, config.Defaults(args.host, args.lease_ttl, args.quiet_ms,
                                                  args.timeout))
    trees: list[tuple[str, WatchConfig]] = []
    for n, e in enumerate(wf.entries, 1):
        where = f"{args.config}: [[watch]] entry {n} ({e.path})"
        try:
            tree = _tree(e.path, e.check, e.reload, wf.host, e.quiet_ms, e.timeout,
                         wf.lease_ttl)
        except VolumeError as err:
            raise config.ConfigError(f"{where}: {err}") from None
        if any(t[1].root == tree[1].root for t in trees):
            raise config.ConfigError(f"{where}: {tree[1].root} is watched twice")
        trees.append(tree)
    return trees


def run(args: argparse.Namespace) -> int:
    trees = _trees(args)

    async def go() -> int:
        engines: dict[str, KVEngine] = {}
        try:
            for url, cfg in trees:
                if url in engines:
                    continue
                try:
                    engines[url] = kv = await open_engine(url)
                except StoreLocked as e:
                    raise VolumeError(f"cannot open the volume of {cfg.root}: {e}") from None
                if await read_format(kv) is None:
                    raise VolumeError(f"{url}: not a formatted kvfs volume")
            watchers = [Watcher(engines[url], cfg) for url, cfg in trees]
            if args.once:
                records: list[WatchRecord] = []

                async def once(w: Watcher) -> None:
                    record = await w.once()
                    records.append(record)
                    where = f"{w.cfg.root}: " if args.config else ""
                    print(f"{where}revision {record.revision}: check {record.check}, "
                          f"reload {record.reload}", file=sys.stderr)

                async with trio.open_nursery() as nursery:
                    for w in watchers:
                        nursery.start_soon(once, w)
                return 0 if all(r.result == "ok" for r in records) else EXIT_FAILED
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                for w in watchers:
                    nursery.start_soon(w.run)  # each returns only when cancelled
            return 0
        finally:
            for kv in engines.values():
                await kv.aclose()

    return trio.run(go)
