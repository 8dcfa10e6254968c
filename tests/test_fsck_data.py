"""fsck reads every block: corrupt and missing blocks are reported with the file and block.

Covered on every storage kind -- a ``--storage file`` bucket through a real mount and the
CLI, blocks in the memory engine and in the embedded store (``kv``), blocks in a separate
etcd (``etcd``) -- plus ``--skip-data``, reading each block once, ``G``-queued slices, an
engine outage during verification and the progress line.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from fsapi import ROOT, mkdir, mkfile, open_test_fs, read_all
from mounting import Mount, kvfs

from kvfs.cli.fsck import ProgressLine
from kvfs.kv.api import EngineUnavailable, KVEngine, Put
from kvfs.kv.local import MemoryEngine
from kvfs.meta import keys
from kvfs.meta.fsck import DataProgress, check
from kvfs.objstore.api import ObjectStore, ObjectStoreError
from kvfs.objstore.checksum import HEADER_SIZE
from kvfs.raftkv.embedded import open_embedded
from kvfs.vfs.fs import FileSystem
from kvfs.volume import format_volume, open_volume

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

BLOCK = 64 * 1024


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def _block_files(bucket: Path) -> list[Path]:
    return sorted(p for p in (bucket / "chunks").rglob("*") if p.is_file())


@pytest.mark.mount
def test_cli_fsck_finds_a_flipped_byte_in_a_file_bucket(tmp_path: Path) -> None:
    store, bucket = tmp_path / "store", tmp_path / "bucket"
    kvfs("format", "--storage", "file", "--bucket", str(bucket), "--block-size", "64",
         str(store), "vol")
    m = Mount(str(store), tmp_path / "mnt")
    try:
        (m.mountpoint / "etc").mkdir()
        (m.mountpoint / "etc" / "data.bin").write_bytes(os.urandom(3 * BLOCK))
        m.unmount()
    finally:
        m.cleanup()
    blocks = _block_files(bucket)
    assert len(blocks) == 3
    victim = blocks[1]
    name = victim.relative_to(bucket).as_posix()
    clean = kvfs("fsck", str(store), check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "3 blocks, 3 verified (192.0 KiB): 0 problems" in clean.stdout

    _flip(victim, HEADER_SIZE + 100)
    for args in ((), ("--leaked",)):
        res = kvfs("fsck", *args, str(store), check=False)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stdout.splitlines()
        assert len(lines) == 2, res.stdout
        assert lines[0].startswith("file /etc/data.bin (inode "), lines[0]
        assert f"chunk 0: block {name} is corrupt: checksum mismatch" in lines[0]
        assert lines[1].endswith("3 verified (192.0 KiB): 1 problems")
    skipped = kvfs("fsck", "--skip-data", str(store), check=False)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert skipped.stdout.endswith("3 blocks, data not verified: 0 problems\n")

    victim.unlink()
    for args in ((), ("--skip-data",)):
        res = kvfs("fsck", *args, str(store), check=False)
        assert res.returncode == 1, res.stdout + res.stderr
        first = res.stdout.splitlines()[0]
        assert first.startswith("file /etc/data.bin (inode "), first
        assert first.endswith(f"chunk 0: block {name} is missing from the object store")


async def _corrupt_kv_block(kv: KVEngine) -> str:
    """Flip a data byte of one stored ``B`` block value; returns the block's name."""
    res = await kv.range(b"Bchunks/", b"Bchunks0")
    item = res.kvs[0]
    raw = bytearray(item.value)
    raw[-1] ^= 0x80
    await kv.commit((), [Put(item.key, bytes(raw))])
    return item.key[1:].decode()


@pytest.fixture
async def kv_fs() -> AsyncIterator[FileSystem]:
    # No fsck on teardown: these tests damage the volume on purpose.
    async with open_test_fs("kv") as fs:
        yield fs


async def test_corrupt_block_value_in_the_engine(kv_fs: FileSystem) -> None:
    fs = kv_fs
    d = await mkdir(fs, ROOT, b"dir")
    ino = await mkfile(fs, d, b"f\xffile", b"x" * 5000)
    kv = fs.meta.kv
    name = await _corrupt_kv_block(kv)
    rep = await check(kv, fs.slices.store, fs.slices.block_size)
    assert rep.problems == [
        f"file /dir/f\\xffile (inode {ino}), chunk 0: block {name} is corrupt: "
        f"checksum mismatch" + rep.problems[0].split("checksum mismatch", 1)[1]]
    assert (rep.data_verified, rep.verified_blocks, rep.verified_bytes) == (True, 1, 5000)
    skipped = await check(kv, fs.slices.store, fs.slices.block_size, verify_data=False)
    assert skipped.problems == [] and not skipped.data_verified


async def test_unlinked_open_file_is_named_by_inode(kv_fs: FileSystem) -> None:
    fs = kv_fs
    ino = await mkfile(fs, ROOT, b"gone", b"y" * 100)
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        await fs.unlink(ROOT, b"gone")
        kv = fs.meta.kv
        name = await _corrupt_kv_block(kv)
        rep = await check(kv, fs.slices.store, fs.slices.block_size)
        assert len(rep.problems) == 1
        assert rep.problems[0].startswith(
            f"inode {ino} (no path), chunk 0: block {name} is corrupt")
    finally:
        await fs.release(fh)


class CountingStore(ObjectStore):
    """Passes everything to ``inner`` and counts the names ``get`` was asked for."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.gets: list[str] = []

    async def put(self, name: str, data: bytes) -> None:
        await self.inner.put(name, data)

    async def get(self, name: str) -> bytes:
        self.gets.append(name)
        return await self.inner.get(name)

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for name in self.inner.list(prefix):
            yield name


async def test_each_block_read_once_and_named_for_every_file(kv_fs: FileSystem) -> None:
    """A slice two chunk records list is read once; a problem names both files."""
    fs = kv_fs
    a = await mkfile(fs, ROOT, b"a", os.urandom(2 * fs.slices.block_size + 10))
    b = await mkfile(fs, ROOT, b"b", b"")
    kv = fs.meta.kv
    chunk = await kv.get(keys.chunk(a, 0))
    assert chunk is not None
    await kv.commit((), [Put(keys.chunk(b, 0), chunk.value)])
    counting = CountingStore(fs.slices.store)
    rep = await check(kv, counting, fs.slices.block_size)
    assert rep.problems == []
    assert len(counting.gets) == len(set(counting.gets)) == rep.blocks == 3
    name = await _corrupt_kv_block(kv)
    rep = await check(kv, counting, fs.slices.block_size)
    assert [p.split(":")[0] for p in rep.problems] == [
        f"file /a (inode {a}), chunk 0", f"file /b (inode {b}), chunk 0"]
    assert all(f"block {name} is corrupt" in p for p in rep.problems)


async def test_queued_slices_are_neither_required_nor_leaked(kv_fs: FileSystem) -> None:
    """The cleaner deletes a G record's blocks before the record: after a crash between
    the two, the rest of its blocks are neither missing nor leaked, and are not read."""
    fs = kv_fs
    ino = await mkfile(fs, ROOT, b"f", os.urandom(2 * fs.slices.block_size))
    await fs.unlink(ROOT, b"f")
    await fs.cleaner.delete_inode_data(ino)  # the chunk moves to a G record
    blocks = sorted([n async for n in fs.slices.store.list("chunks/")])
    assert len(blocks) == 2
    await fs.slices.store.delete(blocks[0])  # the cleaner got this far, then crashed
    counting = CountingStore(fs.slices.store)
    rep = await check(fs.meta.kv, counting, fs.slices.block_size, leaked_blocks=True)
    assert rep.problems == []
    assert counting.gets == []
    await fs.cleaner.run_once()
    rep = await check(fs.meta.kv, fs.slices.store, fs.slices.block_size, leaked_blocks=True)
    assert (rep.problems, rep.blocks, rep.slices) == ([], 0, 0)


async def test_engine_outage_aborts_verification(kv_fs: FileSystem) -> None:
    """An unreachable engine is not a problem of each block: fsck stops with the error."""
    fs = kv_fs
    await mkfile(fs, ROOT, b"f", b"z" * 10)

    class Unreachable(CountingStore):
        async def get(self, name: str) -> bytes:
            err = ObjectStoreError(f"get of block {name!r} failed: unreachable")
            err.__cause__ = EngineUnavailable("unreachable")
            raise err

    with pytest.raises(ObjectStoreError):
        await check(fs.meta.kv, Unreachable(fs.slices.store), fs.slices.block_size)


async def test_embedded_store_value_file_damage(tmp_path: Path) -> None:
    """``kv`` storage on the embedded store: a block over 64 KiB is a value file, which
    the engine verifies itself; the CLI's fsck reports the block and the file.  (A file
    whose entry is still in the log is rewritten from it at the next open; here every
    entry is covered by a snapshot.)"""
    store = tmp_path / "store"
    kv = await open_embedded(str(store), create=True, snapshot_every=1)
    await format_volume(kv, "vol", block_kib=128)
    vol = await open_volume(str(store), kv=kv)
    try:
        fs = FileSystem(vol.meta, vol.slices)
        ino = await mkfile(fs, ROOT, b"big", os.urandom(100 * 1024))
        assert len(await read_all(fs, ino)) == 100 * 1024
    finally:
        await vol.aclose()
    (value,) = (store / "raft" / "values").iterdir()
    _flip(value, 5000)
    res = kvfs("fsck", str(store), check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"file /big (inode {ino}), chunk 0: block chunks/"), first
    assert "cannot be read" in first
    assert kvfs("fsck", "--skip-data", str(store), check=False).returncode == 0


async def test_blocks_in_a_separate_etcd(etcd_single: Member) -> None:
    kv = MemoryEngine()
    bucket = f"etcd://{etcd_single.endpoint}/{unique_prefix('fsckblk')}"
    await format_volume(kv, "t", storage="etcd", bucket=bucket, block_kib=64)
    vol = await open_volume("mem://", kv=kv)
    try:
        fs = FileSystem(vol.meta, vol.slices)
        ino = await mkfile(fs, ROOT, b"conf", os.urandom(BLOCK + 1))
        assert vol.block_engine is not None
        res = await vol.block_engine.range(b"Bchunks/", b"Bchunks0")
        assert len(res.kvs) == 2
        item = res.kvs[0]
        await vol.block_engine.commit((), [Put(item.key, item.value[:-1])])  # torn block
        rep = await check(kv, vol.store, vol.fmt.block_size)
        assert len(rep.problems) == 1, rep.problems
        assert rep.problems[0].startswith(
            f"file /conf (inode {ino}), chunk 0: block {item.key[1:].decode()} is corrupt")
        assert (await check(kv, vol.store, vol.fmt.block_size, verify_data=False)
                ).problems == []
    finally:
        await vol.aclose()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(blocks: int, nbytes: int) -> DataProgress:
    return DataProgress(blocks, 10, nbytes, 10 << 20)


def test_progress_draws_a_bar_on_a_terminal() -> None:
    out = _Terminal()
    line = ProgressLine(out)
    line(_progress(0, 0))  # drawn at once, over the bytes to read
    assert out.getvalue().startswith("\rverifying data:   0%|"), repr(out.getvalue())
    line(_progress(10, 10 << 20))
    line.close()  # ... and erased before the result is printed
    assert out.getvalue().endswith(" \r"), repr(out.getvalue())


def test_progress_in_a_log_is_a_line_now_and_then() -> None:
    now = [0.0]
    out = io.StringIO()
    line = ProgressLine(out, clock=lambda: now[0])
    line(_progress(0, 0))
    now[0] = 5.0
    line(_progress(3, 3 << 20))
    assert out.getvalue() == ""
    now[0] = 11.0
    line(_progress(4, 4 << 20))
    line(_progress(10, 10 << 20))
    line.close()
    assert out.getvalue() == ("verifying data: 4/10 blocks, 4.0 MiB of 10.0 MiB (40%)\n"
                              "verifying data: 10/10 blocks, 10.0 MiB of 10.0 MiB (100%)\n")
    quick = io.StringIO()
    line = ProgressLine(quick, clock=lambda: 0.0)
    line(_progress(0, 0))
    line(_progress(10, 10 << 20))
    assert quick.getvalue() == ""


def test_help_names_the_skip_option() -> None:
    out = kvfs("fsck", "--help").stdout
    assert "--skip-data" in out and "checksum" in out
