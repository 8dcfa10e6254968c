"""Readahead and parallel block fetches (kvfs.chunk.filedata, kvfs.chunk.slices).

Three levels:

* the readahead window's bookkeeping (pure): sequential streams start it after two reads,
  it doubles up to its bound and is topped up without gaps or overlaps, never past EOF,
  and a read elsewhere drops it;
* :class:`FileData` over a store that counts its calls (a volume in memory): sequential
  reads fetch every block once and ahead of the reader, the concurrent requests of one
  large read fetch a shared block once, random reads fetch nothing ahead;
* real FUSE mounts of one etcd volume: a file larger than a chunk read on the other mount
  sequentially, at random places, strided and past its end returns exactly its bytes, and
  after the first mount overwrites, extends and truncates it, an open on the second (close
  to open) reads exactly the new bytes even though readahead had fetched the old ones.
"""

from __future__ import annotations

import os
import random
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from fsapi import ROOT, mkfile
from mounting import Mount, kvfs

from kvfs.benchmarks.launch import free_port
from kvfs.chunk.filedata import _MAX_WINDOW, FileData, _Readahead
from kvfs.chunk.layout import CHUNK_SIZE
from kvfs.chunk.slices import SliceStore
from kvfs.kv.local import MemoryEngine
from kvfs.objstore.api import ObjectStore
from kvfs.vfs.fs import FileSystem
from kvfs.volume import format_volume, open_volume

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

MiB = 1 << 20


# -- the window (pure) ------------------------------------------------------------------


def test_a_sequential_stream_is_read_ahead_in_a_growing_window() -> None:
    ra = _Readahead()
    size, bs, cap = 200 * MiB, MiB, 16 * MiB
    fetched: list[tuple[int, int]] = []
    windows = []
    for off in range(0, size, 128 << 10):
        got = ra.advance(off, off + (128 << 10), size, bs, cap)
        if off == 0:
            assert got is None  # a lone read fetches nothing more
        if got is not None:
            fetched.append(got)
            windows.append(ra.window)
            assert got[0] >= off + (128 << 10) and got[1] <= size
    assert windows[0] == 2 * bs and max(windows) == cap
    assert windows == sorted(windows)  # it only grows while the pattern holds
    assert fetched[0][0] == 256 << 10
    for (_, stop), (start, _) in zip(fetched, fetched[1:], strict=False):
        assert start == stop  # contiguous: no gap, no block fetched twice
    assert fetched[-1][1] == size  # up to EOF, never past it


def test_random_reads_are_not_read_ahead_and_a_jump_starts_over() -> None:
    ra = _Readahead()
    size, bs, cap = 1 << 34, MiB, 16 * MiB
    rng = random.Random(1)
    offsets = sorted({rng.randrange(0, size // (4 * MiB)) * 4 * MiB for _ in range(200)})
    rng.shuffle(offsets)
    for off in offsets:
        assert ra.advance(off, off + 4096, size, bs, cap) is None
    assert ra.advance(8 * MiB, 9 * MiB, size, bs, cap) is None
    assert ra.advance(9 * MiB, 10 * MiB, size, bs, cap) == (10 * MiB, 12 * MiB)
    assert ra.advance(900 * MiB, 901 * MiB, size, bs, cap) is None  # elsewhere: dropped
    assert ra.window == 0
    # A window smaller than one block (a tiny cache) never reads ahead.
    tiny = _Readahead()
    for off in range(0, 8 * MiB, MiB):
        assert tiny.advance(off, off + MiB, size, 4 * MiB, 2 * MiB) is None


# -- FileData over a counting store ------------------------------------------------------


class Counting(ObjectStore):
    """Forwards to ``inner``, counting gets per block and the most in flight at once."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.gets: dict[str, int] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def put(self, name: str, data: bytes) -> None:
        await self.inner.put(name, data)

    async def get(self, name: str) -> bytes:
        self.gets[name] = self.gets.get(name, 0) + 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(0.001)  # a round trip: lets concurrent readers meet
            return await self.inner.get(name)
        finally:
            self.in_flight -= 1

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for name in self.inner.list(prefix):
            yield name


async def settled(slices: SliceStore) -> None:
    """Wait until no block fetch (readahead included) is under way."""
    while slices._inflight:
        await trio.sleep(0.01)


@dataclass
class Cold:
    fd: FileData
    store: Counting
    slices: SliceStore
    data: bytes


@pytest.fixture
async def cold() -> AsyncIterator[Cold]:
    """A file of 24 MiB + 5 bytes (1 MiB blocks) written through one FileSystem, and a
    FileData reading it through a new, empty block cache over a counting store."""
    kv = MemoryEngine()
    await format_volume(kv, "ra", block_kib=1024)
    vol = await open_volume("mem://", kv=kv)
    fs = FileSystem(vol.meta, vol.slices)
    data = random.Random(3).randbytes(24 * MiB + 5)
    ino = await mkfile(fs, ROOT, b"f", data)
    store = Counting(vol.store)
    slices = SliceStore(store, vol.fmt.block_size)
    try:
        yield Cold(FileData(ino, vol.meta, slices), store, slices, data)
    finally:
        await vol.aclose()


async def test_sequential_reads_fetch_each_block_once_and_ahead(cold: Cold) -> None:
    fd, store, slices, data = cold.fd, cold.store, cold.slices, cold.data
    out = bytearray()
    for off in range(0, len(data) + 1, 128 << 10):
        out += await fd.read(off, 128 << 10, len(data))
    assert out == data
    await settled(slices)
    assert len(store.gets) == 25 and set(store.gets.values()) == {1}
    assert slices.prefetched >= 20  # nearly every block was fetched before it was read
    assert store.most_in_flight > 1


async def test_the_requests_of_one_large_read_share_their_block_fetch(cold: Cold) -> None:
    fd, store, slices, data = cold.fd, cold.store, cold.slices, cold.data
    got: dict[int, bytes] = {}

    async def request(off: int) -> None:
        got[off] = await fd.read(off, 128 << 10, len(data))

    async with trio.open_nursery() as nursery:  # as the kernel sends them: together
        for off in range(5 * MiB, 7 * MiB, 128 << 10):
            nursery.start_soon(request, off)
    for off, chunk in got.items():
        assert chunk == data[off:off + (128 << 10)]
    await settled(slices)
    assert set(store.gets.values()) == {1}, store.gets


async def test_random_reads_fetch_only_what_they_read(cold: Cold) -> None:
    fd, store, slices, data = cold.fd, cold.store, cold.slices, cold.data
    rng = random.Random(9)
    blocks = list(range(24))
    rng.shuffle(blocks)
    for b in blocks[:12]:
        off = b * MiB + rng.randrange(0, MiB - 8192)
        assert await fd.read(off, 8192, len(data)) == data[off:off + 8192]
    await settled(slices)
    assert slices.prefetched == 0 and len(store.gets) == 12
    # One read spanning blocks fetches them concurrently.
    assert await fd.read(MiB // 2, 5 * MiB, len(data)) == data[MiB // 2:MiB // 2 + 5 * MiB]
    assert store.most_in_flight > 1
    assert _MAX_WINDOW >= 16 * MiB


# -- real mounts -----------------------------------------------------------------------


def drop_kernel_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def readahead_blocks(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("kvfs_block_readahead_total "):
                return float(line.split()[1])
    raise AssertionError("kvfs_block_readahead_total not exported")


@pytest.fixture
def hosts(etcd_single: Member, tmp_path: Path) -> Iterator[tuple[Mount, Mount, int]]:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('ra')}"
    kvfs("format", url, "ra")
    port = free_port()
    ms: list[Mount] = []
    try:
        ms.append(Mount(url, tmp_path / "a", "metrics=off"))
        ms.append(Mount(url, tmp_path / "b", f"metrics=127.0.0.1:{port}"))
        yield ms[0], ms[1], port
    finally:
        for m in reversed(ms):
            m.cleanup()


def read_in(path: Path, step: int) -> bytes:
    out = bytearray()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(step):
            out += chunk
    return bytes(out)


def test_reads_on_the_other_mount_return_exactly_the_bytes(
        hosts: tuple[Mount, Mount, int]) -> None:
    a, b, port = hosts
    size = CHUNK_SIZE + 3 * MiB + 77  # crosses a chunk boundary, ends mid-block
    data = random.Random(11).randbytes(size)
    (a.mountpoint / "f").write_bytes(data)
    f = b.mountpoint / "f"
    drop_kernel_caches()
    rng = random.Random(12)
    fd = os.open(f, os.O_RDONLY)
    try:
        for _ in range(60):  # random places and lengths, some across blocks and chunks
            off = rng.randrange(0, size)
            n = rng.choice([1, 4096, 100_000, MiB + 3, 3 * MiB])
            assert os.pread(fd, n, off) == data[off:off + n]
        for off in range(CHUNK_SIZE - 5 * MiB, size, 3 * MiB + 4096):  # strided
            assert os.pread(fd, 64 << 10, off) == data[off:off + (64 << 10)]
        assert os.pread(fd, 4096, size) == b""  # at EOF
        assert os.pread(fd, 4096, size + 10 * MiB) == b""  # past it
        assert os.pread(fd, 4096, size - 10) == data[-10:]  # across it: short
    finally:
        os.close(fd)
    drop_kernel_caches()
    before = readahead_blocks(port)
    assert read_in(f, MiB) == data
    print(f"blocks read ahead during the sequential read: {readahead_blocks(port) - before}")
    assert readahead_blocks(port) > before


def test_a_file_changed_on_the_other_mount_reads_as_changed(
        hosts: tuple[Mount, Mount, int]) -> None:
    a, b, _ = hosts
    data = bytearray(random.Random(21).randbytes(20 * MiB))
    (a.mountpoint / "f").write_bytes(data)
    f = b.mountpoint / "f"
    with open(f, "rb", buffering=0) as r:
        assert r.read(6 * MiB) == data[:6 * MiB]  # readahead now holds old blocks ahead
        # Overwrite where readahead was fetching, extend, then check a new open on B.
        new = random.Random(22).randbytes(3 * MiB)
        with open(a.mountpoint / "f", "r+b") as w:
            w.seek(7 * MiB + 100)
            w.write(new)
            w.seek(0, os.SEEK_END)
            w.write(b"tail" * 1000)
        data[7 * MiB + 100:7 * MiB + 100 + len(new)] = new
        data += b"tail" * 1000
    assert read_in(f, MiB) == data
    assert read_in(f, 100_000) == data
    # Truncate on A, then grow it again with zeros: B reads no stale bytes.
    os.truncate(a.mountpoint / "f", 9 * MiB)
    os.truncate(a.mountpoint / "f", 12 * MiB)
    assert read_in(f, MiB) == bytes(data[:9 * MiB]) + bytes(3 * MiB)
