"""What open(O_CREAT) answers when another mount made the name something else meanwhile
(issue: the kernel turned a non-file reply to CREATE into EIO), through the filesystem API.

The kernel sends CREATE only for a name it believes absent; on a shared volume another
mount may have made it a directory, a symlink or a file in between.  The answers must be
the ones open(2) gives on a local filesystem, or ESTALE *to the kernel* so that it walks
the path again -- never a reply the kernel rejects.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import cast

import pyfuse3
import pytest
from fsapi import ROOT, USER, mkdir, mkfile, raises_errno, read_all

from kvfs.fuse.ops import KvfsOperations
from kvfs.meta.metadata import Ctx
from kvfs.vfs.fs import FileSystem

CREATE = os.O_CREAT | os.O_WRONLY


async def test_create_over_a_directory_is_eisdir(fs: FileSystem) -> None:
    await mkdir(fs, ROOT, b"x")
    for flags in (CREATE, os.O_CREAT | os.O_RDONLY, CREATE | os.O_TRUNC):
        with raises_errno(errno.EISDIR):
            await fs.create(USER, ROOT, b"x", 0o644, flags)


async def test_create_over_a_symlink_restarts_the_walk_once(fs: FileSystem) -> None:
    await fs.symlink(USER, ROOT, b"x", b"target")
    with raises_errno(errno.ESTALE):  # the kernel looks the path up again, follows it
        await fs.create(USER, ROOT, b"x", 0o644, CREATE)
    # The restarted walk looks the name up (here it finds the symlink; in the race it
    # found nothing) and its create finds a symlink again: ESTALE now would reach the
    # application.
    await fs.lookup(ROOT, b"x")
    with raises_errno(errno.EEXIST):
        await fs.create(USER, ROOT, b"x", 0o644, CREATE)
    # A later, independent open gets its own restart.
    with raises_errno(errno.ESTALE):
        await fs.create(USER, ROOT, b"x", 0o644, CREATE)


async def test_create_of_an_existing_file_opens_it_with_its_permissions(fs: FileSystem
                                                                        ) -> None:
    ino = await mkfile(fs, ROOT, b"f", b"data", mode=0o644, ctx=Ctx(0, 0))
    with raises_errno(errno.EACCES):  # the kernel checked only the directory
        await fs.create(USER, ROOT, b"f", 0o644, CREATE)
    fh, got, _ = await fs.create(USER, ROOT, b"f", 0o644, os.O_CREAT | os.O_RDONLY)
    await fs.release(fh)
    assert got == ino
    fh, _, attr = await fs.create(Ctx(0, 0), ROOT, b"f", 0o644, CREATE | os.O_TRUNC)
    await fs.release(fh)
    assert attr.size == 0 and await read_all(fs, ino) == b""


async def test_readlink_of_a_symlink_removed_meanwhile(fs: FileSystem) -> None:
    """A path walk that looked a symlink up can read it after another mount removed it,
    as on a local filesystem; one that never saw it gets ENOENT (ESTALE to the kernel)."""
    ino, _ = await fs.symlink(USER, ROOT, b"l", b"somewhere")
    seen, _ = await fs.lookup(ROOT, b"l")
    assert seen == ino
    other = FileSystem(fs.meta.__class__(fs.meta.kv), fs.slices)  # a mount that never saw it
    await fs.unlink(ROOT, b"l")
    assert await fs.readlink(ino) == b"somewhere"
    with raises_errno(errno.ENOENT):
        await other.readlink(ino)


def _caller(pid: int) -> pyfuse3.RequestContext:
    return cast(pyfuse3.RequestContext, SimpleNamespace(pid=pid, uid=0, gid=0))


async def _fuse_errno(op: Awaitable[object]) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await op
    return info.value.errno


async def test_a_walk_is_restarted_once(fs: FileSystem) -> None:
    """An inode the kernel holds but the volume lost gets ESTALE, so the kernel walks the
    path again; if the restarted walk of that process meets a vanished inode too, ESTALE
    would reach the application, so it gets ENOENT."""
    ops = KvfsOperations(fs)
    gone = [await mkdir(fs, ROOT, name) for name in (b"d1", b"d2", b"d3")]
    for name in (b"d1", b"d2", b"d3"):
        await fs.rmdir(ROOT, name)
    assert await _fuse_errno(ops.getattr(gone[0], _caller(7))) == errno.ESTALE
    assert await _fuse_errno(ops.getattr(gone[1], _caller(7))) == errno.ENOENT
    assert await _fuse_errno(ops.opendir(gone[2], _caller(8))) == errno.ESTALE
