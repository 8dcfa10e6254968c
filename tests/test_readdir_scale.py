"""Listing a big directory costs work linear in its size (issue 7, defect 5).

The kernel reads a directory in many calls, each taking what fits in its buffer and
resuming at the position after the last entry it took.  These tests stand in for the
kernel (a fake readdirplus buffer in place of ``pyfuse3.readdir_reply``) and count the
work each layer does -- entries materialised by ``FileSystem.readdir``, attributes
fetched, engine round trips, whole-directory reads -- instead of timing anything.
"""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import pytest
import trio
from fsapi import ROOT, USER, mkdir

from kvfs.fuse.ops import KvfsOperations
from kvfs.vfs.fs import FileSystem

N = 5000


def _name(i: int) -> bytes:
    # Lengths from 7 to 66 bytes, so records of many sizes share a buffer.
    return b"e%05d-" % i + b"x" * (i % 60)


async def _fill(fs: FileSystem, parent: int, names: list[bytes]) -> None:
    async def worker(k: int) -> None:
        for name in names[k::16]:
            await fs.mknod(USER, parent, name, stat.S_IFREG | 0o644)

    async with trio.open_nursery() as nursery:
        for k in range(16):
            nursery.start_soon(worker, k)


@dataclass
class Buffer:
    """One kernel readdirplus buffer of ``size`` bytes (the token of one call)."""

    size: int
    used: int = 0
    taken: list[tuple[bytes, int]] = field(default_factory=list)  # (name, next offset)


def _kernel_reply(token: Buffer, name: bytes, attrs: pyfuse3.EntryAttributes,
                  next_id: int) -> bool:
    # A fuse_direntplus record: 152 header bytes, the name, padded to 8 bytes.
    need = (152 + len(name) + 7) // 8 * 8
    if token.used + need > token.size:
        return False
    token.used += need
    token.taken.append((name, next_id))
    return True


@dataclass
class Work:
    entries: int = 0  # DirEntry items FileSystem.readdir handed out
    attrs: int = 0  # inodes whose attributes were fetched
    attr_trips: int = 0  # getattrs calls (one engine round trip each)
    full_reads: int = 0  # Metadata.readdir calls (a read of the whole directory)


def _count(fs: FileSystem) -> Work:
    work = Work()
    readdir, getattrs, meta_readdir = fs.readdir, fs.getattrs, fs.meta.readdir

    async def counting_readdir(fh: int, start: int, limit: int | None = None) -> Any:
        out = await (readdir(fh, start) if limit is None else readdir(fh, start, limit))
        work.entries += len(out)
        return out

    async def counting_getattrs(inos: list[int]) -> Any:
        work.attrs += len(inos)
        work.attr_trips += 1
        return await getattrs(inos)

    async def counting_meta_readdir(ino: int) -> Any:
        work.full_reads += 1
        return await meta_readdir(ino)

    fs.readdir = counting_readdir  # type: ignore[method-assign]
    fs.getattrs = counting_getattrs  # type: ignore[method-assign]
    fs.meta.readdir = counting_meta_readdir  # type: ignore[method-assign]
    return work


async def _kernel_listing(ops: KvfsOperations, fh: int, size: int,
                          between: Callable[[int], Awaitable[None]] | None = None
                          ) -> tuple[list[bytes], int]:
    """Read ``fh`` to its end as the kernel does; returns the names and the call count."""
    names: list[bytes] = []
    pos = calls = 0
    while True:
        buf = Buffer(size)
        await ops.readdir(fh, pos, buf)  # type: ignore[arg-type]
        calls += 1
        if not buf.taken:
            return names, calls
        names += [n for n, _ in buf.taken]
        pos = buf.taken[-1][1]
        if between is not None:
            await between(calls)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfuse3, "readdir_reply", _kernel_reply)


@pytest.mark.parametrize("size", [4096, 32768, 131072])
async def test_kernel_listing_is_linear(fs: FileSystem, kernel: None, size: int) -> None:
    d = await mkdir(fs, ROOT, b"big")
    names = [_name(i) for i in range(N)]
    await _fill(fs, d, names)
    ops = KvfsOperations(fs)
    work = _count(fs)
    fh = await fs.opendir(d)
    listed, calls = await _kernel_listing(ops, fh, size)
    await ops.releasedir(fh)

    n = N + 2
    assert listed[:2] == [b".", b".."]
    assert sorted(listed[2:]) == sorted(names)
    assert work.full_reads == 1  # the directory is read once, at offset 0
    # Quadratic before: every call re-materialised all remaining entries ...
    assert work.entries <= 3 * n, (work.entries, calls)
    # ... and fetched attributes for 128 entries whatever the buffer took.  Now: about
    # one spare per call, and at most a buffer's worth while its size is learned.
    assert work.attrs <= n + 3 * calls + size // 160, (work.attrs, calls)
    # One engine round trip per call, once the buffer's size is learned.
    assert work.attr_trips <= calls + 8, (work.attr_trips, calls)
    # Only entries the kernel took count as lookups.
    assert sum(ops.lookups.values()) == N


async def test_listing_stays_valid_while_the_directory_changes(fs: FileSystem,
                                                              kernel: None) -> None:
    """Entries removed meanwhile may go unlisted; no entry twice, none untouched skipped."""
    d = await mkdir(fs, ROOT, b"d")
    names = [_name(i) for i in range(1000)]
    await _fill(fs, d, names)
    ops = KvfsOperations(fs)
    removed: set[bytes] = set()

    async def churn(call: int) -> None:
        for j in range(5):
            victim = names[(call * 37 + j * 211) % len(names)]
            if victim not in removed:
                await fs.unlink(d, victim)
                removed.add(victim)
        await fs.mknod(USER, d, b"new-%04d" % call, stat.S_IFREG | 0o644)

    fh = await fs.opendir(d)
    listed, _ = await _kernel_listing(ops, fh, 4096, churn)
    await ops.releasedir(fh)
    assert len(listed) == len(set(listed))
    assert set(names) - removed <= set(listed)
    assert set(listed) <= set(names) | {b".", b".."}  # new names wait for the next pass


async def test_readdir_limit_costs_what_it_returns(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"d")
    names = [_name(i) for i in range(2000)]
    await _fill(fs, d, names)
    work = _count(fs)
    fh = await fs.opendir(d)
    got = []
    pos = 0
    while batch := await fs.readdir(fh, pos, 7):
        assert len(batch) <= 7
        assert [p for p, _ in batch] == list(range(pos + 1, pos + len(batch) + 1))
        got += [e.name for _, e in batch]
        pos = batch[-1][0]
    await fs.releasedir(fh)
    assert got[:2] == [b".", b".."] and sorted(got[2:]) == sorted(names)
    assert work.entries == len(names) + 2
    assert work.full_reads == 1
