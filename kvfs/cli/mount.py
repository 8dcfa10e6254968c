"""``kvfs mount META_URL MOUNTPOINT``: serve a volume over FUSE.

Foreground by default.  With ``-d``/``--background`` the command forks a daemon and exits 0
only once the mount is live, or 1 with the daemon's one-line error -- what mount(8) and
fstab need.  All checks (mountpoint, format, store lock) happen before anything is mounted.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import time

import trio

from kvfs.fuse.mount import MountError, MountOptions, check_mountpoint, serve
from kvfs.volume import format_volume, open_engine, open_volume

READY_TIMEOUT = 120.0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("mount", help="mount a volume",
                       description="Mount a volume over FUSE (foreground by default).")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-d", "--background", action="store_true",
                   help="run as a daemon; return once the mount is live")
    p.add_argument("-o", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options: allow_other, ro, attr_timeout=S, entry_timeout=S, "
                        "orphan_grace=S, session_ttl=S, compact_retain=S")
    p.add_argument("--log", metavar="FILE", help="log file of a background mount")
    return p


async def _mount(url: str, mp: str, opts: MountOptions, ready: object) -> None:
    if url.startswith("mem://"):
        kv = await open_engine(url)
        await format_volume(kv, "mem")
        volume = await open_volume(url, kv=kv)
    else:
        volume = await open_volume(url)
    await serve(volume, mp, url, opts, ready)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    opts = MountOptions.parse(args.o)
    mp = check_mountpoint(args.mountpoint, nonempty=opts.nonempty)
    if not args.background:
        trio.run(_mount, args.meta_url, mp, opts, None)
        return 0
    return _daemonize(args, mp, opts)


def _daemonize(args: argparse.Namespace, mp: str, opts: MountOptions) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return _await_ready(r, pid)
    os.close(r)
    os.setsid()
    _redirect_output(args.log)

    def ready() -> None:
        os.write(w, b"ok\n")
        os.close(w)

    code = 0
    try:
        trio.run(_mount, args.meta_url, mp, opts, ready)
    except Exception as e:  # noqa: BLE001 - reported to the waiting parent, then logged
        try:
            os.write(w, (str(e).splitlines() or [type(e).__name__])[0].encode() + b"\n")
        except OSError:
            logging.getLogger("kvfs.mount").exception("mount daemon failed")
        code = 1
    os._exit(code)


def _redirect_output(log_path: str | None) -> None:
    if log_path is None:
        log_path = "/var/log/kvfs.log" if os.access("/var/log", os.W_OK) else os.devnull
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def _await_ready(r: int, pid: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MountError(f"mount daemon (pid {pid}) not ready after {READY_TIMEOUT:.0f} s")
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 4096)
        if not chunk:
            break
        buf += chunk
    os.close(r)
    line = buf.decode(errors="replace").strip()
    if line == "ok":
        return 0
    raise MountError(line or f"mount daemon (pid {pid}) exited before the mount was ready")
