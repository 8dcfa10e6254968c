"""Buffered writes across an engine outage, through the filesystem API (no kernel).

A descriptor whose fsync failed while the engine was unreachable must work again once the
engine is back: its later writes extend the data that stayed buffered, and the next fsync
makes all of it durable.  (An append-and-fsync logger has its failing write *before* its
fsync, so a write that keeps failing would never let it recover.)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fsapi import ROOT, USER, fsck_problems, open_test_fs, raises_errno, read_all

from kvfs.chunk.layout import MAX_SLICES
from kvfs.kv.api import CommitResult, Compare, Delete, EngineUnavailable, KVEngine, Put
from kvfs.meta import keys
from kvfs.vfs.fs import FileSystem


class Outage:
    """Makes every commit of ``kv`` fail as an unreachable etcd would, while active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kv: KVEngine) -> None:
        self.active = False
        real = kv.commit

        async def commit(compares: Sequence[Compare], puts: Sequence[Put],
                         deletes: Sequence[Delete] = (), **options: Any) -> CommitResult:
            if self.active:
                raise EngineUnavailable("etcd at 127.0.0.1:1: unreachable for 0 s")
            return await real(compares, puts, deletes, **options)

        monkeypatch.setattr(kv, "commit", commit)


async def _logger_survives_outage(f: FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    outage = Outage(monkeypatch, f.meta.kv)
    fh, ino, _ = await f.create(USER, ROOT, b"log", 0o644, os.O_WRONLY | os.O_CREAT)
    await f.write(fh, 0, b"one\n")
    await f.fsync(fh)

    outage.active = True
    await f.write(fh, 4, b"two\n")
    with raises_errno(errno.EIO):
        await f.fsync(fh)
    await f.write(fh, 8, b"three\n")  # buffered: no engine needed yet
    with raises_errno(errno.EIO):
        await f.fsync(fh)

    outage.active = False
    await f.write(fh, 14, b"four\n")
    await f.write(fh, 19, b"five\n")
    await f.fsync(fh)
    await f.release(fh)
    assert await read_all(f, ino) == b"one\ntwo\nthree\nfour\nfive\n"


async def test_descriptor_recovers_after_failed_fsync(
        fs: FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    await _logger_survives_outage(fs, monkeypatch)


async def test_descriptor_recovers_after_failed_fsync_blocks_in_a_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_test_fs("file", tmp_path / "bucket") as f:
        await _logger_survives_outage(f, monkeypatch)
        # Blocks uploaded by the failed attempts were never recorded: leaked, not lost.
        assert await fsck_problems(f, leaked_blocks=False) == []


async def test_a_write_that_fails_on_a_full_buffer_buffers_nothing(
        fs: FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """A logger that retries a write which failed with EIO must not find it twice."""
    outage = Outage(monkeypatch, fs.meta.kv)
    fh, ino, _ = await fs.create(USER, ROOT, b"log", 0o644,
                                 os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    fs._files[fh].data.buffer_limit = 100
    outage.active = True
    await fs.write(fh, 0, b"a" * 60)
    with pytest.raises(EngineUnavailable):  # EIO: would overfill the buffer, whose
        await fs.write(fh, 60, b"b" * 60)  # flush comes first and fails
    outage.active = False
    await fs.write(fh, 60, b"b" * 60)  # the retry
    await fs.fsync(fh)
    await fs.release(fh)
    assert await read_all(fs, ino) == b"a" * 60 + b"b" * 60


@pytest.mark.parametrize("lost", ["raised", "resent"])
async def test_a_compaction_whose_answer_is_lost_keeps_its_blocks(
        data_fs: FileSystem, monkeypatch: pytest.MonkeyPatch, lost: str) -> None:
    """The commit that swaps a chunk's slices for the compacted one lands, but its answer
    is lost: ``raised``, an etcd paused past the URL's timeout applies it when it runs
    again; ``resent``, the etcd engine sent it again after its connection broke, and the
    resend's compares failed with the chunk rewritten since by the next append (a
    cluster losing a member).  Its outcome is unknown to the mount, so the new slice's
    blocks must stay: deleting them left a chunk record naming blocks that were gone (EIO
    reading the file, and the old slices freed too), as the fault suite met on its logs."""
    fs = data_fs
    fh, ino, _ = await fs.create(USER, ROOT, b"log", 0o644, os.O_WRONLY | os.O_CREAT)
    expect = b""
    for i in range(MAX_SLICES + 2):
        rec = b"record %04d\n" % i
        await fs.write(fh, len(expect), rec)
        expect += rec
        await fs.fsync(fh)  # one slice each
    data, size = fs._compact_pending.pop(ino)
    real = fs.meta.kv.commit
    chunk_key = keys.chunk(ino, 0)
    answers: list[int] = []

    async def commit(compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = (), **options: Any) -> CommitResult:
        res = await real(compares, puts, deletes, **options)
        if not answers and any(p.key == chunk_key for p in puts):
            answers.append(res.revision)
            if lost == "raised":
                raise EngineUnavailable("etcd at 127.0.0.1:1: unreachable for 3 s")
            return CommitResult(False, res.revision + 1, maybe_applied=True)
        return res

    monkeypatch.setattr(fs.meta.kv, "commit", commit)
    with pytest.raises(EngineUnavailable):
        await data.compact(size)
    assert answers
    assert len(await fs.meta.read_chunk(ino, 0)) == 1  # it did land
    await fs.release(fh)
    await fs.cleaner.run_once()  # frees the old slices, which nothing refers to now
    assert await read_all(fs, ino) == expect
