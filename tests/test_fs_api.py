"""The filesystem API (kvfs.vfs.fs.FileSystem) driven directly, without a kernel.

Every test gets a fresh volume; the fixtures fsck it on teardown (see conftest.py).
"""

from __future__ import annotations

import errno
import os
import random
import stat

import trio
from fsapi import (
    ROOT,
    USER,
    fsck_problems,
    inode_keys,
    mkdir,
    mkfile,
    names,
    queued_for_deletion,
    raises_errno,
    read_all,
    stored_blocks,
)

from kvfs.chunk.layout import CHUNK_SIZE, MAX_SLICES
from kvfs.meta import keys
from kvfs.meta.metadata import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_CTX,
    XATTR_CREATE,
    XATTR_REPLACE,
    Ctx,
    SetAttr,
)
from kvfs.vfs.fs import FileSystem

RW = os.O_RDWR


async def tick() -> None:
    """Let the ns clock move so that time comparisons are strict."""
    await trio.sleep(0.002)


# -- create / lookup / getattr ---------------------------------------------------------


async def test_create_lookup_getattr(fs: FileSystem) -> None:
    fh, ino, attr = await fs.create(USER, ROOT, b"f", 0o640, RW | os.O_CREAT)
    await fs.release(fh)
    assert stat.S_ISREG(attr.mode) and stat.S_IMODE(attr.mode) == 0o640
    assert (attr.uid, attr.gid, attr.nlink, attr.size) == (1000, 1000, 1, 0)
    lino, lattr = await fs.lookup(ROOT, b"f")
    assert lino == ino and lattr == attr
    assert await fs.getattr(ino) == attr
    assert (await fs.lookup(ROOT, b"."))[0] == ROOT
    assert (await fs.lookup(ROOT, b".."))[0] == ROOT
    with raises_errno(errno.ENOENT):
        await fs.lookup(ROOT, b"missing")
    with raises_errno(errno.ENOTDIR):
        await fs.lookup(ino, b"x")
    with raises_errno(errno.ENOENT):
        await fs.getattr(987654)


async def test_create_exclusive_and_nonexclusive(fs: FileSystem) -> None:
    ino = await mkfile(fs, ROOT, b"f", b"hello")
    with raises_errno(errno.EEXIST):
        await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT | os.O_EXCL)
    # The kernel creates only names it believes absent: a create that finds the file
    # makes the kernel walk the path again (ESTALE) and open it itself...
    with raises_errno(errno.ESTALE):
        await fs.create(USER, ROOT, b"f", 0o600, RW | os.O_CREAT)
    # ...unless that restarted walk's lookup raced too: then the file is opened here.
    fh, ino2, attr = await fs.create(USER, ROOT, b"f", 0o600, RW | os.O_CREAT,
                                     restarted_walk=True)
    assert ino2 == ino and attr.size == 5 and stat.S_IMODE(attr.mode) == 0o644
    await fs.release(fh)
    with raises_errno(errno.ESTALE):
        await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT | os.O_TRUNC)
    fh, _, attr = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT | os.O_TRUNC,
                                  restarted_walk=True)
    assert attr.size == 0
    await fs.release(fh)
    assert await read_all(fs, ino) == b""


async def test_open_flags(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"d")
    f = await mkfile(fs, ROOT, b"f", b"data")
    with raises_errno(errno.EISDIR):
        await fs.open(d, os.O_WRONLY)
    with raises_errno(errno.ENOTDIR):
        await fs.opendir(f)
    with raises_errno(errno.EBADF):
        await fs.read(12345, 0, 1)
    fh = await fs.open(f, os.O_WRONLY | os.O_TRUNC)
    assert (await fs.getattr(f)).size == 0
    await fs.release(fh)
    await fs.release(fh)  # a second release of the same handle is harmless


async def test_mknod_and_statfs(fs: FileSystem) -> None:
    ino, attr = await fs.mknod(USER, ROOT, b"fifo", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(attr.mode)
    assert (await fs.lookup(ROOT, b"fifo"))[0] == ino
    st = await fs.statfs()
    assert st.name_max == 255


# -- directories -----------------------------------------------------------------------


async def test_mkdir_rmdir(fs: FileSystem) -> None:
    assert (await fs.getattr(ROOT)).nlink == 2
    d, attr = await fs.mkdir(USER, ROOT, b"d", 0o750)
    assert stat.S_ISDIR(attr.mode) and stat.S_IMODE(attr.mode) == 0o750 and attr.nlink == 2
    assert (await fs.getattr(ROOT)).nlink == 3
    sub = await mkdir(fs, d, b"sub")
    assert (await fs.getattr(d)).nlink == 3
    assert (await fs.lookup(sub, b".."))[0] == d
    await mkfile(fs, d, b"file")
    assert (await fs.getattr(d)).nlink == 3  # files do not count
    with raises_errno(errno.EEXIST):
        await fs.mkdir(USER, ROOT, b"d", 0o755)
    with raises_errno(errno.ENOTEMPTY):
        await fs.rmdir(ROOT, b"d")
    with raises_errno(errno.ENOTDIR):
        await fs.rmdir(d, b"file")
    with raises_errno(errno.ENOENT):
        await fs.rmdir(d, b"missing")
    with raises_errno(errno.EINVAL):
        await fs.rmdir(d, b".")
    with raises_errno(errno.ENOTEMPTY):
        await fs.rmdir(d, b"..")
    await fs.rmdir(d, b"sub")
    assert (await fs.getattr(d)).nlink == 2
    with raises_errno(errno.ENOENT):
        await fs.getattr(sub)
    await fs.unlink(d, b"file")
    await fs.rmdir(ROOT, b"d")
    assert (await fs.getattr(ROOT)).nlink == 2
    assert await names(fs, ROOT) == {}
    assert await inode_keys(fs, d) == []


async def test_mkdir_inside_file_and_missing_parent(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"f")
    with raises_errno(errno.ENOTDIR):
        await fs.mkdir(USER, f, b"x", 0o755)
    with raises_errno(errno.ENOENT):
        await fs.mkdir(USER, 424242, b"x", 0o755)


async def test_unlink(fs: FileSystem) -> None:
    await mkdir(fs, ROOT, b"d")
    f = await mkfile(fs, ROOT, b"f", b"x" * 100)
    with raises_errno(errno.EISDIR):
        await fs.unlink(ROOT, b"d")
    with raises_errno(errno.ENOENT):
        await fs.unlink(ROOT, b"missing")
    blocks = await stored_blocks(fs)
    assert blocks
    await fs.unlink(ROOT, b"f")
    with raises_errno(errno.ENOENT):
        await fs.lookup(ROOT, b"f")
    assert f in await queued_for_deletion(fs)
    await fs.cleaner.run_once()
    assert await inode_keys(fs, f) == []
    assert await queued_for_deletion(fs) == set()
    assert await stored_blocks(fs) == set()


async def test_removed_directory_accepts_no_new_names(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"d")
    f = await mkfile(fs, ROOT, b"f")
    dh = await fs.opendir(d)
    await fs.rmdir(ROOT, b"d")
    assert (await fs.getattr(d)).nlink == 0
    assert [e.name for _, e in await fs.readdir(dh, 0)] == [b".", b".."]
    with raises_errno(errno.ENOENT):
        await fs.create(USER, d, b"x", 0o644, RW | os.O_CREAT)
    with raises_errno(errno.ENOENT):
        await fs.mkdir(USER, d, b"x", 0o755)
    with raises_errno(errno.ENOENT):
        await fs.link(f, d, b"x")
    with raises_errno(errno.ENOENT):
        await fs.rename(ROOT, b"f", d, b"x")
    assert await fsck_problems(fs) == []
    await fs.releasedir(dh)
    assert await inode_keys(fs, d) == []


# -- hard links ------------------------------------------------------------------------


async def test_hard_links(fs: FileSystem) -> None:
    d1 = await mkdir(fs, ROOT, b"d1")
    d2 = await mkdir(fs, ROOT, b"d2")
    f = await mkfile(fs, d1, b"a", b"content")
    attr = await fs.link(f, d2, b"b")
    assert attr.nlink == 2
    await fs.link(f, d1, b"c")
    assert (await fs.getattr(f)).nlink == 3
    for parent, name in ((d1, b"a"), (d2, b"b"), (d1, b"c")):
        ino, a = await fs.lookup(parent, name)
        assert ino == f and a.nlink == 3
    assert await read_all(fs, (await fs.lookup(d2, b"b"))[0]) == b"content"
    # a write through one name is seen through the others
    fh = await fs.open((await fs.lookup(d2, b"b"))[0], RW)
    await fs.write(fh, 0, b"CON")
    await fs.release(fh)
    assert await read_all(fs, (await fs.lookup(d1, b"c"))[0]) == b"CONtent"
    with raises_errno(errno.EEXIST):
        await fs.link(f, d2, b"b")
    with raises_errno(errno.EPERM):
        await fs.link(d1, d2, b"dirlink")
    with raises_errno(errno.ENOTDIR):
        await fs.link(f, f, b"x")
    assert (await fs.getattr(d2)).nlink == 2  # links to files do not count
    await fs.unlink(d1, b"a")
    assert (await fs.getattr(f)).nlink == 2
    assert await read_all(fs, f) == b"CONtent"
    await fs.unlink(d1, b"c")
    await fs.rmdir(ROOT, b"d1")
    assert (await fs.getattr(f)).nlink == 1
    assert await fsck_problems(fs) == []
    await fs.unlink(d2, b"b")
    with raises_errno(errno.ENOENT):
        await fs.getattr(f)
    with raises_errno(errno.ENOENT):
        await fs.link(f, d2, b"again")


# -- symlinks --------------------------------------------------------------------------


async def test_symlink_readlink(fs: FileSystem) -> None:
    ino, attr = await fs.symlink(USER, ROOT, b"l", b"../some/target")
    assert stat.S_ISLNK(attr.mode) and attr.size == len(b"../some/target")
    assert await fs.readlink(ino) == b"../some/target"
    assert (await fs.lookup(ROOT, b"l"))[0] == ino
    f = await mkfile(fs, ROOT, b"f")
    with raises_errno(errno.EINVAL):
        await fs.readlink(f)
    with raises_errno(errno.EEXIST):
        await fs.symlink(USER, ROOT, b"l", b"x")
    with raises_errno(errno.ENOENT):
        await fs.symlink(USER, ROOT, b"empty", b"")
    with raises_errno(errno.ENAMETOOLONG):
        await fs.symlink(USER, ROOT, b"long", b"x" * 4096)
    await fs.symlink(USER, ROOT, b"max", b"x" * 4095)
    await fs.link(ino, ROOT, b"l2")
    assert await fs.readlink((await fs.lookup(ROOT, b"l2"))[0]) == b"../some/target"
    await fs.unlink(ROOT, b"l")
    await fs.unlink(ROOT, b"l2")
    assert await inode_keys(fs, ino) == []


# -- rename ----------------------------------------------------------------------------


async def test_rename_simple_and_across_dirs(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"d")
    f = await mkfile(fs, ROOT, b"f", b"abc")
    await fs.rename(ROOT, b"f", ROOT, b"g")
    assert await names(fs, ROOT) == {b"d": d, b"g": f}
    await fs.rename(ROOT, b"g", d, b"h")
    assert await names(fs, ROOT) == {b"d": d}
    assert await names(fs, d) == {b"h": f}
    assert await read_all(fs, f) == b"abc"
    with raises_errno(errno.ENOENT):
        await fs.rename(ROOT, b"nope", ROOT, b"x")
    with raises_errno(errno.ENOTDIR):
        await fs.rename(ROOT, b"d", f, b"x")
    with raises_errno(errno.EINVAL):
        await fs.rename(ROOT, b".", ROOT, b"x")
    with raises_errno(errno.EBUSY):
        await fs.rename(d, b"..", ROOT, b"x")


async def test_rename_directory_updates_parents(fs: FileSystem) -> None:
    a = await mkdir(fs, ROOT, b"a")
    b = await mkdir(fs, ROOT, b"b")
    sub = await mkdir(fs, a, b"sub")
    await mkfile(fs, sub, b"inner", b"x")
    await fs.rename(a, b"sub", b, b"moved")
    assert (await fs.getattr(a)).nlink == 2
    assert (await fs.getattr(b)).nlink == 3
    assert (await fs.getattr(ROOT)).nlink == 4
    assert (await fs.lookup(sub, b".."))[0] == b
    assert (await fs.getattr(sub)).parent == b
    dh = await fs.opendir(sub)
    dots = {e.name: e.ino for _, e in (await fs.readdir(dh, 0))[:2]}
    await fs.releasedir(dh)
    assert dots == {b".": sub, b"..": b}


async def test_rename_replaces_file(fs: FileSystem) -> None:
    src = await mkfile(fs, ROOT, b"src", b"new data")
    dst = await mkfile(fs, ROOT, b"dst", b"old data " * 1000)
    await fs.rename(ROOT, b"src", ROOT, b"dst")
    assert await names(fs, ROOT) == {b"dst": src}
    assert await read_all(fs, src) == b"new data"
    assert dst in await queued_for_deletion(fs)
    await fs.cleaner.run_once()
    assert await inode_keys(fs, dst) == []
    # only the surviving file's blocks are left
    live = {s.id for s in await fs.meta.read_chunk(src, 0)}
    assert {_slice_of(n) for n in await stored_blocks(fs)} == live
    assert await read_all(fs, src) == b"new data"


def _slice_of(block: str) -> int:
    return int(block.rsplit("/", 1)[1].split("_")[0])


async def test_rename_replaces_hard_linked_file(fs: FileSystem) -> None:
    src = await mkfile(fs, ROOT, b"src", b"1")
    dst = await mkfile(fs, ROOT, b"dst", b"2")
    d = await mkdir(fs, ROOT, b"d")
    await fs.link(dst, d, b"other")
    await fs.rename(ROOT, b"src", ROOT, b"dst")
    assert (await fs.getattr(dst)).nlink == 1
    assert await read_all(fs, (await fs.lookup(d, b"other"))[0]) == b"2"
    assert (await fs.lookup(ROOT, b"dst"))[0] == src


async def test_rename_replaces_empty_dir(fs: FileSystem) -> None:
    a = await mkdir(fs, ROOT, b"a")
    b = await mkdir(fs, ROOT, b"b")
    x = await mkdir(fs, a, b"x")
    await mkdir(fs, b, b"y")
    assert (await fs.getattr(ROOT)).nlink == 4
    # replace b/y (empty) with a/x: a loses a subdir, b keeps one
    await fs.rename(a, b"x", b, b"y")
    assert (await fs.getattr(a)).nlink == 2
    assert (await fs.getattr(b)).nlink == 3
    assert await names(fs, b) == {b"y": x}
    # replace the empty dir a with b in the same parent
    await fs.rename(ROOT, b"b", ROOT, b"a")
    assert (await fs.getattr(ROOT)).nlink == 3
    assert await names(fs, ROOT) == {b"a": b}
    assert await inode_keys(fs, a) == []


async def test_rename_errors(fs: FileSystem) -> None:
    a = await mkdir(fs, ROOT, b"a")
    b = await mkdir(fs, ROOT, b"b")
    await mkfile(fs, b, b"child")
    await mkfile(fs, ROOT, b"f")
    sub = await mkdir(fs, a, b"sub")
    deep = await mkdir(fs, sub, b"deep")
    with raises_errno(errno.ENOTEMPTY):
        await fs.rename(ROOT, b"a", ROOT, b"b")
    with raises_errno(errno.EISDIR):
        await fs.rename(ROOT, b"f", ROOT, b"a")
    with raises_errno(errno.ENOTDIR):
        await fs.rename(ROOT, b"a", ROOT, b"f")
    with raises_errno(errno.EINVAL):
        await fs.rename(ROOT, b"a", a, b"x")
    with raises_errno(errno.EINVAL):
        await fs.rename(ROOT, b"a", deep, b"x")
    with raises_errno(errno.EINVAL):
        await fs.rename(ROOT, b"a", sub, b"deep")
    with raises_errno(errno.EEXIST):
        await fs.rename(ROOT, b"f", b, b"child", RENAME_NOREPLACE)
    with raises_errno(errno.EINVAL):
        await fs.rename(ROOT, b"f", b, b"new", RENAME_NOREPLACE | RENAME_EXCHANGE)
    with raises_errno(errno.ENOENT):
        await fs.rename(ROOT, b"f", b, b"new", RENAME_EXCHANGE)
    await fs.rename(ROOT, b"f", b, b"new", RENAME_NOREPLACE)
    assert b"new" in await names(fs, b)
    # moving a directory to its own place is a no-op
    await fs.rename(a, b"sub", a, b"sub")
    assert await names(fs, a) == {b"sub": sub}
    assert (await fs.getattr(a)).nlink == 3


async def test_rename_exchange_file_and_dir_across_parents(fs: FileSystem) -> None:
    p1 = await mkdir(fs, ROOT, b"p1")
    p2 = await mkdir(fs, ROOT, b"p2")
    f = await mkfile(fs, p1, b"file", b"data")
    d = await mkdir(fs, p2, b"dir")
    await mkfile(fs, d, b"inside")
    assert (await fs.getattr(p1)).nlink == 2 and (await fs.getattr(p2)).nlink == 3
    await fs.rename(p1, b"file", p2, b"dir", RENAME_EXCHANGE)
    assert await names(fs, p1) == {b"file": d}
    assert await names(fs, p2) == {b"dir": f}
    assert (await fs.getattr(p1)).nlink == 3
    assert (await fs.getattr(p2)).nlink == 2
    assert (await fs.lookup(d, b".."))[0] == p1
    assert (await fs.getattr(f)).parent == p2
    assert await read_all(fs, f) == b"data"
    assert await fsck_problems(fs) == []
    # and back, within one directory too
    await fs.rename(p2, b"dir", p1, b"file", RENAME_EXCHANGE)
    assert await names(fs, p1) == {b"file": f}
    await fs.rename(p1, b"file", p1, b"file", RENAME_EXCHANGE)
    await mkfile(fs, p1, b"g", b"g")
    await fs.rename(p1, b"file", p1, b"g", RENAME_EXCHANGE)
    assert await read_all(fs, (await fs.lookup(p1, b"g"))[0]) == b"data"


async def test_rename_exchange_directory_with_its_ancestor(fs: FileSystem) -> None:
    a = await mkdir(fs, ROOT, b"a")
    await mkdir(fs, a, b"b")
    with raises_errno(errno.EINVAL):
        await fs.rename(ROOT, b"a", a, b"b", RENAME_EXCHANGE)
    with raises_errno(errno.EINVAL):
        await fs.rename(a, b"b", ROOT, b"a", RENAME_EXCHANGE)


async def test_rename_exchange_hard_links_across_parents(fs: FileSystem) -> None:
    p1 = await mkdir(fs, ROOT, b"p1")
    p2 = await mkdir(fs, ROOT, b"p2")
    f = await mkfile(fs, p1, b"f", b"F")
    g = await mkfile(fs, p2, b"g", b"G")
    await fs.link(f, p2, b"f2")
    await fs.rename(p1, b"f", p2, b"g", RENAME_EXCHANGE)
    assert await names(fs, p1) == {b"f": g}
    assert await names(fs, p2) == {b"g": f, b"f2": f}
    await fs.unlink(p2, b"g")
    assert (await fs.getattr(f)).nlink == 1
    await fs.unlink(p1, b"f")
    await fs.rmdir(ROOT, b"p1")
    assert (await fs.getattr(f)).parent == p2


async def test_rename_onto_hard_link_of_itself(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"a", b"x")
    await fs.link(f, ROOT, b"b")
    before = await fs.getattr(f)
    await fs.rename(ROOT, b"a", ROOT, b"b")
    assert await names(fs, ROOT) == {b"a": f, b"b": f}
    assert (await fs.getattr(f)).nlink == 2
    assert (await fs.getattr(f)).ctime == before.ctime
    await fs.rename(ROOT, b"a", ROOT, b"b", RENAME_EXCHANGE)
    assert await names(fs, ROOT) == {b"a": f, b"b": f}
    # NOREPLACE fails whenever the target name exists (as renameat2 on Linux does)
    with raises_errno(errno.EEXIST):
        await fs.rename(ROOT, b"a", ROOT, b"b", RENAME_NOREPLACE)


async def test_rename_over_open_file_keeps_it_readable(fs: FileSystem) -> None:
    await mkfile(fs, ROOT, b"src", b"new")
    dst = await mkfile(fs, ROOT, b"dst", b"old contents")
    fh = await fs.open(dst, RW)
    await fs.rename(ROOT, b"src", ROOT, b"dst")
    assert (await fs.getattr(dst)).nlink == 0
    assert await fs.read(fh, 0, 100) == b"old contents"
    assert await fsck_problems(fs) == []
    await fs.release(fh)
    await fs.cleaner.run_once()
    assert await inode_keys(fs, dst) == []


# -- ownership, modes, times -----------------------------------------------------------


async def test_setgid_directory_inheritance(fs: FileSystem) -> None:
    root = Ctx(0, 0)
    d, _ = await fs.mkdir(root, ROOT, b"shared", 0o2775)
    await fs.setattr(d, SetAttr(gid=500))
    assert (await fs.getattr(d)).mode & stat.S_ISGID
    _, f, fattr = await _create_and_close(fs, USER, d, b"file", 0o644)
    assert fattr.gid == 500 and fattr.uid == 1000
    assert not fattr.mode & stat.S_ISGID
    sub, sattr = await fs.mkdir(USER, d, b"sub", 0o755)
    assert sattr.gid == 500 and sattr.mode & stat.S_ISGID
    _, _, deep = await _create_and_close(fs, USER, sub, b"deep", 0o644)
    assert deep.gid == 500
    # without SGID on the parent the caller's group is used
    plain = await mkdir(fs, ROOT, b"plain", ctx=root)
    await fs.setattr(plain, SetAttr(gid=500))
    _, _, pattr = await _create_and_close(fs, USER, plain, b"f", 0o644)
    assert pattr.gid == 1000
    _, psub = await fs.mkdir(USER, plain, b"s", 0o755)
    assert psub.gid == 1000 and not psub.mode & stat.S_ISGID


async def _create_and_close(fs: FileSystem, ctx: Ctx, parent: int, name: bytes, mode: int):
    fh, ino, attr = await fs.create(ctx, parent, name, mode, RW | os.O_CREAT | os.O_EXCL)
    await fs.release(fh)
    return fh, ino, attr


async def test_chown_clears_suid_sgid(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"prog", mode=0o6755)
    assert stat.S_IMODE((await fs.getattr(f)).mode) == 0o6755
    a = await fs.setattr(f, SetAttr(uid=2000))
    assert stat.S_IMODE(a.mode) == 0o755 and a.uid == 2000
    # SGID without group-execute (mandatory locking) survives a chown
    g = await mkfile(fs, ROOT, b"lock", mode=0o2644)
    a = await fs.setattr(g, SetAttr(gid=7))
    assert stat.S_IMODE(a.mode) == 0o2644 and a.gid == 7
    h = await mkfile(fs, ROOT, b"suid", mode=0o4755)
    a = await fs.setattr(h, SetAttr(gid=7))
    assert stat.S_IMODE(a.mode) == 0o755
    # an explicit mode in the same request wins
    a = await fs.setattr(h, SetAttr(uid=1, mode=0o4711))
    assert stat.S_IMODE(a.mode) == 0o4711
    # directories keep their SGID bit
    d = await mkdir(fs, ROOT, b"d", mode=0o2755)
    a = await fs.setattr(d, SetAttr(uid=3000, gid=3000))
    assert a.mode & stat.S_ISGID


async def test_chmod_keeps_type_and_updates_ctime(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"f")
    before = await fs.getattr(f)
    await tick()
    a = await fs.setattr(f, SetAttr(mode=stat.S_IFDIR | 0o600))
    assert stat.S_ISREG(a.mode) and stat.S_IMODE(a.mode) == 0o600
    assert a.ctime > before.ctime and a.mtime == before.mtime


async def test_times_of_parent_and_child(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"d")
    e = await mkdir(fs, ROOT, b"e")
    t0 = await fs.getattr(d)
    await tick()
    f = await mkfile(fs, d, b"f")
    t1 = await fs.getattr(d)
    fa = await fs.getattr(f)
    assert t1.mtime > t0.mtime and t1.ctime > t0.ctime
    assert fa.mtime == fa.ctime == fa.atime
    await tick()
    await fs.link(f, e, b"g")
    fb = await fs.getattr(f)
    assert fb.ctime > fa.ctime and fb.mtime == fa.mtime
    assert (await fs.getattr(e)).mtime > t1.mtime
    await tick()
    await fs.rename(d, b"f", e, b"h")
    fc = await fs.getattr(f)
    dc, ec = await fs.getattr(d), await fs.getattr(e)
    assert fc.ctime > fb.ctime and fc.mtime == fa.mtime
    assert dc.mtime > t1.mtime and dc.ctime > t1.ctime
    assert ec.mtime >= fc.ctime
    await tick()
    await fs.unlink(e, b"g")
    fd_ = await fs.getattr(f)
    assert fd_.ctime > fc.ctime and (await fs.getattr(e)).mtime > ec.mtime
    await tick()
    await fs.rmdir(ROOT, b"d")
    assert (await fs.getattr(ROOT)).mtime > dc.mtime
    # data writes move mtime and ctime, explicit times stick
    await tick()
    fh = await fs.open(f, RW)
    await fs.write(fh, 0, b"x")
    await fs.flush(fh)
    fe = await fs.getattr(f)
    assert fe.mtime > fd_.mtime and fe.ctime >= fe.mtime
    await fs.write(fh, 1, b"y")  # buffered: the next setattr must not be overtaken
    a = await fs.setattr(f, SetAttr(atime=10**9, mtime=2 * 10**9))
    await fs.release(fh)
    a = await fs.getattr(f)
    assert (a.atime, a.mtime) == (10**9, 2 * 10**9)
    assert await read_all(fs, f) == b"xy"
    await tick()
    await fs.setxattr(f, b"user.k", b"v")
    assert (await fs.getattr(f)).ctime > a.ctime


# -- truncate --------------------------------------------------------------------------


async def test_truncate_down_and_up(data_fs: FileSystem) -> None:
    fs = data_fs
    f = await mkfile(fs, ROOT, b"f", bytes(range(256)) * 40)  # 10240 bytes
    a = await fs.setattr(f, SetAttr(size=100))
    assert a.size == 100
    assert await read_all(fs, f) == bytes(range(100))
    await fs.setattr(f, SetAttr(size=5000))
    assert await read_all(fs, f) == bytes(range(100)) + bytes(4900)
    await fs.setattr(f, SetAttr(size=0))
    await fs.setattr(f, SetAttr(size=10240))
    assert await read_all(fs, f) == bytes(10240)
    d = await mkdir(fs, ROOT, b"d")
    with raises_errno(errno.EISDIR):
        await fs.setattr(d, SetAttr(size=0))
    with raises_errno(errno.EINVAL):
        await fs.setattr(f, SetAttr(size=-1))


async def test_truncate_with_buffered_writes(data_fs: FileSystem) -> None:
    fs = data_fs
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    await fs.write(fh, 0, b"a" * 1000)
    await fs.write(fh, 5000, b"b" * 1000)  # buffered, not yet flushed
    assert (await fs.getattr(f)).size == 6000
    await fs.setattr(f, SetAttr(size=500))
    assert (await fs.getattr(f)).size == 500
    await fs.setattr(f, SetAttr(size=7000))
    assert await fs.read(fh, 0, 8000) == b"a" * 500 + bytes(6500)
    await fs.release(fh)


async def test_truncate_across_chunk_boundary(data_fs: FileSystem) -> None:
    fs = data_fs
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    base = CHUNK_SIZE - 1000
    payload = os.urandom(3000)
    await fs.write(fh, base, payload)
    await fs.write(fh, 3 * CHUNK_SIZE + 10, b"tail")
    await fs.flush(fh)
    assert (await fs.getattr(f)).size == 3 * CHUNK_SIZE + 14
    # shrink into chunk 0: chunks 1..3 are dropped, the rest of chunk 0 is hidden
    await fs.setattr(f, SetAttr(size=base + 500))
    assert await fs.read(fh, base, 3000) == payload[:500]
    await fs.setattr(f, SetAttr(size=4 * CHUNK_SIZE))
    assert await fs.read(fh, base, 3000) == payload[:500] + bytes(2500)
    assert await fs.read(fh, 3 * CHUNK_SIZE, 100) == bytes(100)
    # shrink exactly onto the chunk boundary and grow again
    await fs.write(fh, CHUNK_SIZE - 10, b"z" * 20)
    await fs.setattr(f, SetAttr(size=CHUNK_SIZE))
    await fs.setattr(f, SetAttr(size=CHUNK_SIZE + 100))
    assert await fs.read(fh, CHUNK_SIZE - 10, 200) == b"z" * 10 + bytes(100)
    await fs.release(fh)
    await fs.cleaner.run_once()
    chunk_keys = [k for k in await inode_keys(fs, f) if k[9:10] == b"C"]
    assert [keys.chunk_index(k) for k in chunk_keys] == [0]


# -- writes and reads ------------------------------------------------------------------


class SparseModel:
    """The expected contents of a file, in 4 KiB pages (absent pages are zeros)."""

    PAGE = 4096

    def __init__(self) -> None:
        self.size = 0
        self.pages: dict[int, bytearray] = {}

    def write(self, off: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            p, o = divmod(off + pos, self.PAGE)
            n = min(self.PAGE - o, len(data) - pos)
            page = self.pages.setdefault(p, bytearray(self.PAGE))
            page[o:o + n] = data[pos:pos + n]
            pos += n
        self.size = max(self.size, off + len(data))

    def truncate(self, size: int) -> None:
        if size < self.size:
            for p in [p for p in self.pages if p * self.PAGE >= size]:
                del self.pages[p]
            p, o = divmod(size, self.PAGE)
            if p in self.pages:
                self.pages[p][o:] = bytes(self.PAGE - o)
        self.size = size

    def read(self, off: int, n: int) -> bytes:
        end = min(off + n, self.size)
        out = bytearray()
        while off < end:
            p, o = divmod(off, self.PAGE)
            k = min(self.PAGE - o, end - off)
            page = self.pages.get(p)
            out += page[o:o + k] if page is not None else bytes(k)
            off += k
        return bytes(out)


async def test_random_writes_match_model(data_fs: FileSystem) -> None:
    fs = data_fs
    rng = random.Random(1234)
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    model = SparseModel()
    for i in range(300):
        off = rng.randrange(0, 1 << 20)
        data = rng.randbytes(rng.choice([1, 7, 100, 4096, 5000, 70000]))
        await fs.write(fh, off, data)
        model.write(off, data)
        if i % 17 == 0:
            await fs.flush(fh)
        if i % 50 == 49:
            size = rng.randrange(0, model.size + 1)
            await fs.setattr(f, SetAttr(size=size))
            model.truncate(size)
        if i % 23 == 0:
            lo = rng.randrange(0, model.size + 1)
            assert await fs.read(fh, lo, 9000) == model.read(lo, 9000)
    assert (await fs.getattr(f)).size == model.size
    assert await fs.read(fh, 0, model.size + 10) == model.read(0, model.size + 10)
    await fs.release(fh)
    assert await read_all(fs, f) == model.read(0, model.size)


async def test_sparse_writes_across_chunk_boundaries(data_fs: FileSystem) -> None:
    fs = data_fs
    rng = random.Random(99)
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    model = SparseModel()
    hotspots = [0, CHUNK_SIZE, 2 * CHUNK_SIZE, 5 * CHUNK_SIZE]
    for i in range(120):
        centre = rng.choice(hotspots)
        off = max(0, centre + rng.randrange(-20000, 20000))
        data = rng.randbytes(rng.randrange(1, 30000))
        await fs.write(fh, off, data)
        model.write(off, data)
        if i % 9 == 0:
            await fs.flush(fh)
    await fs.flush(fh)
    assert (await fs.getattr(f)).size == model.size
    for centre in hotspots:
        lo = max(0, centre - 25000)
        assert await fs.read(fh, lo, 50000) == model.read(lo, 50000)
    # holes between hotspots read as zeros
    assert await fs.read(fh, 3 * CHUNK_SIZE, 4096) == bytes(4096)
    assert await fs.read(fh, CHUNK_SIZE // 2, 4096) == bytes(4096)
    # a single write spanning a boundary after a reopen
    await fs.release(fh)
    fh = await fs.open(f, RW)
    blob = rng.randbytes(100_000)
    await fs.write(fh, 2 * CHUNK_SIZE - 50_000, blob)
    model.write(2 * CHUNK_SIZE - 50_000, blob)
    await fs.release(fh)
    fh = await fs.open(f, os.O_RDONLY)
    lo = 2 * CHUNK_SIZE - 60_000
    assert await fs.read(fh, lo, 120_000) == model.read(lo, 120_000)
    await fs.release(fh)


async def _chunk_records(fs: FileSystem, ino: int, index: int) -> int:
    return len(await fs.meta.read_chunk(ino, index))


async def test_compaction_keeps_content(data_fs: FileSystem) -> None:
    fs = data_fs
    rng = random.Random(7)
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    model = SparseModel()
    h = fs._files[fh]
    for round_ in range(4):
        for _ in range(MAX_SLICES + 5):
            off = rng.randrange(0, 200_000)
            data = rng.randbytes(rng.randrange(1, 20_000))
            await fs.write(fh, off, data)
            model.write(off, data)
            await fs.flush(fh)  # one slice per flush
        assert await _chunk_records(fs, f, 0) > MAX_SLICES
        assert f in fs._compact_pending
        size = (await fs.getattr(f)).size
        await h.data.compact(size)
        fs._compact_pending.clear()
        assert await _chunk_records(fs, f, 0) == 1
        assert await fs.read(fh, 0, model.size + 1) == model.read(0, model.size + 1)
        await fs.cleaner.run_once()
        assert await fsck_problems(fs) == []
        if round_ == 1:
            size = rng.randrange(0, model.size)
            await fs.setattr(f, SetAttr(size=size))
            model.truncate(size)
    await fs.release(fh)
    assert await read_all(fs, f) == model.read(0, model.size)


async def test_compaction_across_chunks_and_stale_size(data_fs: FileSystem) -> None:
    fs = data_fs
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    model = SparseModel()
    for i in range(MAX_SLICES + 3):
        off = CHUNK_SIZE - 3000 + 97 * i
        data = bytes([i + 1]) * 5000
        await fs.write(fh, off, data)
        model.write(off, data)
        await fs.flush(fh)
    file_data = fs._files[fh].data
    stale_size = (await fs.getattr(f)).size
    # the file shrinks after the flush that asked for compaction, then grows again
    await fs.setattr(f, SetAttr(size=CHUNK_SIZE - 1000))
    model.truncate(CHUNK_SIZE - 1000)
    await fs.setattr(f, SetAttr(size=stale_size))
    model.truncate(stale_size)
    await file_data.compact(stale_size)
    fs._compact_pending.clear()
    lo = CHUNK_SIZE - 4000
    assert await fs.read(fh, lo, 12000) == model.read(lo, 12000)
    await fs.release(fh)


async def test_compaction_after_a_buffer_limit_flush(data_fs: FileSystem) -> None:
    """The compactor's recorded length can be older than the chunk: a write that fills the
    buffer flushes by itself, without going through FileSystem.flush."""
    fs = data_fs
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    for i in range(MAX_SLICES + 2):
        await fs.write(fh, 10 * i, bytes([65 + i]) * 10)
        await fs.flush(fh)
    data = fs._files[fh].data
    data.buffer_limit = 1000
    await fs.write(fh, 5000, b"y" * 2000)  # flushed by the write itself
    assert not data.dirty
    expect = await fs.read(fh, 0, 10_000)
    assert expect.endswith(b"y" * 2000)
    pending_data, size = fs._compact_pending.pop(f)  # what the compactor would run
    await pending_data.compact(size)
    assert await _chunk_records(fs, f, 0) == 1
    assert await fs.read(fh, 0, 10_000) == expect
    await fs.release(fh)


async def test_compaction_loses_to_a_concurrent_write(fs: FileSystem) -> None:
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    for i in range(MAX_SLICES + 2):
        await fs.write(fh, i, b"x")
        await fs.flush(fh)
    stored = await fs.meta.kv.get(keys.chunk(f, 0))
    assert stored is not None
    raw = stored.value
    await fs.write(fh, 0, b"NEW")
    await fs.flush(fh)
    assert not await fs.meta.replace_chunk(f, 0, raw, [])
    assert (await fs.read(fh, 0, 100)) == b"NEW" + b"x" * (MAX_SLICES - 1)
    await fs.release(fh)


async def test_background_compactor(fs: FileSystem) -> None:
    model = SparseModel()
    async with trio.open_nursery() as nursery:
        await fs.run_background(nursery)
        fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
        for i in range(3 * MAX_SLICES):
            off = (i * 7919) % 50_000
            data = bytes([i % 251]) * 3000
            await fs.write(fh, off, data)
            model.write(off, data)
            await fs.flush(fh)
            await trio.sleep(0)
        with trio.fail_after(10):
            while fs._compact_pending or await _chunk_records(fs, f, 0) > MAX_SLICES:
                await trio.sleep(0.01)
        assert await fs.read(fh, 0, model.size) == model.read(0, model.size)
        await fs.release(fh)
        nursery.cancel_scope.cancel()
    assert await read_all(fs, f) == model.read(0, model.size)


async def test_many_small_overlapping_writes_one_buffer(data_fs: FileSystem) -> None:
    fs = data_fs
    rng = random.Random(5)
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    model = SparseModel()
    for _ in range(2000):
        off = rng.randrange(0, 8192)
        data = rng.randbytes(rng.randrange(1, 64))
        await fs.write(fh, off, data)
        model.write(off, data)
    await fs.flush(fh)
    assert await fs.read(fh, 0, 10000) == model.read(0, 10000)
    await fs._files[fh].data.compact((await fs.getattr(f)).size)
    fs._compact_pending.clear()
    assert await fs.read(fh, 0, 10000) == model.read(0, 10000)
    await fs.release(fh)


async def test_o_append(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"log", b"start;")
    app = await fs.open(f, os.O_WRONLY | os.O_APPEND)
    plain = await fs.open(f, RW)
    await fs.write(app, 0, b"one;")
    await fs.write(plain, 0, b"S")
    await fs.write(app, 3, b"two;")
    await fs.flush(plain)
    await fs.write(plain, 100, b"!")  # buffered extension is visible to the appender
    await fs.write(app, 0, b"three")
    await fs.release(app)
    await fs.release(plain)
    expect = bytearray(b"Start;one;two;")
    expect += bytes(100 - len(expect)) + b"!three"
    assert await read_all(fs, f) == bytes(expect)


async def test_shared_buffer_between_handles(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"f")
    w = await fs.open(f, os.O_WRONLY)
    r = await fs.open(f, os.O_RDONLY)
    await fs.write(w, 0, b"hello")
    assert (await fs.getattr(f)).size == 5
    assert await fs.read(r, 0, 10) == b"hello"
    await fs.release(w)
    await fs.release(r)


# -- open, then unlink -----------------------------------------------------------------


async def test_open_unlinked_file_lives_until_release(data_fs: FileSystem) -> None:
    fs = data_fs
    other = await mkfile(fs, ROOT, b"other", b"keep me")
    keep = await stored_blocks(fs)
    fh, f, _ = await fs.create(USER, ROOT, b"f", 0o644, RW | os.O_CREAT)
    await fs.write(fh, 0, b"a" * 10000)
    await fs.flush(fh)
    fh2 = await fs.open(f, os.O_RDONLY)
    await fs.write(fh, 10000, b"buffered")
    await fs.unlink(ROOT, b"f")
    with raises_errno(errno.ENOENT):
        await fs.lookup(ROOT, b"f")
    assert (await fs.getattr(f)).nlink == 0
    await fs.write(fh, 20000, b"after unlink")
    await fs.flush(fh)
    assert await fsck_problems(fs) == []
    await fs.cleaner.run_once()  # must not touch the still-open inode
    expect = b"a" * 10000 + b"buffered" + bytes(20000 - 10008) + b"after unlink"
    assert await fs.read(fh2, 0, 30000) == expect
    await fs.release(fh)
    assert (await fs.getattr(f)).nlink == 0  # the second handle still holds it
    assert await fs.read(fh2, 0, 30000) == expect
    await fs.release(fh2)
    with raises_errno(errno.ENOENT):
        await fs.getattr(f)
    assert f in await queued_for_deletion(fs)
    await fs.cleaner.run_once()
    assert await inode_keys(fs, f) == []
    assert await queued_for_deletion(fs) == set()
    assert await stored_blocks(fs) == keep
    assert await read_all(fs, other) == b"keep me"


async def test_open_unlinked_symlink_and_dir_handles(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"d")
    dh = await fs.opendir(d)
    await fs.rmdir(ROOT, b"d")
    assert (await fs.getattr(d)).nlink == 0
    assert await fsck_problems(fs) == []
    await fs.releasedir(dh)
    with raises_errno(errno.ENOENT):
        await fs.getattr(d)
    assert await inode_keys(fs, d) == []


async def test_unlink_one_of_several_handles_and_links(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"a", b"data")
    await fs.link(f, ROOT, b"b")
    fh = await fs.open(f, RW)
    await fs.unlink(ROOT, b"a")
    await fs.release(fh)
    assert (await fs.getattr(f)).nlink == 1
    assert await read_all(fs, f) == b"data"
    assert await queued_for_deletion(fs) == set()


# -- xattrs ----------------------------------------------------------------------------


async def test_xattrs(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"f")
    assert await fs.listxattr(ROOT_CTX, f) == []
    with raises_errno(errno.ENODATA):
        await fs.getxattr(f, b"user.a")
    with raises_errno(errno.ENODATA):
        await fs.setxattr(f, b"user.a", b"1", XATTR_REPLACE)
    await fs.setxattr(f, b"user.a", b"1", XATTR_CREATE)
    with raises_errno(errno.EEXIST):
        await fs.setxattr(f, b"user.a", b"2", XATTR_CREATE)
    await fs.setxattr(f, b"user.a", b"2", XATTR_REPLACE)
    assert await fs.getxattr(f, b"user.a") == b"2"
    await fs.setxattr(f, b"user.b", b"")
    await fs.setxattr(f, b"user.a", b"3")
    assert await fs.getxattr(f, b"user.b") == b""
    assert sorted(await fs.listxattr(ROOT_CTX, f)) == [b"user.a", b"user.b"]
    await fs.removexattr(f, b"user.a")
    with raises_errno(errno.ENODATA):
        await fs.removexattr(f, b"user.a")
    assert await fs.listxattr(ROOT_CTX, f) == [b"user.b"]
    with raises_errno(errno.ERANGE):
        await fs.setxattr(f, b"user." + b"u" * 251, b"")
    with raises_errno(errno.EOPNOTSUPP):
        await fs.setxattr(f, b"nonamespace", b"")
    await fs.setxattr(f, b"trusted.t", b"t")
    assert b"trusted.t" not in await fs.listxattr(Ctx(65534, 65534), f)
    assert b"trusted.t" in await fs.listxattr(ROOT_CTX, f)
    await fs.removexattr(f, b"trusted.t")
    with raises_errno(errno.E2BIG):
        await fs.setxattr(f, b"user.big", b"x" * 65537)
    with raises_errno(errno.EINVAL):
        await fs.setxattr(f, b"", b"x")
    await fs.setxattr(f, b"user.max", b"x" * 65536)
    assert len(await fs.getxattr(f, b"user.max")) == 65536
    with raises_errno(errno.ENOENT):
        await fs.getxattr(999999, b"user.a")
    with raises_errno(errno.ENOENT):
        await fs.listxattr(ROOT_CTX, 999999)
    with raises_errno(errno.ENOENT):
        await fs.setxattr(999999, b"user.a", b"x")
    d = await mkdir(fs, ROOT, b"d")
    await fs.setxattr(d, b"user.dir", b"yes")
    await fs.unlink(ROOT, b"f")
    await fs.rmdir(ROOT, b"d")
    await fs.cleaner.run_once()
    assert await inode_keys(fs, f) == [] and await inode_keys(fs, d) == []


# -- readdir ---------------------------------------------------------------------------


async def test_readdir_lists_everything(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"big")
    want = {}
    for i in range(2300):  # more than one page of Metadata.readdir
        name = b"f%05d" % i
        if i % 100 == 0:
            want[name] = await mkdir(fs, d, name)
        else:
            want[name] = (await fs.mknod(USER, d, name, stat.S_IFREG | 0o644))[0]
    dh = await fs.opendir(d)
    got: list = []
    pos = 0
    while True:
        batch = await fs.readdir(dh, pos)
        if not batch:
            break
        batch = batch[:97]  # the kernel takes what fits its buffer
        got.extend(e for _, e in batch)
        pos = batch[-1][0]
    await fs.releasedir(dh)
    assert [e.name for e in got[:2]] == [b".", b".."]
    assert got[0].ino == d and got[1].ino == ROOT
    rest = got[2:]
    assert len(rest) == len(want)
    assert {e.name: e.ino for e in rest} == want
    for e in rest:
        assert e.ftype == (stat.S_IFDIR if e.name.endswith(b"00") else stat.S_IFREG) >> 12


async def test_readdir_snapshot_semantics(fs: FileSystem) -> None:
    d = await mkdir(fs, ROOT, b"d")
    for i in range(50):
        await mkfile(fs, d, b"n%02d" % i)
    dh = await fs.opendir(d)
    first = await fs.readdir(dh, 0)
    seen = [e.name for _, e in first[:20]]
    pos = first[19][0]
    # the directory changes in the middle of the pass
    for i in range(50, 80):
        await mkfile(fs, d, b"n%02d" % i)
    await fs.rename(d, b"n05", d, b"zz-renamed")
    await fs.unlink(d, b"n40")
    seen += [e.name for _, e in await fs.readdir(dh, pos)]
    assert len(seen) == len(set(seen)) == 52
    assert set(seen) == {b".", b".."} | {b"n%02d" % i for i in range(50)}
    assert await fs.readdir(dh, len(seen)) == []
    # rewinding takes a new snapshot
    again = {e.name for _, e in await fs.readdir(dh, 0)}
    assert b"n79" in again and b"zz-renamed" in again and b"n05" not in again
    assert b"n40" not in again
    await fs.releasedir(dh)
    with raises_errno(errno.EBADF):
        await fs.readdir(dh, 0)


# -- names -----------------------------------------------------------------------------


async def test_name_max(fs: FileSystem) -> None:
    ok, long = b"n" * 255, b"n" * 256
    f = await mkfile(fs, ROOT, ok)
    assert (await fs.lookup(ROOT, ok))[0] == f
    d = await mkdir(fs, ROOT, b"d" * 255)
    calls = [
        lambda: fs.create(USER, ROOT, long, 0o644, RW | os.O_CREAT),
        lambda: fs.mkdir(USER, ROOT, long, 0o755),
        lambda: fs.mknod(USER, ROOT, long, stat.S_IFREG | 0o644),
        lambda: fs.symlink(USER, ROOT, long, b"t"),
        lambda: fs.lookup(ROOT, long),
        lambda: fs.link(f, ROOT, long),
        lambda: fs.rename(ROOT, ok, ROOT, long),
        lambda: fs.rename(ROOT, long, ROOT, b"x"),
        lambda: fs.unlink(ROOT, long),
        lambda: fs.rmdir(ROOT, long),
    ]
    for call in calls:
        with raises_errno(errno.ENAMETOOLONG):
            await call()
    await fs.rename(ROOT, ok, d, ok)
    assert await names(fs, d) == {ok: f}
    for bad in (b"a/b", b"a\0b", b""):
        with raises_errno(errno.EINVAL):
            await fs.mkdir(USER, ROOT, bad, 0o755)


async def test_access(fs: FileSystem) -> None:
    f = await mkfile(fs, ROOT, b"f", mode=0o640)
    await fs.access(USER, f, os.R_OK | os.W_OK)
    await fs.access(Ctx(5, 1000), f, os.R_OK)
    with raises_errno(errno.EACCES):
        await fs.access(Ctx(5, 1000), f, os.W_OK)
    with raises_errno(errno.EACCES):
        await fs.access(Ctx(5, 5), f, os.R_OK)
    with raises_errno(errno.EACCES):
        await fs.access(Ctx(0, 0), f, os.X_OK)
    await fs.access(Ctx(0, 0), f, os.R_OK | os.W_OK)
