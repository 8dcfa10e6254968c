"""The trash: files removed or overwritten are kept for a while in ``/.trash``.

A volume keeps the trash for ``trash_days`` (a setting of its format record, default 1;
0 turns it off).  While it is on, the transaction that takes a non-directory's **last**
link -- an unlink, or a rename over it -- moves the inode into the trash instead
(:meth:`kvfs.meta.metadata.Metadata._to_trash`): the same commit deletes the old entry and
writes ``/.trash/YYYY-MM-DD-HH/<parent>-<ino>-<name>`` (the UTC hour of the removal),
making that hour's directory when missing.  So no crash leaves a file neither in place nor
in the trash.  Directories are never trashed; a file with other links keeps them and loses
one as before.

Layout and invariants:

* ``/.trash`` is inode :data:`TRASH_INO`, a directory (mode 0700, root's) with no entry in
  the root: readdir of the root does not list it, a lookup of ``.trash`` in the root finds
  it.  Its ``parent`` is the root.  A mount makes it when missing (:meth:`Metadata.
  ensure_trash`), so the name always exists on a mounted volume.
* An hour directory's inode is :func:`hour_ino` of its hour -- numbers from
  :data:`TRASH_INO` up, far above any inode the allocator hands out -- so a transaction
  finds the directory of an hour without reading the trash's listing, and
  :func:`is_trash_dir` is a comparison.
* A trashed inode keeps its attributes, data and ``nlink`` 1 (its entry in the hour
  directory); its ``parent`` is the hour directory.  To the kernel it shows ``nlink`` 0
  (:func:`shown_nlink`): whoever holds it open sees an unlinked file, as POSIX says.
* An inode has at most one entry in the trash (it is trashed only with its last link, and
  nothing but kvfs puts entries there), and the entry's name holds the inode number, so
  names never collide.
* Only kvfs adds entries to the trash: creating, linking or renaming anything into it is
  EPERM; renaming an entry out restores it; removing an entry deletes it for good.

Purging (:class:`TrashPurger`): an hour directory expires once its hour ended
``trash_days`` ago; one mount at a time -- the holder of the ``C trashpurger`` key,
attached to its session lease -- removes the entries of expired hours through the ordinary
unlink (their data then goes the usual way: the ``D`` queue and the cleaner) and then the
hour directory.  Usage counters keep counting trashed files until then, as JuiceFS does.
"""

from __future__ import annotations

import calendar
import logging
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgpack
import trio

from kvfs.errors import FSError
from kvfs.kv.api import Compacted, Compare, KVEngine, KVError, Put, prefix_end
from kvfs.meta import keys
from kvfs.meta.keys import Ino
from kvfs.meta.records import Attr
from kvfs.meta.session import Session
from kvfs.outage import log_failure

if TYPE_CHECKING:  # metadata imports this module
    from kvfs.meta.metadata import Metadata

log = logging.getLogger("kvfs.trash")

TRASH_NAME = b".trash"
TRASH_PATH = b"/" + TRASH_NAME
# The trash's inode, and below it (TRASH_INO + 1 + hour) its hour directories: far above
# what the inode allocator reaches, so the two ranges never meet.
TRASH_INO = Ino(1 << 62)
TRASH_DIR_MODE = stat.S_IFDIR | 0o700
DEFAULT_DAYS = 1.0
MAX_DAYS = 36500.0
HOUR = 3600
_HOUR_FORMAT = "%Y-%m-%d-%H"
NAME_MAX = 255
# How often the purger looks for expired hours (it also looks at start and whenever the
# volume's settings change).
PURGE_INTERVAL = 600.0
_PAGE = 1000


def is_trash_dir(ino: int) -> bool:
    """Whether ``ino`` is the trash or one of its hour directories."""
    return ino >= TRASH_INO


def in_trash(a: Attr) -> bool:
    """Whether a non-directory's (only) link is in the trash."""
    return not a.is_dir and a.parent > TRASH_INO


def shown_nlink(a: Attr) -> int:
    """The link count the kernel is told: 0 for a trashed file (it was unlinked)."""
    return 0 if in_trash(a) else a.nlink


def hour_of(unix_seconds: float) -> int:
    return int(unix_seconds) // HOUR


def hour_ino(hour: int) -> Ino:
    return Ino(TRASH_INO + 1 + hour)


def hour_name(hour: int) -> bytes:
    return time.strftime(_HOUR_FORMAT, time.gmtime(hour * HOUR)).encode()


def parse_hour(name: bytes) -> int | None:
    """The hour an hour directory's name stands for; None for any other name."""
    try:
        return calendar.timegm(time.strptime(name.decode(), _HOUR_FORMAT)) // HOUR
    except (ValueError, UnicodeDecodeError):
        return None


def entry_name(parent: int, ino: int, name: bytes) -> bytes:
    """``<parent>-<ino>-<name>``, the name cut short to stay within NAME_MAX bytes."""
    head = f"{parent}-{ino}-".encode()
    return head + name[:NAME_MAX - len(head)]


def expired(hour: int, days: float, now: float) -> bool:
    """Whether the hour directory of ``hour`` is past a retention of ``days`` at ``now``:
    every entry in it was trashed at least ``days`` ago.  With the trash off (0 days)
    every hour is: turning it off empties it."""
    return days <= 0 or (hour + 1) * HOUR + days * 86400 <= now


def new_dir_attr(parent: int, name: bytes, now: int) -> Attr:
    """The attributes of a new trash directory (the trash itself, or an hour's)."""
    return Attr(TRASH_DIR_MODE, 0, 0, now, now, now, 2, 0, 0, parent, name)


def days_of(raw_format: bytes) -> float:
    """The trash days of a volume's format record (absent: the default)."""
    record = msgpack.unpackb(raw_format)
    days = record.get("trash_days") if isinstance(record, dict) else None
    return DEFAULT_DAYS if days is None else float(days)


class TrashPurger:
    """Removes expired hours from the trash, one mount at a time (module docstring).

    ``meta`` is the mount's :class:`~kvfs.meta.metadata.Metadata` (its ``trash_days`` is
    the setting in force, kept up to date by :meth:`follow_settings`); ``freed`` is called
    after a purge removed something, to wake the cleaner that deletes the data.
    """

    def __init__(self, meta: Metadata, session: Session, *,
                 freed: Callable[[], None] = lambda: None,
                 interval: float = PURGE_INTERVAL) -> None:
        self.meta = meta
        self.kv: KVEngine = meta.kv
        self.session = session
        self.freed = freed
        self.interval = interval
        self._wake = trio.Event()

    async def is_holder(self) -> bool:
        """Take the purger role if nobody holds it; True if this mount holds it.  The key
        is on the session's lease, read afresh each time (a session that lost its lease
        registers again on a new one)."""
        me = keys.u64(self.session.sid)
        cur = await self.kv.get(keys.TRASH_PURGER)
        if cur is not None:
            return cur.value == me
        res = await self.kv.commit([Compare(keys.TRASH_PURGER, 0)],
                                   [Put(keys.TRASH_PURGER, me, self.session.lease)])
        if res.succeeded:
            log.info("session %d took the trash purger role", self.session.sid)
            return True
        cur = await self.kv.get(keys.TRASH_PURGER)
        return cur is not None and cur.value == me

    async def purge(self, now: float) -> int:
        """If this mount holds the role, remove every hour past the retention in force
        (all of them with the trash off); returns how many entries went."""
        if not await self.is_holder():
            return 0
        removed = 0
        for name in await self._children(TRASH_INO):
            hour = parse_hour(name)
            if hour is None or not expired(hour, self.meta.trash_days, now):
                continue
            removed += await self._purge_hour(hour, name)
        if removed:
            self.freed()
        return removed

    async def _purge_hour(self, hour: int, name: bytes) -> int:
        ino = hour_ino(hour)
        removed = 0
        for entry in await self._children(ino):
            try:
                await self.meta.unlink(ino, entry)
                removed += 1
            except FSError as exc:  # gone meanwhile (restored, removed by hand) or a dir
                log.debug("trash entry %r of %s left: %s", entry, name.decode(), exc)
        try:
            await self.meta.rmdir(TRASH_INO, name)
        except FSError as exc:  # something arrived meanwhile: the next round takes it
            log.debug("trash hour %s left: %s", name.decode(), exc)
        log.info("trash: removed %s (%d entries) past the retention of %g days",
                 name.decode(), removed, self.meta.trash_days)
        return removed

    async def _children(self, ino: int) -> list[bytes]:
        prefix = keys.dentry_prefix(ino)
        end = prefix_end(prefix)
        start, names = prefix, []
        while True:
            res = await self.kv.range(start, end, limit=_PAGE, keys_only=True)
            names += [keys.dentry_name(kv.key) for kv in res.kvs]
            if not res.more:
                return names
            start = res.kvs[-1].key + b"\0"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Purge at start, every ``interval`` seconds, and when the settings change."""
        task_status.started()
        while True:
            try:
                await self.purge(time.time())
            except Exception:  # noqa: BLE001 - keep the mount alive; retry next round
                log_failure(log, "trash purge failed (retrying later)")
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()

    def apply(self, days: float) -> None:
        """The volume's trash days changed to ``days``: use them, and purge at once."""
        if days != self.meta.trash_days:
            log.info("trash: now kept %g days", days)
            self.meta.trash_days = days
            self._wake.set()

    async def follow_settings(self, *, task_status: trio.TaskStatus[None]
                              = trio.TASK_STATUS_IGNORED) -> None:
        """Follow ``kvfs config --trash-days`` through a watch of the format record.  Only
        shared engines need it: an embedded store's settings cannot change while it is
        mounted (one process opens it)."""
        task_status.started()
        if not self.kv.shared:
            return
        start, end = keys.SETTING, prefix_end(keys.SETTING)
        while True:
            try:
                revision = await self.kv.current_revision()
                raw = await self.kv.get(keys.SETTING)
                if raw is not None:
                    self.apply(days_of(raw.value))
                async for batch in self.kv.watch(start, end, revision + 1):
                    for ev in batch.events:
                        if ev.key == keys.SETTING and ev.value:
                            self.apply(days_of(ev.value))
            except Compacted:
                continue  # read the record again, then watch from now
            except KVError as exc:
                log.warning("watch of the volume's settings interrupted (%s); resuming", exc)
                await trio.sleep(1.0)

