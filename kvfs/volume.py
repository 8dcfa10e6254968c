"""Opening and formatting volumes: META_URL → engine, format record → object store and layers.

This is the one place that knows which engine a URL names and how a volume's parts fit
together; the CLI and the tests both go through it.

META_URL forms:
  * ``/path/to/dir`` or ``local:///path/to/dir`` -- the embedded store in that directory:
    a one-member Raft cluster run in this process (kvfs.raftkv.embedded);
  * ``mem://`` -- a volatile in-process store (tests only; every open is a new volume);
  * ``etcd://host:port[,host:port...]/PREFIX[?...]`` -- an etcd cluster (kvfs.kv.etcd);
  * ``raft://host:port[,host:port...]/PREFIX[?...]`` -- a kvfs Raft store (kvfs.raftkv.client).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from kvfs.chunk.slices import SliceStore
from kvfs.durable import make_dirs
from kvfs.errors import VolumeError
from kvfs.history.records import HistorySettings
from kvfs.kv.api import KVEngine
from kvfs.kv.cache import CachedEngine
from kvfs.kv.local import MemoryEngine
from kvfs.meta import keys, trash
from kvfs.meta.metadata import Metadata
from kvfs.objstore.api import ObjectStore
from kvfs.objstore.checksum import ChecksummedStore
from kvfs.objstore.diskcache import CacheSettings, open_cache
from kvfs.objstore.kvblob import KVBlobStore
from kvfs.objstore.localdir import LocalDirStore

FORMAT_VERSION = 1
DEFAULT_BLOCK_KIB = {"file": 4096, "kv": 1024, "etcd": 1024}


@dataclass(frozen=True, slots=True)
class VolumeFormat:
    name: str
    uuid: str
    block_size: int
    storage: str  # "kv": blocks in the metadata engine; "file": a local directory
    bucket: str
    version: int = FORMAT_VERSION
    created: int = 0
    # kvfs.history.records.HistorySettings as a map; absent in volumes made before history
    # existed, which then get the default settings.
    history: dict[str, Any] | None = None
    # Days removed files stay in /.trash (kvfs.meta.trash; 0: off); volumes made before
    # the trash existed get the default.
    trash_days: float = trash.DEFAULT_DAYS

    @property
    def history_settings(self) -> HistorySettings:
        return HistorySettings.from_dict(self.history)

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> VolumeFormat:
        """The format record ``raw``; VolumeError if it is newer than this kvfs or is not
        a format record (damaged): every command refuses the volume with one line."""
        try:
            d: dict[str, Any] = msgpack.unpackb(raw)
        except (ValueError, msgpack.UnpackException) as exc:
            raise VolumeError(f"the volume's format record is corrupt ({type(exc).__name__})"
                              ) from None
        if not isinstance(d, dict) or not isinstance(d.get("version", 0), int):
            raise VolumeError("the volume's format record is corrupt (not a format record)")
        if d.get("version", 0) > FORMAT_VERSION:
            raise VolumeError(f"volume format {d.get('version')} is newer than this kvfs")
        # Fields this kvfs does not know (written by a newer one, same format version)
        # are kept out rather than refused.
        known = {f for f in cls.__dataclass_fields__}
        wrong = [k for k, t in _FIELD_TYPES.items() if k in d and type(d[k]) is not t]
        missing = sorted(cls.__dataclass_fields__.keys() - d.keys() - _OPTIONAL_FIELDS)
        if wrong or missing:
            raise VolumeError(f"the volume's format record is corrupt (fields "
                              f"{', '.join(wrong + missing)})")
        return cls(**{k: v for k, v in d.items() if k in known})


# The format record's fields whose type every command relies on, and those older volumes
# may lack.
_FIELD_TYPES = {"name": str, "uuid": str, "block_size": int, "storage": str, "bucket": str,
                "version": int, "created": int}
_OPTIONAL_FIELDS = {"version", "created", "history", "trash_days"}


def check_trash_days(days: float) -> None:
    """VolumeError unless ``days`` is a trash retention: 0 (off) to 36500 days."""
    if not 0 <= days <= trash.MAX_DAYS:
        raise VolumeError(f"invalid --trash-days {days:g} (0 to {trash.MAX_DAYS:g}; 0 turns "
                          "the trash off)")


def embedded_dir(url: str) -> str | None:
    """The directory of an embedded-store URL, or None for other engines."""
    if url.startswith("local://"):
        return url[len("local://"):] or "/"
    if "://" in url:
        return None
    return url


async def open_engine(url: str, *, create: bool = False) -> KVEngine:
    """Open the metadata engine named by ``url`` (see module docstring).

    An embedded store's directory is only created when ``create`` (format); opening a
    missing one for anything else is an error, so a typo never leaves a new empty store.
    """
    if url == "mem://" or url.startswith("mem://"):
        return MemoryEngine()
    if url.startswith("etcd://"):
        from kvfs.kv.etcd import EtcdEngine

        try:
            return await EtcdEngine.open(url)
        except ValueError as exc:
            raise VolumeError(str(exc)) from None
    if url.startswith("raft://"):
        from kvfs.raftkv.client import RaftClientEngine

        try:
            return await RaftClientEngine.open(url)
        except ValueError as exc:
            raise VolumeError(str(exc)) from None
    path = embedded_dir(url)
    if path is None:
        scheme = url.split("://", 1)[0]
        raise VolumeError(f"unsupported metadata URL scheme {scheme!r} "
                          "(use a directory path, local:///PATH, etcd://HOST:PORT/PREFIX, "
                          "raft://HOST:PORT/PREFIX or mem://)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise VolumeError(f"{path}: not a directory")
    from kvfs.raftkv.embedded import holds_volume, open_embedded

    if not create and not holds_volume(path):
        raise VolumeError(f"{path}: no kvfs volume here (run `kvfs format` first)")
    return await open_embedded(path, create=create)


async def read_format(kv: KVEngine) -> VolumeFormat | None:
    raw = await kv.get(keys.SETTING)
    return VolumeFormat.decode(raw.value) if raw else None


async def make_store(fmt: VolumeFormat, kv: KVEngine, cache: CacheSettings | None = None
                     ) -> tuple[ObjectStore, KVEngine | None]:
    """The volume's block store, and the separate engine it opened (to close), if any.
    ``cache`` puts a local disk cache in front of blocks that live across the network (a
    separate etcd bucket, or a shared metadata engine); local blocks get none."""
    store, engine = await _block_store(fmt, kv)
    if cache is not None and (engine is not None or (fmt.storage == "kv" and kv.shared)):
        try:
            store = await open_cache(store, cache, fmt.uuid)
        except BaseException:
            if engine is not None:
                await engine.aclose()
            raise
    return store, engine


async def _block_store(fmt: VolumeFormat, kv: KVEngine) -> tuple[ObjectStore, KVEngine | None]:
    if fmt.storage == "file":
        return ChecksummedStore(LocalDirStore(fmt.bucket)), None
    if fmt.storage == "kv":
        return ChecksummedStore(KVBlobStore(kv)), None
    if fmt.storage == "etcd":
        bucket = await open_engine(fmt.bucket)
        return ChecksummedStore(KVBlobStore(bucket)), bucket
    raise VolumeError(f"unknown storage kind {fmt.storage!r}")


async def format_volume(kv: KVEngine, name: str, *, storage: str = "kv", bucket: str = "",
                        block_kib: int | None = None, force: bool = False,
                        root_mode: int | None = None,
                        root_owner: tuple[int, int] | None = None,
                        history: HistorySettings | None = None,
                        trash_days: float | None = None) -> VolumeFormat:
    """Write a new volume's format record and root directory.

    The root is made as mkfs makes one: ``root_mode`` 0755 and owned by the formatting
    process's effective uid and gid unless ``root_owner`` names others.  A volume that
    several hosts mount with ``allow_other`` must not let every local user write at its top.

    Refuses an already formatted engine unless ``force`` (which only rewrites the format
    record's changeable fields -- it never erases data; the root's mode and owner are not
    among them: chmod and chown it on a mount).  ``history`` and ``trash_days`` None keep
    an existing volume's settings, or give a new one the defaults.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise VolumeError(f"invalid volume name {name!r} (letters, digits, - _ . only)")
    if storage not in ("kv", "file", "etcd"):
        raise VolumeError(f"unknown storage {storage!r} (choose kv, file or etcd)")
    if storage == "etcd" and not bucket.startswith("etcd://"):
        raise VolumeError("--storage etcd needs --bucket etcd://HOST:PORT[,...]/PREFIX")
    if storage == "file":
        if not bucket:
            raise VolumeError("--storage file needs --bucket DIRECTORY")
        bucket = os.path.abspath(bucket)
        if os.path.exists(bucket) and not os.path.isdir(bucket):
            raise VolumeError(f"{bucket}: bucket is not a directory")
    kib = block_kib if block_kib is not None else DEFAULT_BLOCK_KIB[storage]
    if kib <= 0 or kib > 64 * 1024:
        raise VolumeError(f"block size {kib} KiB out of range (1..65536)")
    block_size = kib * 1024
    block_engine = kv
    if storage == "etcd":
        block_engine = await open_engine(bucket)  # also proves the bucket is reachable
        await block_engine.aclose()
    if storage != "file" and block_size + 4096 > block_engine.limits.max_value_bytes:
        raise VolumeError(f"block size {kib} KiB does not fit the engine's value limit of "
                          f"{block_engine.limits.max_value_bytes // 1024} KiB")
    old = await read_format(kv)
    if old is not None and not force:
        raise VolumeError(f"already formatted as volume {old.name!r} (use --force to "
                          "update its settings)")
    if old is not None and (root_mode is not None or root_owner is not None):
        raise VolumeError("the root's mode and owner are set when a volume is created; "
                          "change them with chmod and chown on a mount")
    if old is not None and (old.storage != storage or old.block_size != block_size):
        raise VolumeError(f"--force cannot change the storage or block size of volume "
                          f"{old.name!r} (it has storage {old.storage} and "
                          f"{old.block_size // 1024} KiB blocks)")
    if history is None:
        history = old.history_settings if old else HistorySettings()
    if history.days < 0 or history.versions < 1:
        raise VolumeError("history needs days >= 0 (0: off) and versions >= 1")
    if trash_days is None:
        trash_days = old.trash_days if old else trash.DEFAULT_DAYS
    check_trash_days(trash_days)
    fmt = VolumeFormat(name, old.uuid if old else str(uuid.uuid4()), block_size, storage,
                       bucket, FORMAT_VERSION, old.created if old else int(time.time()),
                       history.to_dict(), float(trash_days))
    if storage == "file":
        make_dirs(bucket)  # durably: a power cut must not take the bucket
    from kvfs.kv.api import Put

    await kv.commit([], [Put(keys.SETTING, fmt.encode())])
    uid, gid = root_owner if root_owner is not None else (os.geteuid(), os.getegid())
    await Metadata(kv).init_root(uid, gid, 0o755 if root_mode is None else root_mode)
    return fmt


@dataclass(slots=True)
class Volume:
    """An open volume: its engine, format, block store and metadata."""

    kv: KVEngine
    fmt: VolumeFormat
    store: ObjectStore
    slices: SliceStore
    meta: Metadata
    data_dir: str | None = None  # the embedded store's directory
    block_engine: KVEngine | None = None  # a separate engine holding blocks (--storage etcd)

    @property
    def cache(self) -> CachedEngine:
        """The record cache the volume's metadata reads and commits through."""
        kv = self.meta.kv
        assert isinstance(kv, CachedEngine)
        return kv

    def free_space(self) -> int | None:
        """Bytes the storage under this volume can still take (blocking: statvfs), or None
        when there is no local figure (an in-memory or remote engine)."""
        path = self.fmt.bucket if self.fmt.storage == "file" else self.data_dir
        if not path:
            return None
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    async def aclose(self) -> None:
        await self.store.aclose()
        if self.block_engine is not None:
            await self.block_engine.aclose()
        await self.kv.aclose()


async def open_volume(url: str, *, kv: KVEngine | None = None, session_id: int = 0,
                      cache: CacheSettings | None = None) -> Volume:
    """Open a formatted volume; VolumeError if ``url`` holds none.  ``cache``: the mount's
    disk block cache (see make_store); none by default."""
    kv = kv or await open_engine(url)
    try:
        fmt = await read_format(kv)
        if fmt is None:
            raise VolumeError(f"{url}: not a formatted kvfs volume (run `kvfs format` first)")
        store, block_engine = await make_store(fmt, kv, cache)
    except BaseException:
        await kv.aclose()
        raise
    slices = SliceStore(store, fmt.block_size)
    path = embedded_dir(url)
    # Metadata reads and commits through the mount's record cache.
    cached = CachedEngine(kv, prefix=keys.INODE_PREFIX, group_of=keys.listing_group)
    meta = Metadata(cached, session_id=session_id)
    return Volume(kv, fmt, store, slices, meta,
                  os.path.abspath(path) if path and not url.startswith("mem://") else None,
                  block_engine)
