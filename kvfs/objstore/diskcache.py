"""A local on-disk cache of blocks kept in a remote store: :class:`CachedStore`.

A mount whose blocks live across the network (in etcd, in a Raft store, in a separate etcd
bucket) keeps the blocks it reads and writes in a directory of its own as well, so a
re-read -- after the kernel and the in-memory block cache have dropped them, or after a
remount -- is a local file read instead of a round trip per block.  Like JuiceFS's
``--cache-dir``: the directory is ``<cache_dir>/<volume uuid>``, bounded by bytes.

Invariants:
  * **Never stale.**  Blocks are immutable (a block name always denotes the same bytes), so
    a cached block is right for as long as it exists; a deleted block is dropped here when
    this mount deletes it and otherwise ages out.
  * **Checksummed.**  A cache file holds the block sealed as by :mod:`kvfs.objstore.checksum`
    (magic, xxh64, data).  A file that does not verify -- torn by a crash, damaged on disk,
    edited -- is deleted and the block fetched again from the store: never returned.
  * **Crash-safe writes**: each file is written under a temporary name and renamed into
    place (not fsynced: a file a power cut tore fails its checksum and is refetched).
  * **Safe to delete.**  The directory, or any file in it, may be removed at any time,
    mounted or not: a missing file is a miss, and the directories are made again as
    needed.  Nothing here is the only copy of anything.
  * **Bounded.**  At most ``capacity`` bytes of cache files (headers included), evicting
    the least recently used; the index of what is cached lives in memory and is rebuilt at
    start by scanning the directory (oldest files first), which also removes temporary
    files a crash left.  Nothing is cached while the file system holding the directory
    has less than :data:`FREE_RATIO` of its space free.
  * **One mount per directory**: the directory is locked (``flock`` of ``.lock``) for as
    long as the store is open; a second mount of the same volume on the host runs
    without the cache (:func:`open_cache` says why) rather than fight over the bound.

Filling the cache never delays a read or a write: a block fetched or written is handed to
a background task (a trio system task) that writes its file, while the caller goes on.  At
most :data:`FILL_BACKLOG` bytes wait to be written; beyond that, blocks are not cached.
Failures of the cache itself (a full disk, a removed directory) are logged and never fail a
read or a write: the store underneath answers instead.  All file I/O runs in worker threads.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from kvfs.kv.api import KVEngine, Put
from kvfs.objstore.api import BlockCorrupt, ObjectStore, ObjectStoreError, parse_block_name
from kvfs.objstore.checksum import HEADER_SIZE, seal, unseal

log = logging.getLogger("kvfs.objstore")

DEFAULT_DIR = "/var/cache/kvfs"
DEFAULT_SIZE = 1 << 30
# Stop adding to the cache when less than this share of its file system is free.
FREE_RATIO = 0.1
_TMP_PREFIX = ".tmp-"
_LOCK = ".lock"
# Bytes of blocks waiting to be written into the cache, at most.
FILL_BACKLOG = 64 << 20
# How long a free-space figure is trusted before statvfs is asked again (seconds).
_FREE_CHECK_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Where a mount caches remote blocks: ``directory`` None means :data:`DEFAULT_DIR`;
    ``size`` in bytes, 0 for no cache."""

    directory: str | None = None
    size: int = DEFAULT_SIZE


async def open_cache(inner: ObjectStore, settings: CacheSettings, volume_uuid: str
                     ) -> ObjectStore:
    """``inner`` behind a :class:`CachedStore` in ``<directory>/<volume_uuid>``, or
    ``inner`` itself when the size is 0, or when the directory is locked by another mount
    or (the default directory only) cannot be made -- each said in the log.

    Raises :class:`ObjectStoreError` when a directory the user named cannot be used."""
    if settings.size <= 0:
        return inner
    base = settings.directory or DEFAULT_DIR
    root = os.path.join(os.path.abspath(base), volume_uuid)
    try:
        lock_fd, index = await trio.to_thread.run_sync(_open_dir, root)
    except BlockingIOError:
        log.warning("block cache %s is in use by another mount of this volume; this mount "
                    "runs without a disk cache", root)
        return inner
    except OSError as exc:
        if settings.directory is not None:
            raise ObjectStoreError(f"cannot use cache_dir {base}: {exc.strerror or exc}"
                                   ) from None
        log.warning("no disk block cache: cannot use %s (%s)", root, exc.strerror or exc)
        return inner
    store = CachedStore(inner, root, settings.size, lock_fd, index)
    await store.evict()
    log.info("block cache %s: %d blocks, %d of %d MiB", root, len(index),
             store.cached_bytes >> 20, settings.size >> 20)
    return store


def _open_dir(root: str) -> tuple[int, list[tuple[str, int]]]:
    """Make and lock ``root``; its cached blocks ``(name, size)``, oldest first."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, _LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    found: list[tuple[float, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            path = os.path.join(dirpath, f)
            if f.startswith(_TMP_PREFIX):
                _unlink(path)  # a write a crash interrupted
                continue
            name = os.path.relpath(path, root)
            try:
                parse_block_name(name)
                st = os.stat(path)
            except (ValueError, OSError):
                continue
            found.append((st.st_mtime, name, st.st_size))
    found.sort()
    return fd, [(name, size) for _, name, size in found]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class CachedStore(ObjectStore):
    """``inner`` with a bounded, checksummed cache of its blocks in the directory ``root``
    (see the module docstring).  Made by :func:`open_cache`."""

    def __init__(self, inner: ObjectStore, root: str, capacity: int, lock_fd: int,
                 index: list[tuple[str, int]]) -> None:
        self.inner = inner
        self.root = root
        self.capacity = capacity
        self._lock_fd: int | None = lock_fd
        self._index: OrderedDict[str, int] = OrderedDict(index)  # name -> file size, LRU
        self.cached_bytes = sum(size for _, size in index)
        self._limiter = trio.CapacityLimiter(8)
        self._free_at = 0.0  # when free space was last checked
        self._room = True  # whether there was room then
        self._warned_at = -60.0  # when a failed write was last logged
        self._backlog = 0  # bytes handed to fills not yet done
        self._settled = trio.Event()  # set while no fill is under way
        self._settled.set()
        # For the mount's metrics.
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def describe(self) -> str:
        return f"cached({self.inner.describe()}, {self.root})"

    @property
    def max_block_bytes(self) -> int | None:
        return self.inner.max_block_bytes

    def inline_puts(self, name: str, data: bytes, engine: KVEngine) -> list[Put] | None:
        # Blocks written inside a metadata transaction are small and stay in the in-memory
        # block cache; they reach this cache when read after that forgot them.
        return self.inner.inline_puts(name, data, engine)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    async def get(self, name: str) -> bytes:
        if name in self._index:
            try:
                data, corrupt = await trio.to_thread.run_sync(self._read_sync, name,
                                                              limiter=self._limiter)
            except OSError as exc:
                log.warning("block cache: cannot read %s: %s", name, exc)
                data, corrupt = None, False
            self.corrupt += corrupt
            if data is not None:
                self.hits += 1
                if name in self._index:
                    self._index.move_to_end(name)
                return data
            self._forget(name)
        self.misses += 1
        data = await self.inner.get(name)
        self._fill(name, data)
        return data

    def _read_sync(self, name: str) -> tuple[bytes | None, bool]:
        """The cached block, or None when its file is gone or fails its checksum (then
        deleted, so the block is fetched and cached again); and whether it failed."""
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None, False
        try:
            return unseal(name, raw), False
        except BlockCorrupt as exc:
            log.warning("block cache: %s; fetching it again", exc)
            _unlink(path)
            return None, True

    def _forget(self, name: str) -> None:
        size = self._index.pop(name, None)
        if size is not None:
            self.cached_bytes -= size

    def _fill(self, name: str, data: bytes) -> None:
        """Cache ``data`` as block ``name`` in the background (see the module docstring)."""
        if name in self._index or self._backlog + len(data) > FILL_BACKLOG:
            return
        try:
            parse_block_name(name)  # only names kvfs made: nothing can point outside root
        except ValueError:
            return
        self._backlog += len(data)
        if self._settled.is_set():
            self._settled = trio.Event()
        trio.lowlevel.spawn_system_task(self._fill_task, name, data,
                                        name="kvfs disk cache fill")

    async def _fill_task(self, name: str, data: bytes) -> None:
        try:
            await self._keep(name, data)
        except Exception:  # noqa: BLE001 - a system task must not raise; nothing is lost
            log.exception("block cache: keeping %s failed", name)
        finally:
            self._backlog -= len(data)
            if not self._backlog:
                self._settled.set()

    async def settle(self) -> None:
        """Wait until every block handed to the cache so far is in it (or given up)."""
        while not self._settled.is_set():
            await self._settled.wait()

    async def _keep(self, name: str, data: bytes) -> None:
        """Cache ``data`` as block ``name`` if it fits and the disk has room; a failure is
        logged, never raised."""
        size = HEADER_SIZE + len(data)
        if name in self._index or size > self.capacity:
            return
        try:
            if not await self._has_room():
                return
            await trio.to_thread.run_sync(self._write_sync, name, data,
                                          limiter=self._limiter)
        except OSError as exc:
            # Once a minute at most: a full or removed disk would fail every block.
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                log.warning("block cache: cannot keep %s: %s", name, exc)
            return
        if name in self._index:  # cached meanwhile by another task
            return
        self._index[name] = size
        self.cached_bytes += size
        await self.evict()

    async def _has_room(self) -> bool:
        now = time.monotonic()
        if now - self._free_at >= _FREE_CHECK_EVERY:
            self._free_at = now
            self._room = await trio.to_thread.run_sync(self._room_sync, limiter=self._limiter)
        return self._room

    def _room_sync(self) -> bool:
        # The cache's own directory may have been removed: ask about its parent then.
        path = self.root if os.path.isdir(self.root) else os.path.dirname(self.root)
        st = os.statvfs(path)
        return st.f_bavail >= FREE_RATIO * st.f_blocks

    def _write_sync(self, name: str, data: bytes) -> None:
        sealed = seal(data)
        path = self._path(name)
        tmp = os.path.join(os.path.dirname(path),
                           f"{_TMP_PREFIX}{os.path.basename(path)}.{secrets.token_hex(6)}")
        for attempt in range(2):
            try:
                with open(tmp, "xb") as f:
                    f.write(sealed)
                break
            except FileNotFoundError:
                if attempt:
                    raise
                # First use of this directory, or the cache was removed under us.
                os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.rename(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise

    async def evict(self) -> None:
        """Delete least recently used blocks until the cache is within its capacity."""
        doomed: list[str] = []
        while self.cached_bytes > self.capacity and self._index:
            name, size = self._index.popitem(last=False)
            self.cached_bytes -= size
            doomed.append(self._path(name))
        if doomed:
            await trio.to_thread.run_sync(_unlink_all, doomed, limiter=self._limiter)

    async def put(self, name: str, data: bytes) -> None:
        await self.inner.put(name, data)
        self._fill(name, data)  # write-through: a re-read after a write is local

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)
        if name in self._index:
            self._forget(name)
            await trio.to_thread.run_sync(_unlink_all, [self._path(name)],
                                          limiter=self._limiter)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for name in self.inner.list(prefix):
            yield name

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("block cache: cannot remove %s: %s", path, exc)
