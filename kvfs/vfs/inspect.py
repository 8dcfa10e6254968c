"""What ``kvfs info PATH`` shows, computed inside the mount: a path's inode, attributes,
chunks, slices and blocks, and how many versions the history keeps of it.

It runs in the mount process (asked through :mod:`kvfs.fuse.control`), so it works on every
engine, the embedded store included, and reads through the mount's own metadata layer: the
attributes are the ones the mount shows (a size still growing in an open file included),
the chunk records the committed ones -- bytes still buffered in a file open for writing are
not in a slice yet.

Everything returned is plain data (ints, strings, lists, dicts) ready for msgpack and JSON.
Invariant: each slice's ``blocks`` are exactly the block names the slice store reads and
writes for it (:func:`kvfs.objstore.api.block_name`, ``ceil(size / block_size)`` of them).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from kvfs.chunk.layout import CHUNK_SIZE, Slice
from kvfs.errors import FSError
from kvfs.history.store import versions_of
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.records import Attr
from kvfs.objstore.api import block_name
from kvfs.vfs.fs import FileSystem

# A file's chunks are listed one by one; past this many, the answer says how many were left
# out rather than growing without bound (64 GiB of file at 64 MiB a chunk).
MAX_CHUNKS = 1024

_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char device",
          stat.S_IFBLK: "block device"}


def _attributes(attr: Attr) -> dict[str, Any]:
    return {"type": _TYPES.get(stat.S_IFMT(attr.mode), "unknown"),
            "mode": stat.S_IMODE(attr.mode), "uid": attr.uid, "gid": attr.gid,
            "size": attr.size, "nlink": attr.nlink, "rdev": attr.rdev,
            "atime": attr.atime, "mtime": attr.mtime, "ctime": attr.ctime,
            "parent": attr.parent}


def _blocks(s: Slice, block_size: int) -> list[str]:
    return [block_name(s.id, i, min(block_size, s.size - start))
            for i, start in enumerate(range(0, s.size, block_size))]


async def _resolve(fs: FileSystem, path: bytes) -> tuple[int, Attr]:
    ino, attr = int(ROOT_INO), await fs.getattr(ROOT_INO)
    try:
        for name in (p for p in path.split(b"/") if p):
            child, _ = await fs.lookup(ino, name)
            ino, attr = int(child), await fs.getattr(int(child))
    except FSError as exc:
        raise FSError(exc.errno, f"{path.decode(errors='replace')}: "
                      f"{os.strerror(exc.errno)}") from None
    return ino, attr


async def inspect(fs: FileSystem, path: bytes) -> dict[str, Any]:
    """The description of ``path`` (absolute within the volume); FSError (ENOENT, ENOTDIR)
    when it cannot be reached."""
    if not path.startswith(b"/"):
        raise FSError(errno.EINVAL, f"{path.decode(errors='replace')}: not an absolute volume path")
    ino, attr = await _resolve(fs, path)
    bs = fs.slices.block_size
    out: dict[str, Any] = {"path": path.decode(errors="replace"), "inode": ino,
                           "attributes": _attributes(attr), "block_size": bs,
                           "block_store": fs.slices.store.describe()}
    if attr.is_symlink:
        out["target"] = (await fs.readlink(ino)).decode(errors="replace")
    if attr.is_reg:
        count = -(-attr.size // CHUNK_SIZE)
        chunks: list[dict[str, Any]] = []
        slice_ids: set[int] = set()
        block_names: set[str] = set()
        for index in range(min(count, MAX_CHUNKS)):
            described = []
            for s in await fs.meta.read_chunk(ino, index):
                blocks = _blocks(s, bs) if s.id else []
                described.append({"id": s.id, "size": s.size, "pos": s.pos, "off": s.off,
                                  "len": s.len, "blocks": blocks})
                if s.id:
                    slice_ids.add(s.id)
                block_names.update(blocks)
            chunks.append({"index": index, "slices": described})
        out["chunks"] = chunks
        out["chunks_left_out"] = max(0, count - MAX_CHUNKS)
        out["slices"] = len(slice_ids)
        out["blocks"] = len(block_names)
    versions = await versions_of(fs.meta.kv, path)
    out["history"] = {"versions": len(versions),
                      "first": versions[0].revision if versions else 0,
                      "last": versions[-1].revision if versions else 0}
    return out
