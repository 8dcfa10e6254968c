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
import time
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import cast

import pyfuse3
import pytest
from fsapi import ROOT, USER, mkdir, mkfile, raises_errno, read_all

from kvfs.fuse import ops as ops_module
from kvfs.fuse.ops import KvfsOperations
from kvfs.meta.metadata import Ctx
from kvfs.meta.records import Attr
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
    # The restarted walk's fresh lookup found nothing (the race), and its create finds a
    # symlink again: ESTALE now would reach the application.
    with raises_errno(errno.EEXIST):
        await fs.create(USER, ROOT, b"x", 0o644, CREATE, restarted_walk=True)
    # A later, independent open gets its own restart.
    with raises_errno(errno.ESTALE):
        await fs.create(USER, ROOT, b"x", 0o644, CREATE)


async def _create_after_a_raced_walk(fs: FileSystem, ctx: Ctx, name: bytes,
                                     flags: int) -> tuple[int, int, Attr]:
    """A create the kernel restarted (ESTALE), whose restarted walk raced again."""
    with raises_errno(errno.ESTALE):
        await fs.create(ctx, ROOT, name, 0o644, flags)
    return await fs.create(ctx, ROOT, name, 0o644, flags, restarted_walk=True)


async def test_create_of_an_existing_file(fs: FileSystem) -> None:
    """The kernel's restarted walk opens an existing file itself, with its own checks;
    only a walk that raced twice has it opened here, with the file's permissions (the
    kernel checked only the directory's)."""
    ino = await mkfile(fs, ROOT, b"f", b"data", mode=0o644, ctx=Ctx(0, 0))
    with raises_errno(errno.EACCES):
        await _create_after_a_raced_walk(fs, USER, b"f", CREATE)
    fh, got, _ = await _create_after_a_raced_walk(fs, USER, b"f", os.O_CREAT | os.O_RDONLY)
    await fs.release(fh)
    assert got == ino
    fh, _, attr = await _create_after_a_raced_walk(fs, Ctx(0, 0), b"f", CREATE | os.O_TRUNC)
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
    path again; if the restarted walk of that process meets a vanished inode too -- one
    it looked up after the ESTALE -- ESTALE would reach the application: ENOENT instead.
    Another stale inode the process meets later gets its own restart."""
    ops = KvfsOperations(fs)
    caller = _caller(7)
    gone = [await mkdir(fs, ROOT, name) for name in (b"d1", b"d2", b"d3")]
    await ops.lookup(ROOT, b"d3", caller)  # held by the kernel from before
    await fs.rmdir(ROOT, b"d1")
    await fs.rmdir(ROOT, b"d3")
    assert await _fuse_errno(ops.getattr(gone[0], caller)) == errno.ESTALE
    # A stale inode known from before the ESTALE is not the restarted walk's doing.
    assert await _fuse_errno(ops.opendir(gone[2], caller)) == errno.ESTALE
    await ops.lookup(ROOT, b"d2", caller)  # the restarted walk...
    await fs.rmdir(ROOT, b"d2")  # ...races another mount again
    assert await _fuse_errno(ops.getattr(gone[1], caller)) == errno.ENOENT
    assert await _fuse_errno(ops.getattr(gone[0], _caller(8))) == errno.ESTALE


async def test_one_restart_per_walk_whichever_request_met_the_race(fs: FileSystem) -> None:
    """The kernel restarts a walk once, whichever request of it got ESTALE: a walk
    restarted because its open met a vanished inode, whose create then finds the name
    made by another mount, opens that file; a walk restarted by a raced create, whose
    fresh lookup finds a file that then vanishes, gets ENOENT."""
    ops, caller = KvfsOperations(fs), _caller(7)
    gone = await mkfile(fs, ROOT, b"f", b"old")
    await ops.lookup(ROOT, b"f", caller)
    await fs.unlink(ROOT, b"f")
    assert await _fuse_errno(ops.open(gone, os.O_RDONLY, caller)) == errno.ESTALE
    made = await mkfile(fs, ROOT, b"f", b"new")  # another mount, before the create
    info, entry = await ops.create(ROOT, b"f", 0o644, CREATE, caller)
    assert entry.st_ino == made
    await ops.release(info.fh)

    assert await _fuse_errno(ops.create(ROOT, b"f", 0o644, CREATE, caller)) == errno.ESTALE
    await ops.lookup(ROOT, b"f", caller)  # the restarted walk finds the file...
    await fs.unlink(ROOT, b"f")  # ...which another mount removes before the open
    assert await _fuse_errno(ops.open(made, os.O_RDONLY, caller)) == errno.ENOENT


async def _moved_by_another_mount(ops: KvfsOperations, caller: pyfuse3.RequestContext
                                  ) -> tuple[int, int, int]:
    """Directories p1 and p2 and p1/a, known to the kernel; then "another mount" (the
    shared volume underneath) moves p1/a to p2/b.  Returns (p1, p2, a)."""
    fs = ops.fs
    fs.meta.shared = True  # another mount may move directories
    p1, p2 = await mkdir(fs, ROOT, b"p1"), await mkdir(fs, ROOT, b"p2")
    for name in (b"p1", b"p2"):
        await ops.lookup(ROOT, name, caller)
    d = await mkdir(fs, p1, b"a")
    await ops.lookup(p1, b"a", caller)
    await fs.rename(p1, b"a", p2, b"b")
    return p1, p2, d


async def test_a_directory_moved_elsewhere_has_its_old_kernel_name_dropped(
        fs: FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory has one dentry: when another mount moved it to another parent, the
    lookup that finds it there drops the old name before it replies; this mount's own
    renames move the kernel's dentry themselves, and so does a move within one parent."""
    dropped: list[tuple[int, bytes]] = []
    monkeypatch.setattr(ops_module, "_invalidate_entry",
                        lambda parent, name: dropped.append((parent, name)))
    ops, caller = KvfsOperations(fs), _caller(7)
    p1, p2, d = await _moved_by_another_mount(ops, caller)
    await ops.lookup(p2, b"b", caller)
    assert dropped == [(p1, b"a")]

    await fs.rename(p2, b"b", p2, b"c")  # within one parent: the kernel copes
    await ops.lookup(p2, b"c", caller)
    await ops.rename(p2, b"c", p1, b"d", 0, caller)  # this mount moves it
    await ops.lookup(p1, b"d", caller)
    assert dropped == [(p1, b"a")]
    await ops.forget([(d, 4)])
    assert ops.dirs.places(d) == set()


async def test_a_moved_directory_the_kernel_cannot_place_yet_is_absent_for_now(
        fs: FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the old name cannot be dropped in time (a rename holds its parent's lock and
    waits for this lookup), the kernel would fail with ESTALE: the name is reported
    absent instead, uncached, and the directory's old place stays on record."""
    monkeypatch.setattr(ops_module, "_invalidate_entry",
                        lambda parent, name: time.sleep(0.3))  # blocked on a lock
    ops, caller = KvfsOperations(fs), _caller(7)
    p1, p2, d = await _moved_by_another_mount(ops, caller)
    reply = await ops.lookup(p2, b"b", caller)
    assert reply.st_ino == 0 and reply.entry_timeout == 0
    assert (p1, b"a") in ops.dirs.places(d)
