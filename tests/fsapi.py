"""Helpers for driving :class:`~kvfs.vfs.fs.FileSystem` without a kernel.

Used by ``conftest.py`` (the ``fs`` fixtures and their fsck on teardown) and by
``test_fs_api.py``.  Nothing here touches pyfuse3.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kvfs.errors import FSError
from kvfs.kv.api import prefix_end
from kvfs.kv.local import MemoryEngine
from kvfs.meta import keys
from kvfs.meta.fsck import check
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.metadata import Ctx
from kvfs.vfs.fs import FileSystem
from kvfs.volume import format_volume, open_volume

ROOT = ROOT_INO
USER = Ctx(1000, 1000)


@contextlib.asynccontextmanager
async def open_test_fs(storage: str = "kv", bucket: Path | None = None
                       ) -> AsyncIterator[FileSystem]:
    """A fresh volume on a :class:`MemoryEngine` (blocks in the engine, or in ``bucket``)."""
    kv = MemoryEngine()
    await format_volume(kv, "test", storage=storage, bucket=str(bucket) if bucket else "")
    vol = await open_volume("mem://", kv=kv)
    try:
        yield FileSystem(vol.meta, vol.slices)
    finally:
        await vol.aclose()


async def fsck_problems(fs: FileSystem, *, leaked_blocks: bool = True) -> list[str]:
    rep = await check(fs.meta.kv, fs.slices.store, fs.slices.block_size,
                      leaked_blocks=leaked_blocks)
    return rep.problems


async def assert_consistent(fs: FileSystem) -> None:
    """Teardown check: flush everything, fsck, run one cleaner round, fsck again."""
    await fs.flush_all()
    problems = await fsck_problems(fs)
    if not problems:
        await fs.cleaner.run_once()
        problems = [f"after cleanup: {p}" for p in await fsck_problems(fs)]
    if problems:
        pytest.fail("fsck found problems:\n  " + "\n  ".join(problems), pytrace=False)


@contextlib.contextmanager
def raises_errno(err: int) -> Iterator[pytest.ExceptionInfo[FSError]]:
    """``with raises_errno(errno.ENOENT): ...`` -- an FSError with exactly that errno."""
    with pytest.raises(FSError) as info:
        yield info
    got = info.value.errno
    assert got == err, f"expected {errno.errorcode[err]}, got {errno.errorcode.get(got, got)}"


async def mkfile(fs: FileSystem, parent: int, name: bytes, data: bytes = b"",
                 mode: int = 0o644, ctx: Ctx = USER) -> int:
    """Create ``parent/name`` holding ``data``; returns its inode (no handle left open)."""
    fh, ino, _ = await fs.create(ctx, parent, name, mode, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        if data:
            await fs.write(fh, 0, data)
    finally:
        await fs.release(fh)
    return ino


async def mkdir(fs: FileSystem, parent: int, name: bytes, mode: int = 0o755,
                ctx: Ctx = USER) -> int:
    ino, _ = await fs.mkdir(ctx, parent, name, mode)
    return ino


async def read_all(fs: FileSystem, ino: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        size = (await fs.getattr(ino)).size
        return await fs.read(fh, 0, size + 1)
    finally:
        await fs.release(fh)


async def names(fs: FileSystem, ino: int) -> dict[bytes, int]:
    """name -> inode of every entry of directory ``ino`` (without ``.`` and ``..``)."""
    return {e.name: e.ino for e in await fs.meta.readdir(ino)}


async def inode_keys(fs: FileSystem, ino: int) -> list[bytes]:
    prefix = keys.inode_all(ino)
    res = await fs.meta.kv.range(prefix, prefix_end(prefix), keys_only=True)
    return [kv.key for kv in res.kvs]


async def queued_for_deletion(fs: FileSystem) -> set[int]:
    res = await fs.meta.kv.range(keys.DELFILE_PREFIX, prefix_end(keys.DELFILE_PREFIX),
                                 keys_only=True)
    return {keys.key_ino(kv.key) for kv in res.kvs}


async def stored_blocks(fs: FileSystem) -> set[str]:
    return {name async for name in fs.slices.store.list("chunks/")}
