"""The disk block cache (kvfs.objstore.diskcache): bounded, checksummed, safe to delete.

The first half drives :class:`CachedStore` over an in-memory store that counts its calls, so
each property is checked exactly: the byte bound and LRU order, a corrupted cache file
dropped and the block fetched again (never returned), the directory removed under an open
cache, the index rebuilt from the directory by a new open (and temporary files a crash
left removed), one open per directory, and a size of 0 turning it off.  The second half
uses real mounts: two FUSE mounts of one etcd volume, each with its own cache directory --
reads fill it, a corrupted file is refetched with the right bytes, the directory may be
removed while mounted, the cache survives a remount (reads come from it, as the mount's
metrics show) -- and an embedded volume, which gets no cache at all.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import Mount, kvfs
from waiting import wait_until

from kvfs.benchmarks.launch import free_port
from kvfs.objstore.api import BlockNotFound, ObjectStore, ObjectStoreError, block_name
from kvfs.objstore.checksum import HEADER_SIZE
from kvfs.objstore.diskcache import CachedStore, CacheSettings, open_cache

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

UUID = "0f0e0d0c-0b0a-4908-8706-050403020100"


class CountingStore(ObjectStore):
    """An in-memory block store that counts ``get`` calls per name."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}

    async def put(self, name: str, data: bytes) -> None:
        self.blocks[name] = bytes(data)

    async def get(self, name: str) -> bytes:
        self.gets[name] = self.gets.get(name, 0) + 1
        try:
            return self.blocks[name]
        except KeyError:
            raise BlockNotFound(name) from None

    async def delete(self, name: str) -> None:
        self.blocks.pop(name, None)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for name in list(self.blocks):
            if name.startswith(prefix):
                yield name


def block(i: int, size: int = 1000) -> tuple[str, bytes]:
    data = random.Random(i).randbytes(size)
    return block_name(1000 + i, 0, size), data


async def put(store: CachedStore, name: str, data: bytes) -> None:
    await store.put(name, data)
    await store.settle()  # the cache fills in the background


async def get(store: CachedStore, name: str) -> bytes:
    data = await store.get(name)
    await store.settle()
    return data


def cache_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


async def open_cached(tmp_path: Path, inner: ObjectStore, blocks: int = 4) -> CachedStore:
    store = await open_cache(inner, CacheSettings(str(tmp_path / "cache"),
                                                  blocks * (1000 + HEADER_SIZE)), UUID)
    assert isinstance(store, CachedStore)
    return store


async def test_bounded_by_bytes_evicting_the_least_recently_used(tmp_path: Path) -> None:
    inner = CountingStore()
    store = await open_cached(tmp_path, inner)
    try:
        for i in range(4):
            await put(store, *block(i))  # write-through
        assert await get(store, block(0)[0]) == block(0)[1]  # 0 is now the most recent
        for i in range(4, 7):
            name, data = block(i)
            inner.blocks[name] = data
            assert await get(store, name) == data  # a miss, then cached
        assert store.cached_bytes <= store.capacity
        files = cache_files(Path(store.root))
        assert sum(f.stat().st_size for f in files) == store.cached_bytes
        assert len(files) == 4
        before = dict(inner.gets)
        for i in (0, 4, 5, 6):  # the four most recently used
            assert await get(store, block(i)[0]) == block(i)[1]
        assert inner.gets == before, "cached blocks were fetched again"
        assert await get(store, block(1)[0]) == block(1)[1]  # evicted: fetched
        assert inner.gets[block(1)[0]] == 1
        assert store.hits == 5 and store.misses == 4
    finally:
        await store.aclose()


async def test_a_corrupt_cache_file_is_dropped_and_the_block_fetched_again(
        tmp_path: Path) -> None:
    inner = CountingStore()
    store = await open_cached(tmp_path, inner)
    try:
        name, data = block(1)
        await put(store, name, data)
        path = Path(store.root, *name.split("/"))
        raw = bytearray(path.read_bytes())
        raw[HEADER_SIZE + 10] ^= 0xFF
        path.write_bytes(raw)
        assert await get(store, name) == data
        assert inner.gets[name] == 1 and store.corrupt == 1
        assert path.read_bytes()[HEADER_SIZE:] == data  # cached again, intact
        path.write_bytes(b"")  # a file a power cut left empty
        assert await get(store, name) == data
        assert inner.gets[name] == 2 and store.corrupt == 2
        assert await get(store, name) == data
        assert inner.gets[name] == 2
    finally:
        await store.aclose()


async def test_the_directory_may_be_removed_while_open(tmp_path: Path) -> None:
    inner = CountingStore()
    store = await open_cached(tmp_path, inner)
    try:
        for i in range(3):
            await put(store, *block(i))
        shutil.rmtree(tmp_path / "cache")
        for i in range(3):
            assert await get(store, block(i)[0]) == block(i)[1]
            assert inner.gets[block(i)[0]] == 1
        assert len(cache_files(Path(store.root))) == 3  # made again as needed
        await put(store, *block(7))
        assert (Path(store.root) / block(7)[0]).is_file()
    finally:
        await store.aclose()


async def test_a_new_open_finds_the_cached_blocks_and_clears_what_a_crash_left(
        tmp_path: Path) -> None:
    inner = CountingStore()
    store = await open_cached(tmp_path, inner)
    for i in range(3):
        await put(store, *block(i))
    await store.aclose()
    name = block(2)[0]
    torn = Path(store.root, *name.split("/")).with_name(".tmp-x")
    torn.write_bytes(b"half a block")
    store = await open_cached(tmp_path, inner)
    try:
        assert store.cached_bytes == 3 * (1000 + HEADER_SIZE)
        for i in range(3):
            assert await get(store, block(i)[0]) == block(i)[1]
        assert inner.gets == {} and store.hits == 3
        assert not torn.exists()
    finally:
        await store.aclose()
    # A smaller bound evicts the oldest files at open.
    small = await open_cache(inner, CacheSettings(str(tmp_path / "cache"),
                                                  2 * (1000 + HEADER_SIZE)), UUID)
    assert isinstance(small, CachedStore)
    try:
        assert len(cache_files(Path(small.root))) == 2
    finally:
        await small.aclose()


async def test_one_open_per_directory_and_size_zero_is_off(tmp_path: Path) -> None:
    inner = CountingStore()
    store = await open_cached(tmp_path, inner)
    try:
        second = await open_cache(inner, CacheSettings(str(tmp_path / "cache")), UUID)
        assert second is inner  # locked by the first: no cache rather than a shared bound
    finally:
        await store.aclose()
    again = await open_cached(tmp_path, inner)  # the lock went with the close
    await again.aclose()
    assert await open_cache(inner, CacheSettings(str(tmp_path / "c2"), 0), UUID) is inner
    assert not (tmp_path / "c2").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ObjectStoreError, match="cannot use cache_dir"):
        await open_cache(inner, CacheSettings(str(tmp_path / "file")), UUID)


async def test_a_failing_cache_never_fails_a_read(tmp_path: Path) -> None:
    inner = CountingStore()
    store = await open_cached(tmp_path, inner)
    try:
        name, data = block(3)
        inner.blocks[name] = data
        Path(store.root, "chunks").write_text("not a directory")  # every write fails
        assert await get(store, name) == data
        assert await get(store, name) == data
        assert inner.gets[name] == 2
    finally:
        await store.aclose()


# -- real mounts ------------------------------------------------------------------------


def scrape(port: int, metric: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(metric + " "):
                return float(line.split()[1])
    raise AssertionError(f"{metric} not exported")


def drop_kernel_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@pytest.fixture
def two_mounts(etcd_single: Member, tmp_path: Path) -> Iterator[tuple[str, Mount, Path]]:
    """An etcd volume (256 KiB blocks), mount A (disk cache beside it) and the parts of
    mount B, which each test mounts (and remounts) itself with a metrics port."""
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('bcache')}"
    kvfs("format", url, "bcache", "--block-size", "256")
    a = Mount(url, tmp_path / "a", "metrics=off")
    try:
        yield url, a, tmp_path
    finally:
        a.cleanup()


def mount_b(url: str, base: Path, port: int) -> Mount:
    return Mount(url, base / "b", f"cache_dir={base / 'bcache'}", f"metrics=127.0.0.1:{port}")


def test_mounts_fill_check_and_survive_with_their_cache(
        two_mounts: tuple[str, Mount, Path]) -> None:
    url, a, base = two_mounts
    data = random.Random(5).randbytes(3 << 20)
    (a.mountpoint / "f").write_bytes(data)
    wait_until(lambda: len(cache_files(base / "a.cache")) == 12,
               "mount A's writes filling its cache")
    port = free_port()
    b = mount_b(url, base, port)
    try:
        drop_kernel_caches()
        assert (b.mountpoint / "f").read_bytes() == data
        wait_until(lambda: len(cache_files(base / "bcache")) == 12,  # 256 KiB blocks
                   "mount B's reads filling its cache")
        files = cache_files(base / "bcache")
        assert scrape(port, "kvfs_disk_cache_misses_total") == 12
        b.unmount()
        # Corrupt one cached block, and the remounted B still reads the right bytes.
        victim = files[0]
        raw = bytearray(victim.read_bytes())
        raw[-1] ^= 0x01
        victim.write_bytes(raw)
        b = mount_b(url, base, port)
        drop_kernel_caches()
        assert (b.mountpoint / "f").read_bytes() == data
        assert scrape(port, "kvfs_disk_cache_corrupt_total") == 1
        assert scrape(port, "kvfs_disk_cache_hits_total") == 11  # survived the remount
        assert scrape(port, "kvfs_disk_cache_misses_total") == 1
        assert "fetching it again" in b.log_path.read_text()
        # Removed while mounted: reads refetch, and new blocks make the directory again.
        shutil.rmtree(base / "bcache")
        more = random.Random(6).randbytes(1 << 20)
        (a.mountpoint / "g").write_bytes(more)
        assert (b.mountpoint / "g").read_bytes() == more
        wait_until(lambda: len(cache_files(base / "bcache")) == 4, "the cache made again")
        b.unmount()
        b = mount_b(url, base, port)
        drop_kernel_caches()
        assert (b.mountpoint / "f").read_bytes() == data
        assert (b.mountpoint / "g").read_bytes() == more
    finally:
        b.cleanup()


def test_embedded_volumes_have_no_disk_cache(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    kvfs("format", str(store), "emb")
    m = Mount(str(store), tmp_path / "m", f"cache_dir={tmp_path / 'cache'}", "metrics=off")
    try:
        data = os.urandom(2 << 20)
        (m.mountpoint / "f").write_bytes(data)
        drop_kernel_caches()
        assert (m.mountpoint / "f").read_bytes() == data
    finally:
        m.cleanup()
    assert not (tmp_path / "cache").exists()
