"""History requests a mount answers: list, read and restore versions of its volume's files.

They run inside the mount process (reached through :mod:`kvfs.fuse.control`), so they work
the same on every engine -- an embedded store can only be opened by its mount -- and a
restore goes through the mount's own filesystem layer: its writes, its record cache, and the
kernel told about the replaced name.

A restore is a new change: the file is written afresh (a new inode with a copy of the
version's bytes, made under a temporary name the history ignores) and renamed over the
path in one transaction, and that rename is recorded as a version of kind ``restore`` naming
the revision it came from.  Restoring a tombstone removes the file.  A directory restored to
a revision or time restores each path below it whose state then differs from its state now;
each file is replaced atomically, the directory as a whole is not.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvfs.errors import FSError
from kvfs.history.recorder import Recorder
from kvfs.history.records import ARRIVALS, DELETE, RESTORE, RESTORE_TEMP_PREFIX, Version
from kvfs.history.store import read_content, versions_of, versions_under
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.metadata import Ctx, SetAttr
from kvfs.vfs.fs import FileSystem

_WRITE_PIECE = 1 << 20


class HistoryError(Exception):
    """A request that cannot be answered; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class AsOf:
    """A point in the volume's history: an engine revision or a time (ns since epoch).

    A revision that is one of the versions considered stands for that version's time:
    the versions one change records (a deployed tree) share one time but may take several
    transactions, and the point must include all of them."""

    revision: int = 0
    time_ns: int = 0

    def includes(self, v: Version) -> bool:
        return v.revision <= self.revision if self.revision else v.time <= self.time_ns


def _split(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p]


class HistoryService:
    """Answers history requests for one mount (module docstring).  ``invalidate`` tells
    the kernel a name changed behind its back."""

    def __init__(self, fs: FileSystem, recorder: Recorder,
                 invalidate: Callable[[int, bytes], Awaitable[None]]) -> None:
        self.fs = fs
        self.recorder = recorder
        self.kv = fs.meta.kv
        self.invalidate = invalidate

    async def log(self, path: bytes) -> list[Version]:
        vs = await versions_of(self.kv, path)
        if not vs:
            raise HistoryError(self._no_history(path))
        return vs

    def _no_history(self, path: bytes) -> str:
        if not self.recorder.enabled:
            return "this volume keeps no history (kvfs format --force --history-days N)"
        if not self.recorder.settings.covers(path):
            return f"{path.decode(errors='replace')} is not under a path whose history is kept"
        return f"{path.decode(errors='replace')} has no recorded versions"

    async def version(self, path: bytes, revision: int) -> Version:
        for v in await self.log(path):
            if v.revision == revision:
                return v
        raise HistoryError(f"{path.decode(errors='replace')} has no version at revision "
                           f"{revision} (see kvfs log)")

    async def content(self, path: bytes, revision: int) -> bytes:
        v = await self.version(path, revision)
        if v.is_tombstone:
            return b""
        if stat.S_ISLNK(v.mode):
            return v.target or b""
        if not stat.S_ISREG(v.mode):
            return b""
        try:
            return await read_content(self.fs.slices, v)
        except FSError as exc:
            raise HistoryError(f"revision {revision}: {exc}") from None

    # -- restore -----------------------------------------------------------------------

    async def restore(self, path: bytes, *, revision: int = 0, as_of: AsOf | None = None,
                      uid: int = 0) -> list[str]:
        """Restore the file at ``path`` to version ``revision``, or ``path`` (a file or a
        directory) to its state ``as_of``; returns one line per path changed."""
        if revision:
            v = await self.version(path, revision)
            return [await self._restore_one(path, v, uid)]
        assert as_of is not None
        own = await versions_of(self.kv, path)
        tree = {} if own else await versions_under(self.kv, path)
        if as_of.revision:
            named = [v for vs in (own, *tree.values()) for v in vs
                     if v.revision == as_of.revision]
            if named:
                as_of = AsOf(time_ns=named[0].time)
        if own:
            state = [v for v in own if as_of.includes(v)]
            if not state:
                raise HistoryError(f"{path.decode(errors='replace')} has no version at or "
                                   "before that point")
            return [await self._restore_one(path, state[-1], uid)]
        if not tree:
            raise HistoryError(self._no_history(path))
        done = []
        for p in sorted(tree):
            vs = tree[p]
            before = [v for v in vs if as_of.includes(v)]
            if before:
                if await self._same(before[-1], vs[-1]):
                    continue  # as it was then
                done.append(await self._restore_one(p, before[-1], uid))
            elif vs[0].kind in ARRIVALS and not vs[-1].is_tombstone:
                done.append(await self._remove(p, uid, None))  # made after that point
        return done

    async def _same(self, a: Version, b: Version) -> bool:
        """Whether two versions describe the same file (a restore copies the bytes, so
        equal content may sit in different slices)."""
        if a.revision == b.revision or (a.is_tombstone and b.is_tombstone):
            return True
        if a.is_tombstone or b.is_tombstone:
            return False
        if (a.mode, a.owner, a.group, a.size, a.target) != (b.mode, b.owner, b.group,
                                                             b.size, b.target):
            return False
        if not stat.S_ISREG(a.mode) or a.chunks == b.chunks:
            return True
        try:
            return await read_content(self.fs.slices, a) == await read_content(
                self.fs.slices, b)
        except FSError:
            return False

    async def _lookup_dir(self, parts: list[bytes], *, create: bool) -> int:
        ino: int = ROOT_INO
        for name in parts:
            try:
                child, attr = await self.fs.meta.lookup(ino, name)
            except FSError as exc:
                if exc.errno != 2 or not create:
                    raise HistoryError(f"cannot reach {name.decode(errors='replace')}: "
                                       f"{os.strerror(exc.errno)}") from None
                child, attr, _ = await self.fs.meta.create(
                    Ctx(0, 0), ino, name, stat.S_IFDIR | 0o755, exclusive=False)
            if not attr.is_dir:
                raise HistoryError(f"{name.decode(errors='replace')} is not a directory")
            ino = int(child)
        return ino

    async def _remove(self, path: bytes, uid: int, revision: int | None) -> str:
        parts = _split(path)
        parent = await self._lookup_dir(parts[:-1], create=False)
        try:
            await self.fs.meta.unlink(parent, parts[-1])
        except FSError as exc:
            if exc.errno != 2:
                raise HistoryError(f"cannot remove {path.decode(errors='replace')}: "
                                   f"{os.strerror(exc.errno)}") from None
            return f"{path.decode(errors='replace')}: already absent"
        self.fs.cleaner.poke()
        note = {"restore": revision} if revision else {"restore": "absent"}
        await self.recorder.record_gone(path, DELETE, uid, note)
        await self.invalidate(parent, parts[-1])
        return f"removed {path.decode(errors='replace')}"

    async def _restore_one(self, path: bytes, v: Version, uid: int) -> str:
        if v.is_tombstone:
            return await self._remove(path, uid, v.revision)
        parts = _split(path)
        if not parts:
            raise HistoryError("the root cannot be restored as a file")
        parent = await self._lookup_dir(parts[:-1], create=True)
        temp = RESTORE_TEMP_PREFIX + secrets.token_hex(8).encode()
        owner = Ctx(v.owner, v.group)
        meta = self.fs.meta
        try:
            if stat.S_ISREG(v.mode):
                data = await read_content(self.fs.slices, v)
                fh, ino, _ = await self.fs.create(owner, parent, temp, 0o600,
                                                  os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                try:
                    for off in range(0, len(data), _WRITE_PIECE):
                        await self.fs.write(fh, off, data[off:off + _WRITE_PIECE])
                    await self.fs.flush(fh)
                finally:
                    await self.fs.release(fh)
                await self.fs.setattr(ino, SetAttr(mode=v.mode & 0o7777, uid=v.owner,
                                                   gid=v.group, mtime=v.mtime))
            else:
                ino, _, _ = await meta.create(owner, parent, temp, v.mode,
                                              target=v.target if stat.S_ISLNK(v.mode) else None)
                if not stat.S_ISLNK(v.mode):
                    await meta.setattr(ino, SetAttr(mtime=v.mtime))
            await meta.rename(parent, temp, parent, parts[-1])
        except FSError as exc:
            try:
                await meta.unlink(parent, temp)
            except FSError:
                pass
            raise HistoryError(f"cannot restore {path.decode(errors='replace')}: "
                               f"{os.strerror(exc.errno)}") from None
        self.fs.cleaner.poke()
        await self.recorder.record_file(int(ino), RESTORE, uid, {"rev": v.revision}, [path])
        await self.invalidate(parent, parts[-1])
        return f"restored {path.decode(errors='replace')} from revision {v.revision}"
