"""``df`` counts the data written, not file lengths (issue 7, defect 7).

The usage counter must equal what the key table holds -- every slice record of every
chunk key, 4 KiB-rounded (see :mod:`kvfs.meta.usage`) -- after writes, overwrites,
compaction, truncation and deletion; a sparse file counts only what was written into it.
"""

from __future__ import annotations

import os
import random

from fsapi import ROOT, USER, mkfile

from kvfs.chunk.layout import CHUNK_SIZE, MAX_SLICES, decode_slices
from kvfs.kv.api import prefix_end
from kvfs.meta import keys
from kvfs.meta.metadata import MAX_FILE_SIZE, SetAttr
from kvfs.meta.usage import slice_space
from kvfs.vfs.fs import FileSystem

RW = os.O_RDWR


async def _held_in_chunks(fs: FileSystem) -> int:
    """What the key table says the counter should be."""
    prefix = keys.INODE_PREFIX
    res = await fs.meta.kv.range(prefix, prefix_end(prefix))
    assert not res.more
    return sum(slice_space(decode_slices(kv.value)) for kv in res.kvs
               if kv.key.startswith(keys.chunk_prefix(keys.key_ino(kv.key))))


async def test_sparse_file_counts_what_was_written(fs: FileSystem) -> None:
    fh, f, _ = await fs.create(USER, ROOT, b"sparse", 0o644, RW | os.O_CREAT)
    await fs.write(fh, MAX_FILE_SIZE - 1, b"x")  # one byte at 256 PiB
    await fs.release(fh)
    assert (await fs.getattr(f)).size == MAX_FILE_SIZE
    # Before: the file's length, 256 PiB, and df showed the volume 100% full.
    assert fs.meta.usage.used_space == 4096
    st = await fs.statfs()
    assert st.total_blocks - st.free_blocks == 1


async def test_counter_follows_the_key_table(data_fs: FileSystem) -> None:
    fs = data_fs
    rng = random.Random(5)
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    h = fs._files[fh]
    for _ in range(MAX_SLICES + 3):  # overwrites: each flush a slice of its own
        await fs.write(fh, rng.randrange(0, 100_000), rng.randbytes(rng.randrange(1, 9000)))
        await fs.flush(fh)
    await fs.write(fh, 3 * CHUNK_SIZE - 10, b"y" * 20)  # across a chunk boundary, far out
    await fs.flush(fh)
    assert fs.meta.usage.used_space == await _held_in_chunks(fs)
    written = fs.meta.usage.used_space

    assert f in fs._compact_pending
    assert await h.data.compact((await fs.getattr(f)).size)
    fs._compact_pending.clear()
    assert fs.meta.usage.used_space == await _held_in_chunks(fs) < written

    await fs.setattr(f, SetAttr(size=CHUNK_SIZE + 5))  # drops the chunks past it
    assert fs.meta.usage.used_space == await _held_in_chunks(fs)
    await fs.release(fh)

    await mkfile(fs, ROOT, b"g", b"z" * 50_000)
    assert fs.meta.usage.used_space == await _held_in_chunks(fs)
    inodes = fs.meta.usage.used_inodes
    await fs.unlink(ROOT, b"f")
    await fs.unlink(ROOT, b"g")
    assert fs.meta.usage.used_inodes == inodes - 2
    await fs.cleaner.run_once()  # gives the data back
    assert fs.meta.usage.used_space == await _held_in_chunks(fs) == 0
    await fs.meta.usage.flush()  # the stored counter agrees
    assert fs.meta.usage.used_space == 0
