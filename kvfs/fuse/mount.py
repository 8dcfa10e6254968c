"""Wiring one mount together: volume, session, filesystem, FUSE session, background jobs.

:func:`serve` owns the mount's lifetime.  Everything that runs in the background is a child
of one nursery; SIGTERM/SIGINT end ``pyfuse3.main`` and the mount is flushed and unmounted
on the way out (shielded, with a time limit), whether it ended by signal, by ``umount`` or
by an error.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat as stat_mod
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from kvfs.fuse import mounttab
from kvfs.fuse.control import ControlServer
from kvfs.fuse.metrics import DEFAULT_METRICS, MountMetrics, parse_option
from kvfs.fuse.ops import KvfsOperations
from kvfs.history.recorder import Recorder
from kvfs.history.service import HistoryService
from kvfs.history.store import expire
from kvfs.kv import txn
from kvfs.kv.api import KVEngine
from kvfs.meta.compactor import Compactor
from kvfs.meta.records import now_ns
from kvfs.meta.session import SESSION_TTL, Session
from kvfs.meta.trash import TrashPurger
from kvfs.objstore import diskcache
from kvfs.outage import log_failure
from kvfs.vfs.coherence import Coherence
from kvfs.vfs.fs import FileSystem
from kvfs.volume import Volume

log = logging.getLogger("kvfs.mount")

# Options mount(8) and fstab pass that mean nothing to a FUSE filesystem of ours
# (default_permissions is always on).  ``x-*`` and ``comment=`` options belong to
# mount(8) and systemd's fstab generator and are skipped too.
_GENERIC = {"rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto",
            "_netdev", "defaults", "user", "users", "nouser", "nofail", "async", "atime",
            "noatime", "relatime", "strictatime", "nodiratime", "diratime",
            "default_permissions"}


# The kernel's readahead for the mount, in KiB (its default is 128): the largest FUSE read
# request.  A FUSE read request is at most as large as the readahead window, so at the
# default a sequential read of 1 MiB blocks costs eight requests (and eight chunk-list
# lookups) per block.  Not more: a page fault in a mapped file reads the whole window
# around it, wanted or not (the daemon's own readahead goes further for sequential reads).
KERNEL_READAHEAD_KIB = 1024


class MountError(Exception):
    """A user-facing problem with a mount request (one line)."""


@dataclass(slots=True)
class MountOptions:
    allow_other: bool = os.geteuid() == 0
    read_only: bool = False
    nonempty: bool = False  # mounting over files is intended: no warning
    # The kernel's cache timeouts; None: automatic (kvfs.fuse.ops.KvfsOperations).
    attr_timeout: float | None = None
    entry_timeout: float | None = None
    orphan_grace: float = 60.0
    # Shared engines: the session lease TTL (a dead mount's roles move after it), and how
    # much revision history the compactor keeps (sampled every tenth of it, at most 60 s).
    session_ttl: float = SESSION_TTL
    compact_retain: float = 600.0
    # The Prometheus metrics endpoint (HOST:PORT; None: off).  See kvfs.fuse.metrics.
    metrics: str | None = DEFAULT_METRICS
    # The disk cache of blocks kept across the network (kvfs.objstore.diskcache): its
    # parent directory (None: the default) and its size in bytes (0: off).
    cache_dir: str | None = None
    cache_size: int = diskcache.DEFAULT_SIZE
    # Not FUSE options but the mount command's, so that an fstab line can carry them:
    # a file of KEY=VALUE lines for the environment (the META_URL, an etcd password),
    # and the log file of a background mount.
    credentials: str | None = None
    log: str | None = None

    @classmethod
    def parse(cls, items: list[str], *, sloppy: bool = False) -> MountOptions:
        """Options from ``-o`` groups.  An unknown option is an error (a typo in an fstab
        line must not be ignored), unless ``sloppy`` (mount(8)'s ``-s``) asks to only warn."""
        opts = cls()
        for group in items:
            for item in filter(None, group.split(",")):
                key, _, value = item.partition("=")
                if key in ("credentials", "log"):
                    if not value:
                        raise MountError(f"option {key} needs a file name")
                    setattr(opts, key, value)
                elif key == "allow_other":
                    opts.allow_other = True
                elif key == "ro":
                    opts.read_only = True
                elif key == "nonempty":
                    opts.nonempty = True
                elif key == "cache_dir":
                    if not value:
                        raise MountError("option cache_dir needs a directory")
                    opts.cache_dir = os.path.abspath(value)
                elif key == "cache_size":
                    if not value.isascii() or not value.isdigit():
                        raise MountError("option cache_size needs a whole number of MiB "
                                         "(0 turns the disk cache off)")
                    opts.cache_size = int(value) << 20
                elif key == "metrics":
                    try:
                        opts.metrics = parse_option(value)
                    except ValueError as e:
                        raise MountError(str(e)) from None
                elif key in ("attr_timeout", "entry_timeout", "orphan_grace", "session_ttl",
                             "compact_retain"):
                    try:
                        seconds = float(value)
                    except ValueError:
                        raise MountError(f"option {key} needs a number of seconds") from None
                    if key in ("session_ttl", "compact_retain") and not 0 < seconds < 1e6:
                        raise MountError(f"option {key} needs a positive number of seconds")
                    setattr(opts, key, seconds)
                elif key in _GENERIC or key.startswith("x-") or key == "comment":
                    continue
                elif sloppy:
                    log.warning("ignoring unknown mount option %r", item)
                else:
                    raise MountError(f"unknown mount option {item!r}")
        return opts


def check_mountpoint(path: str, *, nonempty: bool = False) -> str:
    """The canonical mountpoint (symlinks resolved, as the mount table will name it), or
    MountError if it cannot take a new mount.  A directory with files in it can, but they
    are hidden while the mount lasts: say so in one line, unless ``nonempty`` (the
    ``-o nonempty`` of libfuse 2) says the caller knows.

    A kvfs mount whose daemon died (the kernel answers ENOTCONN) is cleared first, so
    that a restart by systemd or a plain ``mount`` recovers without a human; a dead mount
    of any other filesystem is left alone and refused."""
    mp = os.path.realpath(path)
    try:
        st = _stat_clearing_dead_kvfs(mp)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mp} does not exist") from None
    except OSError as e:
        raise MountError(f"mountpoint {mp} is unusable ({e.strerror}); if a mount died "
                         f"there, run: fusermount3 -u {mp}") from None
    if not stat_mod.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mp} is not a directory")
    if os.path.ismount(mp):
        raise MountError(f"{mp} is already a mountpoint")
    if not nonempty:
        with os.scandir(mp) as entries:
            if next(entries, None) is not None:
                log.warning("mountpoint %s is not empty: its files are hidden while kvfs is "
                            "mounted there", mp)
    return mp


# A bound on dead mounts stacked on one mountpoint: each round clears one of them.
_MAX_DEAD_MOUNTS = 8


_DEAD_CONNECTION = (errno.ENOTCONN, errno.ECONNABORTED)


def _stat_clearing_dead_kvfs(mp: str) -> os.stat_result:
    """``os.stat(mp)``, after lazily unmounting any dead kvfs mounts stacked there.

    ENOTCONN from a FUSE mountpoint means its connection is gone for good (the daemon
    closed /dev/fuse, by exit or by being killed; ECONNABORTED when the connection was
    aborted, which also happens as a killed daemon's connection is torn down), so nothing
    can be served there again
    and detaching it loses nothing.  A process still inside it keeps seeing ENOTCONN; the
    detach (``-z``) is what lets the new mount go on top regardless."""
    for _ in range(_MAX_DEAD_MOUNTS):
        try:
            return os.stat(mp)
        except OSError as e:
            entry = mounttab.find(mp) if e.errno in _DEAD_CONNECTION else None
            if entry is None or not entry.is_kvfs:
                raise
        log.warning("clearing the dead kvfs mount at %s (its daemon is gone)", mp)
        res = subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, text=True,
                             check=False)
        if res.returncode != 0:
            detail = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise MountError(f"cannot clear the dead kvfs mount at {mp}: {detail}")
    return os.stat(mp)


async def serve(volume: Volume, mountpoint: str, source: str, opts: MountOptions,
                ready: Callable[[], None] | None = None, *, metrics: MountMetrics) -> None:
    """Mount ``volume`` at ``mountpoint`` and serve it until unmounted or signalled;
    ``metrics`` records it (its engine already wrapped by ``metrics.meter``) and serves
    the endpoint of ``opts.metrics``, bound before anything else happens."""
    if opts.metrics is not None:
        try:
            await metrics.listen(opts.metrics, given=opts.metrics != DEFAULT_METRICS)
        except OSError as exc:
            with trio.CancelScope(shield=True):
                await volume.aclose()
            raise MountError(str(exc)) from None
    metrics.attach(volume, opts.session_ttl)
    txn.retry_observer.set(metrics.engine.retried)  # for this task and the ones it starts
    volume.meta.trash_days = volume.fmt.trash_days
    await volume.meta.ensure_trash()  # so the name /.trash always exists on a mount
    session = await Session.register(volume.kv, mountpoint, opts.session_ttl,
                                     held=volume.meta.held)
    volume.meta.session_id = session.sid
    fs = FileSystem(volume.meta, volume.slices, free_space=volume.free_space,
                    orphan_grace=opts.orphan_grace)
    ops = KvfsOperations(fs, attr_timeout=opts.attr_timeout, entry_timeout=opts.entry_timeout,
                         stats=metrics.fuse)
    recorder = Recorder(volume.meta, volume.fmt.history_settings, socket.gethostname())
    fs.keep_history(recorder)
    fs.cleaner.expire_history = lambda: _expire(volume.kv, recorder)
    control = ControlServer(mountpoint, HistoryService(fs, recorder, ops.invalidate_entry),
                            metrics.registry)
    fuse_opts = set(pyfuse3.default_options)
    # libfuse splits options on commas: an etcd URL with several endpoints needs escaping.
    fsname = source.replace("\\", "\\\\").replace(",", "\\,")
    fuse_opts |= {f"fsname={fsname}", "subtype=kvfs"}
    if opts.allow_other:
        fuse_opts.add("allow_other")
    if opts.read_only:
        fuse_opts.add("ro")
    try:
        pyfuse3.init(ops, mountpoint, fuse_opts)
    except RuntimeError as exc:
        with trio.CancelScope(shield=True):
            await session.close()
            await volume.aclose()
        raise MountError(f"cannot mount at {mountpoint}: {exc}") from None
    mounted = True
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.keepalive)
            if volume.kv.shared:
                # The record cache runs the watch and hands each batch on, once applied.
                coherence = Coherence(ops, known_inodes=ops.lookups,
                                      on_orphaned=fs.note_orphaned)
                volume.cache.listen(coherence.apply)
            await fs.run_background(nursery)
            await nursery.start(ops.drop_moved_directories)
            await nursery.start(control.run)
            await nursery.start(metrics.serve)
            # On every engine: the embedded store's history also holds overwritten values
            # (their files), which compaction lets it free.
            compactor = Compactor(volume.kv, session, retain=opts.compact_retain,
                                  interval=min(60.0, opts.compact_retain / 10))
            await nursery.start(compactor.run)
            purger = TrashPurger(volume.meta, session, freed=fs.cleaner.poke)
            await nursery.start(purger.follow_settings)
            await nursery.start(purger.run)
            nursery.start_soon(_on_signal)
            nursery.start_soon(_widen_readahead, mountpoint)
            log.info("kvfs %s mounted at %s (session %d)", volume.fmt.name, mountpoint,
                     session.sid)
            if ready is not None:
                ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            try:
                await fs.flush_all()
                await volume.meta.usage.flush()
            except Exception:  # noqa: BLE001 - report and still unmount
                log_failure(log, "flushing buffered writes at unmount failed",
                            level=logging.ERROR)
            pyfuse3.close(unmount=mounted)
            try:
                await session.close()
            except Exception:  # noqa: BLE001
                log.warning("could not end session %d; it expires with its lease",
                            session.sid)
            await volume.aclose()


async def _expire(kv: KVEngine, recorder: Recorder) -> None:
    removed = await expire(kv, recorder.settings, now_ns())
    if removed:
        log.info("history: removed %d versions past their retention", removed)


async def _widen_readahead(mountpoint: str) -> None:
    """Raise the kernel's readahead for this mount to :data:`KERNEL_READAHEAD_KIB`.

    The kernel offers a FUSE filesystem only its default window at INIT and never takes a
    larger one from the reply, but root may raise it afterwards through the mount's bdi in
    sysfs.  ``stat`` of the mountpoint returns only once INIT has been answered (this
    process serves it), so the new value is not lowered again by the reply.  Without
    root, or without sysfs, the mount keeps the kernel's default: only slower."""
    def widen() -> None:
        st = os.stat(mountpoint)
        bdi = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(bdi, "w") as f:
            f.write(f"{KERNEL_READAHEAD_KIB}\n")

    try:
        await trio.to_thread.run_sync(widen, abandon_on_cancel=True)
    except OSError as exc:
        log.info("kernel readahead left at its default: %s", exc)


async def _on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s; unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return
