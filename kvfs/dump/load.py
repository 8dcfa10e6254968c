"""``kvfs load``: a dump file (:mod:`kvfs.dump.format`) into an empty engine, streamed.

The target must hold no key at all; the loaded volume keeps the dumped volume's name,
uuid, block size and history settings, with the storage the load names (blocks in the
target engine by default, or ``file``/``etcd`` with a bucket, as ``kvfs format``).  A dump
made without ``--with-data`` has no blocks: it can only be loaded with a storage whose
bucket already holds the source's blocks (the same directory or etcd prefix).

Writes go in transactions of at most :data:`MAX_PUTS` puts (etcd allows 128 operations)
and under the engine's request size; a key whose value exceeds the engine's value limit
fails the load.  Blocks stored in the target engine ride in the same transactions; blocks
of another store are put one by one.  The format record is written last, so a partial
load is never a volume.

Failure handling: a dump read from a regular file is verified whole (every checksum, the
trailer) before the target is touched, so a damaged or truncated file changes nothing.
A dump read from a pipe is verified as it is loaded; when it turns out damaged -- or the
load fails for any other reason, or is interrupted -- everything written is removed again
(every key of the target, which was empty, and the blocks put into a separate store), and
an embedded store directory the load created is removed.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import BinaryIO

import trio

from kvfs.errors import VolumeError
from kvfs.kv.api import Delete, KVEngine, Put
from kvfs.meta import keys
from kvfs.objstore.api import ObjectStore
from kvfs.objstore.checksum import HEADER_SIZE
from kvfs.volume import VolumeFormat, embedded_dir, make_store, open_engine

from .format import BLOCK, KEY, DumpReader, Header, block_record, key_record

MAX_PUTS = 64
# Bytes kept free in a request for the engine's framing beyond the puts' own sizes.
_REQUEST_MARGIN = 16 * 1024


@dataclass(slots=True)
class LoadSummary:
    keys: int = 0
    blocks: int = 0
    block_bytes: int = 0
    bytes_read: int = 0
    verified_first: bool = False  # the whole file was verified before loading


def check_storage(storage: str, bucket: str) -> str:
    """The bucket for ``storage`` (a directory made absolute); VolumeError when the pair
    is unusable.  Checked before anything is opened."""
    if storage not in ("kv", "file", "etcd"):
        raise VolumeError(f"unknown storage {storage!r} (choose kv, file or etcd)")
    if storage == "kv":
        if bucket:
            raise VolumeError("--bucket goes with --storage file or etcd")
        return ""
    if storage == "etcd":
        if not bucket.startswith("etcd://"):
            raise VolumeError("--storage etcd needs --bucket etcd://HOST:PORT[,...]/PREFIX")
        return bucket
    if not bucket:
        raise VolumeError("--storage file needs --bucket DIRECTORY")
    bucket = os.path.abspath(bucket)
    if os.path.exists(bucket) and not os.path.isdir(bucket):
        raise VolumeError(f"{bucket}: bucket is not a directory")
    return bucket


async def verify(src: BinaryIO) -> LoadSummary:
    """Read the whole dump in ``src`` and check it; DumpFileError where it breaks."""
    r = DumpReader(src)
    await r.header()
    async for _ in r.records():
        pass
    return LoadSummary(r.keys, r.blocks, 0, r.offset, True)


def _seekable_file(src: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(src.fileno()).st_mode) and src.seekable()
    except (OSError, ValueError):
        return False


class _Loader:
    """Batches the writes of one load and remembers what to undo."""

    def __init__(self, kv: KVEngine, store: ObjectStore, fmt: VolumeFormat) -> None:
        self.kv = kv
        self.store = store
        self.fmt = fmt
        lim = kv.limits
        self.max_value = lim.max_value_bytes
        self.max_request = lim.max_request_bytes - _REQUEST_MARGIN
        self.max_puts = min(MAX_PUTS, lim.max_ops)
        self.puts: list[Put] = []
        self.bytes = 0
        self.wrote_keys = False
        self.external_blocks: list[str] = []  # put into a store outside the engine

    async def key(self, key: bytes, value: bytes) -> None:
        if len(value) > self.max_value:
            raise VolumeError(f"key {key!r} has a {len(value)}-byte value; the target engine "
                              f"takes values up to {self.max_value} bytes")
        await self._add(Put(key, value))

    async def block(self, name: str, data: bytes) -> None:
        inline = self.store.inline_puts(name, data, self.kv)
        if inline is None:
            self.external_blocks.append(name)
            await self.store.put(name, data)
            return
        for put in inline:
            await self._add(put)

    async def _add(self, put: Put) -> None:
        size = len(put.key) + len(put.value) + 16
        if self.puts and (len(self.puts) >= self.max_puts or self.bytes + size > self.max_request):
            await self.flush()
        self.puts.append(put)
        self.bytes += size

    async def flush(self) -> None:
        if not self.puts:
            return
        self.wrote_keys = True
        await self.kv.commit((), self.puts)
        self.puts, self.bytes = [], 0

    async def undo(self) -> None:
        """Remove every key of the target (it was empty) and the blocks put elsewhere."""
        with trio.CancelScope(shield=True):
            if self.wrote_keys:
                await self.kv.commit((), (), [Delete(b"", b"\x00")])
            for name in self.external_blocks:
                await self.store.delete(name)


async def load_into(kv: KVEngine, src: BinaryIO, *, storage: str, bucket: str,
                    progress: Callable[[LoadSummary], None] | None = None) -> LoadSummary:
    """Load the dump in ``src`` into the empty engine ``kv`` (see module docstring)."""
    summary = LoadSummary()
    r = DumpReader(src)
    header = await r.header()
    fmt = _target_format(header, storage, bucket)
    first = await kv.range(b"", b"\x00", limit=1, keys_only=True)
    if first.kvs:
        raise VolumeError(f"the target engine is not empty (it holds {first.kvs[0].key!r}); "
                          "load needs an empty one")
    if fmt.storage == "kv" and fmt.block_size + HEADER_SIZE > kv.limits.max_value_bytes:
        raise VolumeError(f"the volume's block size of {fmt.block_size // 1024} KiB does not "
                          f"fit the target engine's values; load with --storage file or etcd")
    if fmt.storage == "file" and not header.with_data and not os.path.isdir(fmt.bucket):
        raise VolumeError(f"{fmt.bucket}: no such bucket directory (the dump holds no data, "
                          "so the bucket must hold the source's blocks)")
    store, block_engine = await make_store(fmt, kv)
    loader = _Loader(kv, store, fmt)
    try:
        async for offset, kind, payload in r.records():
            if kind == KEY:
                key, value = key_record(offset, payload)
                if key == keys.SETTING:
                    continue  # the header's format record, rewritten for the target, goes last
                await loader.key(key, value)
            elif kind == BLOCK:
                name, data = block_record(offset, payload)
                await loader.block(name, data)
                summary.block_bytes += len(data)
            summary.keys, summary.blocks, summary.bytes_read = r.keys, r.blocks, r.offset
            if progress is not None and (r.keys + r.blocks) % 64 == 0:
                progress(summary)
        await loader.flush()
        await kv.commit((), [Put(keys.SETTING, fmt.encode())])
    except BaseException:
        await loader.undo()
        raise
    finally:
        await store.aclose()
        if block_engine is not None:
            await block_engine.aclose()
    summary.keys, summary.blocks, summary.bytes_read = r.keys, r.blocks, r.offset
    return summary


def _target_format(header: Header, storage: str, bucket: str) -> VolumeFormat:
    fmt = VolumeFormat.decode(header.volume)
    if not header.with_data and storage == "kv":
        raise VolumeError("the dump holds no data blocks (made without --with-data): load it "
                          "with --storage file or etcd and the --bucket holding the source's "
                          "blocks")
    return replace(fmt, storage=storage, bucket=bucket)


async def load(url: str, src: BinaryIO, *, storage: str = "kv", bucket: str = "",
               progress: Callable[[LoadSummary], None] | None = None) -> LoadSummary:
    """Load the dump in ``src`` into the engine at ``url``, which must be empty."""
    bucket = check_storage(storage, bucket)
    verified = _seekable_file(src)
    if verified:
        start = src.tell()
        await verify(src)
        src.seek(start)
    path = embedded_dir(url)
    made = path is not None and not os.path.exists(path)
    try:
        kv = await open_engine(url, create=True)
    except BaseException:
        if made and path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise
    ok = False
    try:
        summary = await load_into(kv, src, storage=storage, bucket=bucket, progress=progress)
        summary.verified_first = verified
        ok = True
        return summary
    finally:
        await kv.aclose()
        if made and not ok and path is not None:
            shutil.rmtree(path, ignore_errors=True)
