"""``kvfs mount META_URL MOUNTPOINT``: serve a volume over FUSE.

Foreground by default.  With ``-d``/``--background`` the command forks a daemon and exits 0
only once the mount is live, or 1 with the daemon's one-line error -- what mount(8) and
fstab need (:mod:`kvfs.cli.mounthelper` is the mount(8) helper built on this).  All checks
(options, credentials, mountpoint, format, store lock) happen before anything is mounted.

Where the META_URL comes from, so that no secret is ever in argv, an fstab line or the
mount table:

* ``-o credentials=FILE``: a file of ``KEY=VALUE`` lines (the format of systemd's
  ``EnvironmentFile=``), owned by the user mounting and closed to group and others.  Every
  variable goes into the mount's environment -- ``KVFS_ETCD_PASSWORD`` for instance.  If it
  sets ``KVFS_META_URL``, that is the volume, and the SOURCE argument must be a *label*
  (letters, digits, ``-_.@+\\``, no ``/`` or ``:``) which is all the mount table shows.
* otherwise, a label SOURCE with ``KVFS_META_URL`` in the environment (a systemd unit's
  ``Environment=``/``EnvironmentFile=``) means the same;
* otherwise SOURCE is the META_URL itself (which never holds a password).

In the foreground under systemd (``Type=notify``), readiness is reported through
``$NOTIFY_SOCKET`` once the mount is live, so units ordered after it start only then.

``--update-fstab`` mounts in the background and, once the mount is live, writes its line
into /etc/fstab (or ``--fstab FILE``) with :mod:`kvfs.cli.fstab`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import select
import socket
import stat
import time
from collections.abc import Callable

import trio

from kvfs.cli.fstab import fstab_line, update_fstab
from kvfs.fuse.metrics import MountMetrics
from kvfs.fuse.mount import MountError, MountOptions, check_mountpoint, serve
from kvfs.mountpath import META_URL_ENV, is_label, is_local
from kvfs.objstore.diskcache import CacheSettings
from kvfs.volume import format_volume, open_engine, open_volume

READY_TIMEOUT = 120.0
DEFAULT_FSTAB = "/etc/fstab"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

log = logging.getLogger("kvfs.mount")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("mount", help="mount a volume",
                       description="Mount a volume over FUSE (foreground by default).")
    p.add_argument("meta_url", metavar="META_URL|LABEL",
                   help="the volume, or a label when KVFS_META_URL comes from "
                        "-o credentials=FILE or the environment")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-d", "--background", action="store_true",
                   help="run as a daemon; return once the mount is live")
    p.add_argument("-o", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options: allow_other, ro, nonempty, attr_timeout=S, "
                        "entry_timeout=S, orphan_grace=S, session_ttl=S, compact_retain=S, "
                        "metrics=HOST:PORT|off (default 127.0.0.1:9567), "
                        "cache_dir=DIR (default /var/cache/kvfs), cache_size=MiB (default "
                        "1024, 0: off), credentials=FILE, log=FILE")
    p.add_argument("--log", metavar="FILE", help="log file of a background mount")
    p.add_argument("--update-fstab", action="store_true",
                   help="mount in the background, then write this mount's line into fstab "
                        "(replacing any line for the same mountpoint)")
    p.add_argument("--fstab", default=DEFAULT_FSTAB, metavar="FILE",
                   help=f"the fstab file --update-fstab writes (default {DEFAULT_FSTAB})")
    return p


def read_credentials(path: str) -> dict[str, str]:
    """The variables of a credentials file; MountError if it is missing, readable or
    writable by others, or malformed (one line naming the problem)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise MountError(f"cannot read credentials file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise MountError(f"credentials file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise MountError(f"credentials file {path} must be owned by uid {os.geteuid()} "
                             f"(it is owned by uid {st.st_uid})")
        if st.st_mode & 0o077:
            raise MountError(f"credentials file {path} must not be accessible to group or "
                             f"others (mode {st.st_mode & 0o777:04o}); run: chmod 600 {path}")
        text = f.read().decode(errors="replace")
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _ENV_NAME.match(key):
            raise MountError(f"credentials file {path}, line {n}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def resolve_source(source: str, opts: MountOptions, *,
                   label_needs_url: bool) -> tuple[str, str]:
    """``(META_URL, shown source)`` for a mount request, and the credentials file's
    variables put into this process's environment (see the module docstring).

    ``label_needs_url``: a label without a ``KVFS_META_URL`` is an error (the mount(8)
    helper), rather than a relative store directory (``kvfs mount``)."""
    creds = read_credentials(opts.credentials) if opts.credentials else {}
    if META_URL_ENV in creds and not is_label(source):
        raise MountError(f"credentials file {opts.credentials} sets {META_URL_ENV}, so the "
                         f"source must be a label (letters, digits, -_.@+\\), not {source!r}")
    # putenv: the daemon's engines read passwords from the environment, and
    # /proc/PID/environ (the block the process started with) never shows them.
    os.environ.update(creds)
    if is_label(source):
        url = os.environ.get(META_URL_ENV)
        if url:
            return url, source
        if label_needs_url:
            raise MountError(f"source {source!r} is a label, but no {META_URL_ENV} is given "
                             f"(put it in a credentials=FILE or the environment)")
    return source, source


async def _mount(url: str, shown: str, mp: str, opts: MountOptions,
                 ready: Callable[[], None] | None) -> None:
    metrics = MountMetrics(url)
    # The engine is metered beneath everything that uses it: metadata, blocks kept in it,
    # the session, the watch.
    kv = metrics.meter(await open_engine(url))
    if url.startswith("mem://"):
        await format_volume(kv, "mem")
    volume = await open_volume(url, kv=kv,
                               cache=CacheSettings(opts.cache_dir, opts.cache_size))
    await serve(volume, mp, shown, opts, ready, metrics=metrics)


def run(args: argparse.Namespace) -> int:
    opts = MountOptions.parse(args.o)
    if args.log:
        opts.log = args.log
    url, shown = resolve_source(args.meta_url, opts, label_needs_url=False)
    if args.fstab != DEFAULT_FSTAB and not args.update_fstab:
        raise MountError("--fstab only applies with --update-fstab")
    if args.update_fstab and url != args.meta_url and not opts.credentials:
        raise MountError(f"--update-fstab: {META_URL_ENV} comes from the environment, which "
                         f"mount(8) does not have at boot; use -o credentials=FILE")
    mp = check_mountpoint(args.mountpoint, nonempty=opts.nonempty)
    if args.update_fstab:
        mount_background(url, shown, mp, opts)
        line = fstab_line(args.meta_url, mp, fstab_options(args.o, opts, url))
        replaced = update_fstab(args.fstab, line, mp)
        print(f"{'replaced the' if replaced else 'added a'} line for {mp} in {args.fstab}: "
              f"{line.strip()}")
        return 0
    if args.background:
        return mount_background(url, shown, mp, opts)
    trio.run(_mount, url, shown, mp, opts, _systemd_ready())
    return 0


def fstab_options(items: list[str], opts: MountOptions, url: str) -> list[str]:
    """The fstab options reproducing a mount given ``-o items`` (already validated into
    ``opts``): files made absolute, ``--log`` carried as ``log=``, duplicates dropped,
    ``_netdev`` first for an engine across the network (systemd then orders the mount
    after network-online.target)."""
    out: list[str] = [] if is_local(url) else ["_netdev"]
    for group in items:
        for item in filter(None, group.split(",")):
            key, _, value = item.partition("=")
            if key in ("credentials", "log"):
                continue
            if item not in out:
                out.append(item)
    if opts.credentials:
        out.append(f"credentials={os.path.abspath(opts.credentials)}")
    if opts.log:
        out.append(f"log={os.path.abspath(opts.log)}")
    return out


def _systemd_ready() -> Callable[[], None] | None:
    """The sd_notify(3) readiness report for a ``Type=notify`` unit, or None outside one.
    The variable is removed so nothing this process starts reports for it."""
    addr = os.environ.pop("NOTIFY_SOCKET", None)
    if not addr:
        return None
    target = "\0" + addr[1:] if addr.startswith("@") else addr

    def ready() -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(target)
                s.send(b"READY=1\nSTATUS=mounted\n")
        except OSError as e:
            log.warning("could not report readiness to systemd at %s: %s", addr, e)

    return ready


def mount_background(url: str, shown: str, mp: str, opts: MountOptions) -> int:
    """Fork the mount daemon; return 0 once the mount is live, or raise MountError with
    the daemon's one-line error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return _await_ready(r, pid)
    os.close(r)
    os.setsid()
    _redirect_output(opts.log)

    def ready() -> None:
        os.write(w, b"ok\n")
        os.close(w)

    code = 0
    try:
        trio.run(_mount, url, shown, mp, opts, ready)
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
