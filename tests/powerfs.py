"""powerfs: a FUSE filesystem that forgets, on a simulated power cut, whatever was not synced.

A killed process leaves its writes in the kernel's page cache, so ``kill -9`` never shows what
an fsync that was left out costs.  powerfs stands in for the disk under a program being
tested: it keeps every change in memory until the program makes it durable the way POSIX
says it must, and a *power cut* throws away everything that was not.

Run it as its own process: ``python tests/powerfs.py BACKING_DIR MOUNTPOINT``.  Tests drive
it through :class:`PowerFS`.

The durability model (a strict disk)
------------------------------------
The *durable* state lives in ``BACKING_DIR``: ``files/<ino>`` holds the durable contents of
a regular file (missing: empty), ``dirs/<ino>`` the durable entries of a directory (a msgpack
map ``name -> [ino, mode, uid, gid]``; missing: empty).  Inode 1 is the root.  An inode may
be durable without a durable name, as on a real disk.  Everything else -- the current
contents, sizes and entries -- is *volatile* and lives in this process.

* ``write``, ``truncate``/``ftruncate``, ``O_TRUNC``: volatile.  Reads see them.
* ``fsync`` and ``fdatasync`` of a file make its contents and size durable -- not its name.
* ``fsync`` of a directory (``fsyncdir``) makes that directory's entries durable: the names
  and the inodes they point to, with the permission bits they have now.  A name can thus
  become durable while its file's contents never were: after the cut it names an empty (or
  older) file.  A rename between two directories is durable in each directory separately.
* ``create``, ``mkdir``, ``unlink``, ``rmdir``, ``rename``: volatile until the directories
  they change are fsync'd.
* What the backing directory itself would need to survive a real power loss is out of scope:
  powerfs writes it without fsync and only simulates the cut.

A **cut** (write ``cut`` to ``MOUNTPOINT/.powerfs-ctl``) drops every volatile change at once;
from then on every request fails with EIO, as if the device were gone.  The write returns
only once the cut is done, so the caller knows exactly when the power went.  Reading the
control file answers ``on`` until then.  Restarting powerfs on the same ``BACKING_DIR``
shows the durable state alone; inodes no durable name reaches are removed then, as fsck
would.

``cut ... at-sync N`` arms the cut instead: the power goes as the N-th ``fsync``,
``fdatasync`` or directory fsync from now arrives, before it does anything (it fails with
EIO).  Those are the moments where the most is pending and where a program's durability
protocol is most exposed; a cut at a random time mostly finds nothing unsynced.

``cut torn SEED`` cuts like a disk that had already written back part of what was pending
(seeded, so a failure can be replayed): for each file, a random prefix of its unsynced
writes and truncates, in the order they were made, reaches the durable state, and the next
write is torn -- a random number of its bytes arrive, and sometimes the file's new size
arrives without the rest of them, which then reads as zeros.  A random prefix of the
unsynced namespace changes (each create, mkdir, unlink, rmdir or rename whole, in order, as
a metadata journal would replay them) reaches the durable directory tables.  Names and
contents are independent: a name can survive while its data does not.  Writes are not
reordered within a file: a disk may persist a later sector before an earlier one, but for
an append ext4 (ordered) and XFS make the new size durable only after the data it covers, so
an appended file shows a prefix; holes followed by data need preallocated or overwritten
space.  The unsynced changes of a file that was unlinked and closed are simply lost.

Not supported, as nothing under test needs them: hard links, symlinks, device nodes,
extended attributes, ``RENAME_EXCHANGE``.  ``flock`` needs nothing: pyfuse3 has no lock
handler, so the kernel keeps locks locally.  Requests are handled on one trio loop without
awaiting, so each one -- and the cut -- is atomic with respect to the others.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgpack
import pyfuse3
import trio
from pyfuse3 import FUSEError

ROOT = pyfuse3.ROOT_INODE
CTL_NAME = b".powerfs-ctl"
CTL_INO = 1 << 62  # never allocated to a real inode
TIMEOUT = 1.0  # attribute and entry cache timeout given to the kernel (s)


class Write(NamedTuple):
    """An unsynced ``write`` of ``data`` at ``off``."""

    off: int
    data: bytes


class Truncate(NamedTuple):
    """An unsynced change of the file size (shrinking drops bytes; growing adds zeros)."""

    size: int


ContentOp = Write | Truncate


class Entry(NamedTuple):
    """A directory entry as the durable table stores it."""

    ino: int
    mode: int
    uid: int
    gid: int


@dataclass(slots=True)
class NsChange:
    """One namespace operation: the entries it set (an :class:`Entry`) or removed (None)."""

    seq: int
    effects: list[tuple[int, bytes, Entry | None]]


@dataclass(slots=True)
class Node:
    """An inode as it is now (the volatile view), with what the kernel holds of it."""

    ino: int
    mode: int
    uid: int
    gid: int
    size: int = 0  # current (volatile) size of a regular file
    pending: list[ContentOp] = field(default_factory=list)  # since the last fsync, in order
    entries: dict[bytes, int] | None = None  # a directory's current entries
    nlink: int = 0  # current names
    lookups: int = 0  # kernel references
    opens: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return self.entries is not None

    def entry(self) -> Entry:
        return Entry(self.ino, self.mode, self.uid, self.gid)


class Disk:
    """The durable state in the backing directory (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.files = os.path.join(root, "files")
        self.dirs = os.path.join(root, "dirs")
        os.makedirs(self.files, exist_ok=True)
        os.makedirs(self.dirs, exist_ok=True)

    def table(self, ino: int) -> dict[bytes, Entry]:
        try:
            with open(os.path.join(self.dirs, str(ino)), "rb") as f:
                raw = msgpack.unpackb(f.read(), raw=True, strict_map_key=False)
        except FileNotFoundError:
            return {}
        return {name: Entry(*e) for name, e in raw.items()}

    def write_table(self, ino: int, entries: dict[bytes, Entry]) -> None:
        path = os.path.join(self.dirs, str(ino))
        with open(path + ".new", "wb") as f:
            f.write(msgpack.packb({n: list(e) for n, e in entries.items()}, use_bin_type=True))
        os.replace(path + ".new", path)

    def size(self, ino: int) -> int:
        try:
            return os.stat(os.path.join(self.files, str(ino))).st_size
        except FileNotFoundError:
            return 0

    def read(self, ino: int, off: int, size: int) -> bytes:
        try:
            fd = os.open(os.path.join(self.files, str(ino)), os.O_RDONLY)
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, size, off)
        finally:
            os.close(fd)

    def apply(self, ino: int, ops: list[ContentOp]) -> None:
        if not ops:
            return
        fd = os.open(os.path.join(self.files, str(ino)), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for op in ops:
                if isinstance(op, Write):
                    os.pwrite(fd, op.data, op.off)
                else:
                    os.ftruncate(fd, op.size)
        finally:
            os.close(fd)

    def collect(self, keep: set[int]) -> int:
        """Remove the files and tables of every inode not in ``keep``; how many went."""
        removed = 0
        for d in (self.files, self.dirs):
            for name in os.listdir(d):
                if not name.isdigit() or int(name) not in keep:
                    os.unlink(os.path.join(d, name))
                    removed += 1
        return removed


class PowerOps(pyfuse3.Operations):
    """The filesystem: volatile state over a :class:`Disk` (see the module docstring)."""

    enable_writeback_cache = False  # every write must reach us, not sit in the kernel

    def __init__(self, backing: str) -> None:
        super().__init__()
        self.disk = Disk(backing)
        self.nodes: dict[int, Node] = {}
        self.file_handles: dict[int, Node | None] = {}  # None: the control file
        self.dir_handles: dict[int, tuple[Node, list[tuple[bytes, int]] | None]] = {}
        self._next_fh = 1
        self.ns_log: list[NsChange] = []  # unsynced namespace changes, oldest first
        self.dir_synced: dict[int, int] = {}  # directory -> ns seq its durable table covers
        self._ns_seq = 0
        self.dead = False
        self.armed: tuple[int, int | None] | None = None  # (syncs to go, torn seed)
        self.removed_at_start = self._load()
        self.next_ino = max(self.nodes) + 1

    # -- durable state -> memory ---------------------------------------------------------

    def _load(self) -> int:
        root = Node(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), entries={}, nlink=1)
        self.nodes[ROOT] = root
        todo = [root]
        while todo:
            d = todo.pop()
            assert d.entries is not None
            for name, e in self.disk.table(d.ino).items():
                d.entries[name] = e.ino
                node = self.nodes.get(e.ino)
                if node is None:
                    node = Node(e.ino, e.mode, e.uid, e.gid)
                    self.nodes[e.ino] = node
                    if stat.S_ISDIR(e.mode):
                        node.entries = {}
                        todo.append(node)
                    else:
                        node.size = self.disk.size(e.ino)
                node.nlink += 1
        return self.disk.collect(set(self.nodes))

    # -- helpers -------------------------------------------------------------------------

    def _check(self) -> None:
        if self.dead:
            raise FUSEError(errno.EIO)

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> tuple[Node, dict[bytes, int]]:
        node = self._node(ino)
        if node.entries is None:
            raise FUSEError(errno.ENOTDIR)
        return node, node.entries

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.st_mode = node.mode
        if node.entries is not None:
            e.st_nlink = 2 + sum(1 for i in node.entries.values() if self.nodes[i].is_dir)
            e.st_size = 4096
        else:
            e.st_nlink = node.nlink
            e.st_size = node.size
        e.st_uid = node.uid
        e.st_gid = node.gid
        e.st_blksize = 4096
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = node.mtime_ns
        e.st_mtime_ns = node.mtime_ns
        e.st_ctime_ns = node.ctime_ns
        e.attr_timeout = TIMEOUT
        e.entry_timeout = TIMEOUT
        return e

    def _ctl_attrs(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = CTL_INO
        e.st_mode = stat.S_IFREG | 0o600
        e.st_nlink = 1
        e.st_uid = os.getuid()
        e.st_gid = os.getgid()
        e.attr_timeout = TIMEOUT
        e.entry_timeout = TIMEOUT
        return e

    def _ref(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes of a reply that hands the kernel a reference to ``node``."""
        node.lookups += 1
        return self._attrs(node)

    def _maybe_drop(self, node: Node) -> None:
        """Forget an inode nothing can reach any more (its durable files stay until restart:
        a durable name may still point to it)."""
        if node.ino != ROOT and not (node.nlink or node.lookups or node.opens):
            self.nodes.pop(node.ino, None)

    def _log_ns(self, effects: list[tuple[int, bytes, Entry | None]]) -> None:
        self._ns_seq += 1
        self.ns_log.append(NsChange(self._ns_seq, effects))

    def _new_name(self, entries: dict[bytes, int], parent: int, name: bytes) -> None:
        if len(name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        if name in entries or (parent == ROOT and name == CTL_NAME):
            raise FUSEError(errno.EEXIST)

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _read(self, node: Node, off: int, size: int) -> bytes:
        """Durable contents with the pending changes applied in order."""
        end = min(off + size, node.size)
        if end <= off:
            return b""
        buf = bytearray(self.disk.read(node.ino, off, end - off))
        buf.extend(bytes(end - off - len(buf)))  # past the durable end: zeros until written
        for op in node.pending:
            if isinstance(op, Truncate):
                if op.size < end:
                    lo = max(op.size, off)
                    buf[lo - off:] = bytes(end - lo)
            else:
                lo, hi = max(op.off, off), min(op.off + len(op.data), end)
                if lo < hi:
                    buf[lo - off:hi - off] = op.data[lo - op.off:hi - op.off]
        return bytes(buf)

    def _truncate(self, node: Node, size: int) -> None:
        node.pending.append(Truncate(size))
        node.size = size
        node.mtime_ns = node.ctime_ns = time.time_ns()

    # -- the power cut -------------------------------------------------------------------

    def cut(self, torn_seed: int | None, when: str = "now") -> None:
        """Lose every volatile change (or, torn, all but a random part); the device is gone."""
        summary = "every unsynced change dropped"
        if torn_seed is not None:
            summary = self._persist_torn(random.Random(torn_seed))
        self.dead = True
        self.armed = None
        self.nodes.clear()
        self.file_handles.clear()
        self.dir_handles.clear()
        self.ns_log.clear()
        print(f"powerfs: power cut {when} ({summary})", file=sys.stderr, flush=True)

    def _sync_point(self, what: str) -> None:
        """A sync request arrives: an armed cut whose count runs out happens now, instead."""
        if self.armed is None:
            return
        left, seed = self.armed
        if left > 1:
            self.armed = (left - 1, seed)
            return
        self.cut(seed, f"at {what}")
        raise FUSEError(errno.EIO)

    def _persist_torn(self, rng: random.Random) -> str:
        torn_files = 0
        for node in sorted(self.nodes.values(), key=lambda n: n.ino):
            if not node.pending:
                continue
            k = rng.randint(0, len(node.pending))
            ops = node.pending[:k]
            if k < len(node.pending):
                op = node.pending[k]
                if isinstance(op, Write):
                    cut = rng.randint(0, len(op.data))
                    ops.append(Write(op.off, op.data[:cut]))
                    if rng.random() < 0.5:
                        ops.append(Truncate(max(_size_after(self.disk.size(node.ino), ops),
                                                op.off + len(op.data))))
            self.disk.apply(node.ino, ops)
            torn_files += 1
        k = rng.randint(0, len(self.ns_log))
        tables: dict[int, dict[bytes, Entry]] = {}
        for change in self.ns_log[:k]:
            for d, name, e in change.effects:
                if self.dir_synced.get(d, 0) >= change.seq:
                    continue  # the table written by fsyncdir already includes it
                table = tables.setdefault(d, self.disk.table(d))
                if e is None:
                    table.pop(name, None)
                else:
                    table[name] = e
        for d, table in tables.items():
            self.disk.write_table(d, table)
        return (f"torn: part of the pending writes of {torn_files} files and "
                f"{k} of {len(self.ns_log)} namespace changes kept")

    # -- requests ------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check()
        _, entries = self._dir(parent_inode)
        if parent_inode == ROOT and name == CTL_NAME:
            return self._ctl_attrs()
        ino = entries.get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        return self._ref(self.nodes[ino])

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            node = self.nodes.get(ino)
            if node is not None:
                node.lookups = max(0, node.lookups - n)
                self._maybe_drop(node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check()
        if inode == CTL_INO:
            return self._ctl_attrs()
        return self._attrs(self._node(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check()
        if inode == CTL_INO:
            return self._ctl_attrs()
        node = self._node(inode)
        if fields.update_size:
            if node.is_dir:
                raise FUSEError(errno.EISDIR)
            self._truncate(node, attr.st_size)
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = time.time_ns()
        return self._attrs(node)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self._check()
        st = os.statvfs(self.disk.files)
        out = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail"):
            setattr(out, f, getattr(st, f))
        out.f_namemax = 255
        return out

    # -- namespace -----------------------------------------------------------------------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        self._check()
        _, entries = self._dir(parent_inode)
        self._new_name(entries, parent_inode, name)
        node = Node(self.next_ino, stat.S_IFREG | stat.S_IMODE(mode), ctx.uid, ctx.gid,
                    nlink=1, opens=1)
        self.next_ino += 1
        self.nodes[node.ino] = node
        entries[name] = node.ino
        self._log_ns([(parent_inode, name, node.entry())])
        fh = self._fh()
        self.file_handles[fh] = node
        return pyfuse3.FileInfo(fh=fh), self._ref(node)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check()
        _, entries = self._dir(parent_inode)
        self._new_name(entries, parent_inode, name)
        node = Node(self.next_ino, stat.S_IFDIR | stat.S_IMODE(mode), ctx.uid, ctx.gid,
                    entries={}, nlink=1)
        self.next_ino += 1
        self.nodes[node.ino] = node
        entries[name] = node.ino
        self._log_ns([(parent_inode, name, node.entry())])
        return self._ref(node)

    def _remove(self, parent_inode: int, name: bytes, want_dir: bool) -> None:
        self._check()
        _, entries = self._dir(parent_inode)
        ino = entries.get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        node = self.nodes[ino]
        if want_dir and not node.is_dir:
            raise FUSEError(errno.ENOTDIR)
        if not want_dir and node.is_dir:
            raise FUSEError(errno.EISDIR)
        if node.entries:
            raise FUSEError(errno.ENOTEMPTY)
        del entries[name]
        self._log_ns([(parent_inode, name, None)])
        node.nlink -= 1
        node.ctime_ns = time.time_ns()
        self._maybe_drop(node)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._remove(parent_inode, name, want_dir=False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._remove(parent_inode, name, want_dir=True)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._check()
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise FUSEError(errno.EINVAL)
        _, src_entries = self._dir(parent_inode_old)
        _, dst_entries = self._dir(parent_inode_new)
        ino = src_entries.get(name_old)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        node = self.nodes[ino]
        if len(name_new) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        if parent_inode_new == ROOT and name_new == CTL_NAME:
            raise FUSEError(errno.EPERM)
        old_ino = dst_entries.get(name_new)
        if old_ino == ino:
            return
        victim = None
        if old_ino is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            victim = self.nodes[old_ino]
            if node.is_dir and not victim.is_dir:
                raise FUSEError(errno.ENOTDIR)
            if victim.is_dir and not node.is_dir:
                raise FUSEError(errno.EISDIR)
            if victim.entries:
                raise FUSEError(errno.ENOTEMPTY)
        dst_entries[name_new] = ino
        del src_entries[name_old]
        self._log_ns([(parent_inode_new, name_new, node.entry()),
                      (parent_inode_old, name_old, None)])
        node.ctime_ns = time.time_ns()
        if victim is not None:
            victim.nlink -= 1
            self._maybe_drop(victim)

    # -- files ---------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._check()
        fh = self._fh()
        if inode == CTL_INO:
            self.file_handles[fh] = None
            return pyfuse3.FileInfo(fh=fh, direct_io=True)  # reads must reach us, size or not
        node = self._node(inode)
        if node.is_dir:
            raise FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:
            self._truncate(node, 0)
        node.opens += 1
        self.file_handles[fh] = node
        return pyfuse3.FileInfo(fh=fh)

    def _handle(self, fh: int) -> Node:
        self._check()
        try:
            node = self.file_handles[fh]
        except KeyError:
            raise FUSEError(errno.EBADF) from None
        if node is None:
            raise FUSEError(errno.EINVAL)
        return node

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self._check()
        if fh in self.file_handles and self.file_handles[fh] is None:
            return b"on\n"[off:off + size]
        return self._read(self._handle(fh), off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._check()
        if fh in self.file_handles and self.file_handles[fh] is None:
            return self._control(buf)
        node = self._handle(fh)
        node.pending.append(Write(off, bytes(buf)))
        node.size = max(node.size, off + len(buf))
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return len(buf)

    def _control(self, buf: bytes) -> int:
        """``cut [torn SEED] [at-sync N]`` (see the module docstring)."""
        words = buf.decode("ascii", "replace").split()
        seed = at_sync = None
        if words[-2:-1] == ["at-sync"] and words[-1].isdigit() and int(words[-1]) > 0:
            at_sync = int(words[-1])
            del words[-2:]
        if len(words) == 3 and words[:2] == ["cut", "torn"] and words[2].isdigit():
            seed = int(words[2])
        elif words != ["cut"]:
            raise FUSEError(errno.EINVAL)
        if at_sync is None:
            self.cut(seed)
        else:
            self.armed = (at_sync, seed)
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        node = self._handle(fh)
        self._sync_point(f"fsync of inode {node.ino}")
        self.disk.apply(node.ino, node.pending)
        node.pending.clear()

    async def flush(self, fh: int) -> None:
        return None  # close(2) makes nothing durable

    async def release(self, fh: int) -> None:
        node = self.file_handles.pop(fh, None)
        if node is not None:
            node.opens -= 1
            self._maybe_drop(node)

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._check()
        node, _ = self._dir(inode)
        node.opens += 1
        fh = self._fh()
        self.dir_handles[fh] = (node, None)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self._check()
        node, listing = self.dir_handles[fh]
        if listing is None or start_id == 0:
            # A stable listing per handle: offsets stay valid while entries change.
            assert node.entries is not None
            listing = sorted(node.entries.items())
            self.dir_handles[fh] = (node, listing)
        for i in range(start_id, len(listing)):
            name, ino = listing[i]
            child = self.nodes.get(ino)
            if child is None:
                continue  # removed and forgotten since the listing was taken
            if not pyfuse3.readdir_reply(token, name, self._attrs(child), i + 1):
                break
            child.lookups += 1  # readdirplus hands the kernel a reference

    async def releasedir(self, fh: int) -> None:
        entry = self.dir_handles.pop(fh, None)
        if entry is not None:
            entry[0].opens -= 1
            self._maybe_drop(entry[0])

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._check()
        node, _ = self.dir_handles[fh]
        self._sync_point(f"fsyncdir of inode {node.ino}")
        assert node.entries is not None
        self.disk.write_table(node.ino, {name: self.nodes[ino].entry()
                                         for name, ino in node.entries.items()})
        self.dir_synced[node.ino] = self._ns_seq
        # Changes every table they touch already covers are of no use to a torn cut.
        self.ns_log = [c for c in self.ns_log
                       if any(self.dir_synced.get(d, 0) < c.seq for d, _, _ in c.effects)]


def _size_after(size: int, ops: list[ContentOp]) -> int:
    for op in ops:
        size = max(size, op.off + len(op.data)) if isinstance(op, Write) else op.size
    return size


async def _serve(ops: PowerOps, mountpoint: str) -> None:
    options = set(pyfuse3.default_options) | {"fsname=powerfs", "subtype=powerfs"}
    pyfuse3.init(ops, mountpoint, options)
    print(f"powerfs: serving {len(ops.nodes)} inodes at {mountpoint} "
          f"({ops.removed_at_start} unreachable files removed)", file=sys.stderr, flush=True)
    try:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(stop_on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: powerfs.py BACKING_DIR MOUNTPOINT", file=sys.stderr)
        return 2
    trio.run(_serve, PowerOps(argv[0]), os.path.abspath(argv[1]))
    return 0


# -- the test helper ------------------------------------------------------------------------


class PowerFS:
    """A powerfs process serving ``backing`` at ``mountpoint``, for tests; as a context
    manager it is torn down on the way out.

    Fails (never skips) without FUSE, like every real-mount helper here.
    """

    def __enter__(self) -> PowerFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __init__(self, backing: Path, mountpoint: Path, log: Path | None = None) -> None:
        from mounting import require_fuse

        require_fuse()
        self.backing = backing
        self.mountpoint = mountpoint
        self.log_path = log or mountpoint.parent / f"{mountpoint.name}.log"
        backing.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        from mounting import is_mounted

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, str(self.backing), str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise AssertionError(f"powerfs exited with {self.proc.returncode}: "
                                     f"{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("powerfs did not come up within 60 s")
            time.sleep(0.02)

    def cut(self, torn_seed: int | None = None, *, at_sync: int | None = None) -> None:
        """Cut the power; returns once every unsynced change is gone.  With ``at_sync``
        only arm the cut: it happens as the ``at_sync``-th sync request from now arrives."""
        cmd = "cut" if torn_seed is None else f"cut torn {torn_seed}"
        if at_sync is not None:
            cmd += f" at-sync {at_sync}"
        fd = os.open(self.mountpoint / CTL_NAME.decode(), os.O_WRONLY)
        try:
            os.write(fd, cmd.encode())
        finally:
            os.close(fd)

    def is_on(self) -> bool:
        """Whether the power is still on (an armed cut has not happened yet)."""
        try:
            with open(self.mountpoint / CTL_NAME.decode(), "rb") as f:
                return f.read() == b"on\n"
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return False

    def stop(self) -> None:
        """Unmount and wait for the process (nothing may still use the mount)."""
        assert self.proc is not None
        res = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                             capture_output=True, text=True)
        assert res.returncode == 0, f"cannot unmount powerfs: {res.stderr.strip()}"
        rc = self.proc.wait(60)
        assert rc == 0, f"powerfs exited with {rc}: {self.log_path.read_text()[-2000:]}"
        self.proc = None

    def restart(self) -> None:
        """Power back on: a new process that sees only the durable state."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Best-effort teardown for a test that failed half-way."""
        from mounting import is_mounted, stop_daemon

        if self.proc is not None:
            stop_daemon(self.proc, self.mountpoint)
        elif is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        self.proc = None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
