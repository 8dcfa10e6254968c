"""A model-based test of two mounts' answers at the FileSystem level, on one shared engine.

Two "mounts" -- two :class:`~kvfs.vfs.fs.FileSystem` instances, each from its own
``open_volume("mem://", kv=...)`` on ONE :class:`~kvfs.kv.local.MemoryEngine`, each wired
as :mod:`kvfs.fuse.mount` wires a mount of a shared engine (a session, the trash, the
history, and a :class:`~kvfs.vfs.coherence.Coherence` watch with a counting invalidator in
place of the kernel) -- run random operations concurrently: mkdir, create+write+release,
unlink, rmdir, rename (within and across directories, over existing names), chmod, link,
symlink, and the reads lookup, getattr, readdir, readlink and a whole file's read.  The
engine looks shared (``shared=True``) and each mount sees it through a jittery wrapper
(random scheduler turns around every engine call and every watch batch), so answers
overlap watch deliveries and the other mount's commits.  Every successful commit is
recorded in a :class:`History` (every committed state of every key) below the jitter.

After every read, the answer must be what the engine held at some revision ``r`` with
``lo <= r <= hi``: ``hi`` is the engine's revision once the answer is back, ``lo`` the
larger of the mount's watch revision when the call started and this mount's own last
commit to the keys involved (as of the call's start).  States are decoded from the History
with kvfs's own decoders.  What is compared:

* lookup: the inode the dentry key named, and the child's attributes (mode, nlink, size,
  uid, gid -- not times) as its attribute key held them; ENOENT only where the dentry was
  absent, ENOTDIR only where the parent is not a directory;
* getattr: the attribute key, likewise; ENOENT only where it was absent;
* readdir: the names and inodes equal the dentry keys of that directory at ONE revision in
  range (one revision for the whole listing), ``..`` the directory's parent;
* readlink: the symlink key in range -- or, once that key is gone, the target it had: a
  symlink's target never changes and kvfs documents serving it for an inode a path walk
  already holds (``Metadata.symlink_targets``);
* a whole file's read (open, getattr, read, release): each file is written once, by the
  create+write+release that made it, with a payload unique to it; the content at revision
  ``r`` is that payload cut or zero-padded to the size the attribute key held at ``r``
  (no chunk key at ``r``: zeros).  The bytes read must equal the content at some ``r`` in
  range, where ``lo`` here is also at least the engine's revision when ``open`` started
  (close-to-open);
* failures are justified too: EEXIST where the name was present at some revision in
  range, ENOENT where it (or a parent directory) was absent, ENOTEMPTY where the directory
  had entries, EISDIR/ENOTDIR by the types the names had, EINVAL where the directory moved
  was an ancestor of the target's parent, EPERM for a hard link to a directory.

It found two kvfs bugs, both fixed with the record cache (kvfs.kv.cache) that replaced
the read hints: a lookup, unlink, rmdir or rename that met a name another mount's rename
had just replaced answered ENOENT for a name never absent (Metadata._child_attr now runs
the transaction again); and a read in flight, or this mount's own commit, could leave a
value older than one the watch had already applied, served until the key changed again
(the cache keeps no answer overtaken by a change).

At quiet points (after each round, once both watches have delivered the last change to the
inode keys) every answer of both mounts must exactly equal a walk of the whole tree by a
third, fresh FileSystem on the same engine; the History must reproduce the engine's
state key for key.  Each seed ends with ``kvfs.meta.fsck.check``: no problems.

``KVFS_FS_MODEL_SEEDS`` (default 40, about 10 s) sets how many seeds run, each of 4 rounds
of 40 steps per mount; ``KVFS_FS_MODEL_FIRST_SEED`` the first one.  A long run (about 2 minutes):
``KVFS_FS_MODEL_SEEDS=500 pytest -s tests/test_fs_cache_model.py``.  Scheduling is not
reproducible from the seed alone (trio orders runnable tasks at random, and times enter
inode attributes), so a failing seed may need several runs to fail again.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
from fsapi import ROOT, USER, read_all
from jittery import Jittery
from sortedcontainers import SortedDict

from kvfs.errors import FSError
from kvfs.history.recorder import Recorder
from kvfs.history.records import HistorySettings
from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    KVEngine,
    Put,
    prefix_end,
)
from kvfs.kv.delegating import DelegatingEngine
from kvfs.kv.local import MemoryEngine
from kvfs.meta import keys, trash
from kvfs.meta.fsck import check
from kvfs.meta.metadata import SetAttr
from kvfs.meta.records import Attr, decode_dentry
from kvfs.meta.session import Session
from kvfs.vfs.coherence import Coherence
from kvfs.vfs.fs import FileSystem
from kvfs.volume import Volume, format_volume, open_volume

DIR_FT = stat.S_IFDIR >> 12
REG_FT = stat.S_IFREG >> 12
LNK_FT = stat.S_IFLNK >> 12
NAMES1 = [b"a", b"b", b"c"]  # names in the root
NAMES2 = [b"p", b"q", b"r"]  # names one level down
ROUNDS = 4
STEPS = 40  # per mount and round


# -- the engine, as recorded and as each mount sees it --------------------------------------


class History:
    """Every committed state of every key, by revision, as the commits happened."""

    def __init__(self) -> None:
        self.log: SortedDict = SortedDict()  # key -> [(revision, value or None)]
        self.revs: list[int] = []  # every committed revision, ascending

    def record(self, rev: int, puts: Sequence[Put], deletes: Sequence[Delete]) -> None:
        self.revs.append(rev)
        for d in deletes:
            if d.range_end is None:
                hit = [d.key]
            elif d.range_end == b"\x00":
                hit = list(self.log.irange(d.key))
            else:
                hit = list(self.log.irange(d.key, d.range_end, inclusive=(True, False)))
            for k in hit:
                if self.at(k, rev) is not None:
                    self.log[k].append((rev, None))
        for p in puts:
            self.log.setdefault(p.key, []).append((rev, p.value))

    def at(self, key: bytes, rev: int) -> bytes | None:
        """The key's value at revision ``rev``."""
        cur: bytes | None = None
        for r, v in self.log.get(key, ()):
            if r > rev:
                break
            cur = v
        return cur

    def states(self, key: bytes, lo: int, hi: int) -> list[bytes | None]:
        """The key's values at every revision in [lo, hi]."""
        out = [self.at(key, lo)]
        out += [v for r, v in self.log.get(key, ()) if lo < r <= hi]
        return out

    def revisions(self, lo: int, hi: int) -> list[int]:
        """``lo`` and every committed revision in (lo, hi]: each state in between is one
        of these revisions' states."""
        return [lo, *self.revs[bisect_right(self.revs, lo):bisect_right(self.revs, hi)]]

    def group(self, prefix: bytes, rev: int) -> dict[bytes, bytes]:
        """The present keys under ``prefix`` at ``rev``, with their values."""
        out = {}
        for k in self.log.irange(prefix, prefix_end(prefix), inclusive=(True, False)):
            v = self.at(k, rev)
            if v is not None:
                out[k] = v
        return out

    def group_states(self, prefix: bytes, lo: int, hi: int) -> list[dict[bytes, bytes]]:
        ks = list(self.log.irange(prefix, prefix_end(prefix), inclusive=(True, False)))
        revs = {lo} | {r for k in ks for r, _ in self.log[k] if lo < r <= hi}
        return [self.group(prefix, r) for r in sorted(revs)]

    def last_own(self, key: bytes, own: frozenset[int]) -> int:
        return max((r for r, _ in self.log.get(key, ()) if r in own), default=0)

    def last_own_under(self, prefix: bytes, own: frozenset[int]) -> int:
        return max((self.last_own(k, own) for k in
                    self.log.irange(prefix, prefix_end(prefix), inclusive=(True, False))),
                   default=0)


class Recorded(DelegatingEngine):
    """The one shared engine: looks shared (as etcd does), records every successful commit
    in ``hist`` before anyone can see it, and stays open when a mount's volume closes."""

    def __init__(self, inner: KVEngine, hist: History) -> None:
        super().__init__(inner)
        self.shared = True
        self.hist = hist

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        # MemoryEngine applies a commit without yielding, so nothing reads its revision
        # before it is recorded here.
        res = await self.inner.commit(compares, puts, deletes)
        if res.succeeded:
            self.hist.record(res.revision, puts, deletes)
        return res

    async def aclose(self) -> None:
        """The test closes the engine itself, after every mount."""


class OwnCommits(DelegatingEngine):
    """One mount's view of the shared engine: adds the revision of each of its successful
    commits to ``own``."""

    def __init__(self, inner: KVEngine, own: set[int]) -> None:
        super().__init__(inner)
        self.own = own

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        res = await self.inner.commit(compares, puts, deletes)
        if res.succeeded:
            self.own.add(res.revision)
        return res


class NullInvalidator:
    """The kernel's side of coherence: this test has no kernel, only counts."""

    def __init__(self) -> None:
        self.calls = 0

    async def invalidate(self, entries: Sequence[tuple[int, bytes]],
                         inodes: Sequence[int]) -> None:
        self.calls += len(entries) + len(inodes)


# -- mounts --------------------------------------------------------------------------------


@dataclass
class Mount:
    name: str
    vol: Volume
    fs: FileSystem
    coh: Coherence
    session: Session
    own: set[int]  # revisions of this mount's successful commits
    known: dict[int, int] = field(default_factory=dict)  # inode -> file type, as seen


@dataclass(frozen=True)
class Before:
    """What bounds an answer from below, taken when the call started."""

    watch: int  # the mount's watch revision
    own: frozenset[int]  # the mount's commits so far
    floor: int = 0  # close-to-open: the engine's revision when open started

    def lo(self, hist: History, *keys_: bytes, under: bytes | None = None) -> int:
        own = [hist.last_own(k, self.own) for k in keys_]
        if under is not None:
            own.append(hist.last_own_under(under, self.own))
        return max(self.watch, self.floor, *own)


async def open_mount(name: str, shared: KVEngine, hist: History, rng: random.Random,
                     nursery: trio.Nursery) -> Mount:
    """One mount of the shared engine, wired as kvfs.fuse.mount.serve wires one."""
    own: set[int] = set()
    # Now and then the watch lags well behind the commits (a busy stream).
    view = Jittery(shared, rng, watch_turns=(0, 0, 1, 2, 5, 50))
    vol = await open_volume("mem://", kv=OwnCommits(view, own))
    vol.meta.trash_days = vol.fmt.trash_days
    await vol.meta.ensure_trash()
    session = await Session.register(vol.kv, f"/model/{name}", 60.0, held=vol.meta.held)
    vol.meta.session_id = session.sid
    fs = FileSystem(vol.meta, vol.slices)
    fs.keep_history(Recorder(vol.meta, vol.fmt.history_settings, f"host-{name}"))
    known: dict[int, int] = {ROOT: DIR_FT}
    coh = Coherence(NullInvalidator(), known_inodes=known, on_orphaned=fs.note_orphaned)
    vol.cache.listen(coh.apply)
    await nursery.start(session.keepalive)
    await nursery.start(vol.cache.run)
    return Mount(name, vol, fs, coh, session, own, known)


# -- checks --------------------------------------------------------------------------------


def fields(a: Attr) -> tuple[int, int, int, int, int]:
    """What is compared of attributes: not times (every change moves them)."""
    return a.mode, a.nlink, a.size, a.uid, a.gid


def decoded_attr(v: bytes | None) -> Attr | None:
    return None if v is None else Attr.decode(v)


def decoded_dentry(v: bytes | None) -> tuple[int, int] | None:
    return None if v is None else decode_dentry(v)


def listing(group: dict[bytes, bytes]) -> dict[bytes, int]:
    return {keys.dentry_name(k): decode_dentry(v)[1] for k, v in group.items()}


class Model:
    """The shared engine's History, the payloads written, and the checks of answers."""

    def __init__(self, seed: int, engine: MemoryEngine, hist: History) -> None:
        self.seed = seed
        self.engine = engine
        self.hist = hist
        self.payload: dict[int, bytes] = {}  # inode -> the bytes its creator wrote
        self.latest: dict[str, int] = {}  # mount -> the file it created last
        self.checked = 0
        self.failures_justified = 0

    def before(self, m: Mount, *, floor: int = 0) -> Before:
        return Before(m.vol.cache.revision, frozenset(m.own), floor)

    async def now(self) -> int:
        return await self.engine.current_revision()

    def verdict(self, ok: bool, what: str, *detail: object) -> None:
        self.checked += 1
        assert ok, f"seed {self.seed}: {what}: " + "; ".join(map(str, detail))

    # -- state at a revision ------------------------------------------------------------

    def attrs(self, b: Before, ino: int, hi: int) -> list[Attr | None]:
        k = keys.attr(ino)
        return [decoded_attr(v) for v in self.hist.states(k, b.lo(self.hist, k), hi)]

    def dentries(self, b: Before, parent: int, name: bytes, hi: int
                 ) -> list[tuple[int, int] | None]:
        k = keys.dentry(parent, name)
        return [decoded_dentry(v) for v in self.hist.states(k, b.lo(self.hist, k), hi)]

    def listings(self, b: Before, ino: int, hi: int) -> list[dict[bytes, int]]:
        prefix = keys.dentry_prefix(ino)
        lo = b.lo(self.hist, under=prefix)
        return [listing(g) for g in self.hist.group_states(prefix, lo, hi)]

    def content(self, ino: int, rev: int) -> bytes:
        """The file's bytes at ``rev``: its one payload, cut or padded to its size then."""
        a = decoded_attr(self.hist.at(keys.attr(ino), rev))
        size = a.size if a is not None else 0
        if self.hist.at(keys.chunk(ino, 0), rev) is None:
            return bytes(size)
        data = self.payload.get(ino, b"")
        return data[:size] + bytes(max(0, size - len(data)))

    def ancestors(self, ino: int, rev: int) -> set[int]:
        """``ino`` and the directories above it at ``rev``."""
        out = {ino}
        while ino != ROOT:
            a = decoded_attr(self.hist.at(keys.attr(ino), rev))
            if a is None or not a.parent or a.parent in out:
                break
            ino = a.parent
            out.add(ino)
        return out

    # -- justifying a failure -----------------------------------------------------------

    def gone(self, b: Before, ino: int, hi: int) -> bool:
        """Some state in range has no such inode, or one without links."""
        return any(a is None or a.nlink == 0 for a in self.attrs(b, ino, hi))

    def not_dir(self, b: Before, ino: int, hi: int) -> bool:
        return any(a is not None and not a.is_dir for a in self.attrs(b, ino, hi))

    def absent(self, b: Before, parent: int, name: bytes, hi: int) -> bool:
        return None in self.dentries(b, parent, name, hi) or self.gone(b, parent, hi)

    def present(self, b: Before, parent: int, name: bytes, hi: int) -> bool:
        return any(e is not None for e in self.dentries(b, parent, name, hi))

    def named_type(self, b: Before, parent: int, name: bytes, hi: int, *, is_dir: bool
                   ) -> bool:
        return any(e is not None and (e[0] == DIR_FT) == is_dir
                   for e in self.dentries(b, parent, name, hi))

    def named_nonempty(self, b: Before, parent: int, name: bytes, hi: int) -> bool:
        dirs = {e[1] for e in self.dentries(b, parent, name, hi) if e and e[0] == DIR_FT}
        return any(any(self.listings(b, d, hi)) for d in dirs)

    def justify(self, m: Mount, op: str, err: int, reasons: dict[int, bool], b: Before,
                hi: int) -> None:
        """Fail unless ``reasons[err]`` holds."""
        self.failures_justified += 1
        self.verdict(reasons.get(err, False), f"{m.name} {op} failed with "
                     f"{errno.errorcode.get(err, err)}, which no state in range explains",
                     reasons)

    # -- reads, each checked -------------------------------------------------------------

    async def lookup(self, m: Mount, parent: int, name: bytes) -> int | None:
        b = self.before(m)
        try:
            ino, attr = await m.fs.lookup(parent, name)
        except FSError as e:
            hi = await self.now()
            self.justify(m, f"lookup({parent}, {name!r})", e.errno, {
                errno.ENOENT: self.absent(b, parent, name, hi),
                errno.ENOTDIR: self.not_dir(b, parent, hi)}, b, hi)
            return None
        hi = await self.now()
        ents = self.dentries(b, parent, name, hi)
        self.verdict(any(e is not None and e[1] == ino for e in ents),
                     f"{m.name} lookup({parent}, {name!r}) -> inode {ino}", ents)
        allowed = [fields(a) for a in self.attrs(b, ino, hi) if a is not None]
        self.verdict(fields(attr) in allowed,
                     f"{m.name} lookup({parent}, {name!r}) attributes of {ino}",
                     fields(attr), allowed)
        m.known[ino] = stat.S_IFMT(attr.mode) >> 12
        return ino

    async def walk(self, m: Mount, names: Sequence[bytes]) -> int | None:
        """The inode at ``names`` from the root, each step a checked lookup."""
        ino: int = ROOT
        for n in names:
            got = await self.lookup(m, ino, n)
            if got is None:
                return None
            ino = got
        return ino

    async def getattr(self, m: Mount, ino: int) -> None:
        b = self.before(m)
        try:
            attr = await m.fs.getattr(ino)
        except FSError as e:
            hi = await self.now()
            self.justify(m, f"getattr({ino})", e.errno,
                         {errno.ENOENT: None in self.attrs(b, ino, hi)}, b, hi)
            return
        hi = await self.now()
        allowed = [fields(a) for a in self.attrs(b, ino, hi) if a is not None]
        self.verdict(fields(attr) in allowed, f"{m.name} getattr({ino})", fields(attr),
                     allowed, f"lo={b.lo(self.hist, keys.attr(ino))} hi={hi}")

    async def readdir(self, m: Mount, ino: int) -> None:
        b = self.before(m)
        try:
            fh = await m.fs.opendir(ino)
            try:
                got = await m.fs.readdir(fh, 0)
            finally:
                await m.fs.releasedir(fh)
        except FSError as exc:
            hi = await self.now()
            self.justify(m, f"readdir({ino})", exc.errno, {
                errno.ENOENT: None in self.attrs(b, ino, hi),
                errno.ENOTDIR: self.not_dir(b, ino, hi)}, b, hi)
            return
        hi = await self.now()
        entries = {e.name: e.ino for _, e in got if e.name not in (b".", b"..")}
        allowed = self.listings(b, ino, hi)
        self.verdict(entries in allowed, f"{m.name} readdir({ino})", entries, allowed)
        dotdot = next(e.ino for _, e in got if e.name == b"..")
        parents = [a.parent or ino for a in self.attrs(b, ino, hi) if a is not None]
        self.verdict(dotdot in parents, f"{m.name} readdir({ino}) '..'", dotdot, parents)
        for _, ent in got:
            if ent.name not in (b".", b".."):
                m.known.setdefault(ent.ino, ent.ftype)

    async def readlink(self, m: Mount, ino: int) -> None:
        b = self.before(m)
        k = keys.symlink(ino)
        try:
            target = await m.fs.readlink(ino)
        except FSError as e:
            hi = await self.now()
            self.justify(m, f"readlink({ino})", e.errno,
                         {errno.ENOENT: None in self.attrs(b, ino, hi)}, b, hi)
            return
        hi = await self.now()
        states = self.hist.states(k, b.lo(self.hist, k), hi)
        ever = {v for _, v in self.hist.log.get(k, ()) if v is not None}
        self.verdict(len(ever) == 1, f"symlink {ino}'s target changed", ever)
        # Once the key is gone, the target it had (see module docstring).
        self.verdict(target in states or (None in states and target in ever),
                     f"{m.name} readlink({ino})", target, states)

    async def read(self, m: Mount, ino: int) -> None:
        b = self.before(m, floor=await self.now())
        try:
            data = await read_all(m.fs, ino)
        except FSError as e:
            hi = await self.now()
            self.justify(m, f"read({ino})", e.errno,
                         {errno.ENOENT: None in self.attrs(b, ino, hi)}, b, hi)
            return
        hi = await self.now()
        lo = b.lo(self.hist, keys.attr(ino), keys.chunk(ino, 0))
        allowed = {self.content(ino, r) for r in self.hist.revisions(lo, hi)}
        self.verdict(data in allowed, f"{m.name} read({ino}) of {len(data)} bytes",
                     f"lo={lo} hi={hi}", sorted(len(x) for x in allowed))


# -- the random steps -----------------------------------------------------------------------


def random_path(rng: random.Random) -> tuple[bytes, ...]:
    if rng.random() < 0.4:
        return (rng.choice(NAMES1),)
    return rng.choice(NAMES1), rng.choice(NAMES2)


def known_of(m: Mount, rng: random.Random, ftype: int) -> int | None:
    inos = sorted(i for i, t in m.known.items() if t == ftype)
    return rng.choice(inos) if inos else None


async def change(model: Model, m: Mount, rng: random.Random, step: int) -> None:
    """One random change by mount ``m``; a failure must be justified by some state."""
    fs = m.fs
    op = rng.choice(["mkdir", "create", "create", "unlink", "rmdir", "rename", "rename",
                     "chmod", "link", "symlink"])
    path = random_path(rng)
    parent = await model.walk(m, path[:-1])
    if parent is None:
        return
    name = path[-1]
    # The other name a change involves: chmod's inode, link's source, rename's target.
    other = ino = 0
    to = random_path(rng)
    if op in ("chmod", "link"):
        found = await (model.lookup(m, parent, name) if op == "chmod"
                       else model.walk(m, to))
        if found is None:
            return
        ino = found
    elif op == "rename":
        found = await model.walk(m, to[:-1])
        if found is None:
            return
        other = found
    b = model.before(m)
    try:
        if op == "mkdir":
            m.known[(await fs.mkdir(USER, parent, name, 0o755))[0]] = DIR_FT
        elif op == "symlink":
            target = b"to-%s-%d" % (m.name.encode(), step)
            m.known[(await fs.symlink(USER, parent, name, target))[0]] = LNK_FT
        elif op == "create":
            fh, new, _ = await fs.create(USER, parent, name, 0o644,
                                         os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            payload = (b"%s:%d:%d;" % (m.name.encode(), model.seed, step)) * rng.randrange(200)
            model.payload[new] = payload  # before any commit of its data can be read
            m.known[new] = REG_FT
            model.latest[m.name] = new
            try:
                for _ in range(rng.choice([0, 0, 5, 30])):  # a writer taking its time
                    await trio.lowlevel.checkpoint()
                if payload:
                    await fs.write(fh, 0, payload)
            finally:
                await fs.release(fh)
        elif op == "unlink":
            await fs.unlink(parent, name)
        elif op == "rmdir":
            await fs.rmdir(parent, name)
        elif op == "chmod":
            await fs.setattr(ino, SetAttr(mode=rng.choice([0o644, 0o600, 0o755, 0o700])))
        elif op == "link":
            await fs.link(ino, parent, name)
        else:
            await fs.rename(parent, name, other, to[-1])
    except FSError as e:
        hi = await model.now()
        reasons: dict[int, bool] = {errno.ENOTDIR: model.not_dir(b, parent, hi)}
        if op in ("mkdir", "symlink", "create"):
            reasons[errno.EEXIST] = model.present(b, parent, name, hi)
            reasons[errno.ENOENT] = model.gone(b, parent, hi)
        elif op == "unlink":
            reasons[errno.ENOENT] = model.absent(b, parent, name, hi)
            reasons[errno.EISDIR] = model.named_type(b, parent, name, hi, is_dir=True)
        elif op == "rmdir":
            reasons[errno.ENOENT] = model.absent(b, parent, name, hi)
            reasons[errno.ENOTDIR] |= model.named_type(b, parent, name, hi, is_dir=False)
            reasons[errno.ENOTEMPTY] = model.named_nonempty(b, parent, name, hi)
        elif op == "chmod":
            reasons = {errno.ENOENT: model.gone(b, ino, hi)}
        elif op == "link":
            reasons[errno.EPERM] = any(a is not None and a.is_dir
                                       for a in model.attrs(b, ino, hi))
            reasons[errno.ENOENT] = model.gone(b, ino, hi) or model.gone(b, parent, hi)
            reasons[errno.EEXIST] = model.present(b, parent, name, hi)
        else:
            reasons.update(rename_reasons(model, b, parent, name, other, to[-1], hi))
        model.justify(m, f"{op} {path!r} {to!r}", e.errno, reasons, b, hi)


def rename_reasons(model: Model, b: Before, p1: int, n1: bytes, p2: int, n2: bytes,
                   hi: int) -> dict[int, bool]:
    """The errnos a rename of ``p1/n1`` to ``p2/n2`` may fail with, given the states."""
    src_dir = model.named_type(b, p1, n1, hi, is_dir=True)
    src_file = model.named_type(b, p1, n1, hi, is_dir=False)
    dst_dir = model.named_type(b, p2, n2, hi, is_dir=True)
    dst_file = model.named_type(b, p2, n2, hi, is_dir=False)
    srcs = {e[1] for e in model.dentries(b, p1, n1, hi) if e and e[0] == DIR_FT}
    lo = max(b.watch, min(b.lo(model.hist, keys.attr(p2)), hi))
    into_itself = any(s in model.ancestors(p2, r) for r in model.hist.revisions(lo, hi)
                      for s in srcs)
    return {
        errno.ENOENT: model.absent(b, p1, n1, hi) or model.gone(b, p2, hi),
        errno.ENOTDIR: model.not_dir(b, p1, hi) or model.not_dir(b, p2, hi)
        or (src_dir and dst_file),
        errno.EISDIR: src_file and dst_dir,
        errno.ENOTEMPTY: model.named_nonempty(b, p2, n2, hi),
        errno.EINVAL: into_itself,
    }


async def read_step(model: Model, m: Mount, rng: random.Random) -> None:
    """One random read by mount ``m``, checked against the History."""
    op = rng.choice(["lookup", "lookup", "getattr", "getattr", "readdir", "readlink",
                     "read", "read"])
    if op == "lookup":
        await model.walk(m, random_path(rng))
        return
    want = {"getattr": rng.choice([DIR_FT, REG_FT, LNK_FT]), "readdir": DIR_FT,
            "readlink": LNK_FT, "read": REG_FT}[op]
    ino = known_of(m, rng, want)
    theirs = [i for n, i in model.latest.items() if n != m.name and i in m.known]
    if op == "read" and theirs and rng.random() < 0.5:
        ino = theirs[0]  # what the other mount just wrote: close-to-open matters most
    if ino is None:
        return
    if op == "getattr":
        await model.getattr(m, ino)
    elif op == "readdir":
        await model.readdir(m, ino)
    elif op == "readlink":
        await model.readlink(m, ino)
    else:
        await model.read(m, ino)


async def mount_steps(model: Model, m: Mount, rng: random.Random, steps: int,
                      first_step: int) -> None:
    for step in range(first_step, first_step + steps):
        for _ in range(rng.choice([0, 1, 3])):
            await trio.lowlevel.checkpoint()
        if rng.random() < 0.45:
            await change(model, m, rng, step)
        else:
            await read_step(model, m, rng)


# -- quiet points ----------------------------------------------------------------------------


async def tree(fs: FileSystem) -> dict[bytes, object]:
    """Every answer about the whole tree (and the trash): path -> what the mount said."""
    out: dict[bytes, object] = {}

    async def visit(ino: int, path: bytes) -> None:
        fh = await fs.opendir(ino)
        try:
            got = [e for _, e in await fs.readdir(fh, 0)]
        finally:
            await fs.releasedir(fh)
        out[path or b"/"] = sorted((e.name, e.ino, e.ftype) for e in got)
        for e in got:
            if e.name in (b".", b".."):
                continue
            await node(ino, e.name, path + b"/" + e.name)

    async def node(parent: int, name: bytes, path: bytes) -> None:
        ino, attr = await fs.lookup(parent, name)
        now = await fs.getattr(ino)
        rec: list[object] = [ino, fields(attr), fields(now)]
        if attr.is_dir:
            await visit(ino, path)
        elif attr.is_symlink:
            rec.append(await fs.readlink(ino))
        elif attr.is_reg:
            rec.append(await read_all(fs, ino))
        out[path + b"#"] = rec

    await visit(ROOT, b"")
    await node(ROOT, trash.TRASH_NAME, b"/" + trash.TRASH_NAME)
    return out


async def quiet_check(model: Model, mounts: list[Mount], shared: KVEngine) -> None:
    """Once both watches have delivered the last change to inode keys, every answer of
    both mounts is exactly what a fresh mount reads from the engine."""
    hist = model.hist
    last = max((r for k, log in hist.log.items() if k.startswith(keys.INODE_PREFIX)
                for r, _ in log), default=0)
    with trio.fail_after(60):  # a hang guard only: the watch normally takes milliseconds
        while any(m.vol.cache.revision < last for m in mounts):
            await trio.sleep(0.001)
    rev = await model.now()
    engine_state = {kv.key: kv.value for kv in (await model.engine.range(b"", b"\x00")).kvs}
    assert engine_state == {k: v for k in hist.log if (v := hist.at(k, rev)) is not None}, \
        f"seed {model.seed}: the History does not reproduce the engine at revision {rev}"
    fresh = await open_volume("mem://", kv=shared)
    want = await tree(FileSystem(fresh.meta, fresh.slices))
    await fresh.aclose()
    for m in mounts:
        got = await tree(m.fs)
        if got != want:
            diff = {p: (got.get(p), want.get(p)) for p in sorted(set(got) | set(want))
                    if got.get(p) != want.get(p)}
            raise AssertionError(f"seed {model.seed}: {m.name} at quiet revision {rev} "
                                 f"differs from the engine (mount's, engine's): {diff}")
    assert await model.now() == rev, "a quiet walk committed something"


# -- the test ------------------------------------------------------------------------------


async def run_model(seed: int) -> Model:
    rng = random.Random(seed)
    engine = MemoryEngine()
    hist = History()
    shared = Recorded(engine, hist)
    await format_volume(shared, "model", trash_days=rng.choice([0.0, 1.0]),
                        history=HistorySettings(days=rng.choice([0.0, 1.0])))
    model = Model(seed, engine, hist)
    async with trio.open_nursery() as nursery:
        mounts = [await open_mount(n, shared, hist, random.Random(seed * 2 + i), nursery)
                  for i, n in enumerate(["A", "B"])]
        for rnd in range(ROUNDS):
            async with trio.open_nursery() as steps:
                for m in mounts:
                    steps.start_soon(mount_steps, model, m, random.Random(rng.random()),
                                     STEPS, rnd * STEPS)
            await quiet_check(model, mounts, shared)
        for m in mounts:
            await m.fs.flush_all()
        nursery.cancel_scope.cancel()
    for m in mounts:
        await m.session.close()
        await m.vol.aclose()
    fresh = await open_volume("mem://", kv=shared)
    report = await check(engine, fresh.store, fresh.fmt.block_size, leaked_blocks=True)
    await fresh.aclose()
    assert not report.problems, f"seed {seed}: fsck: {report.problems}"
    await engine.aclose()
    return model


async def test_two_mounts_model() -> None:
    first = int(os.environ.get("KVFS_FS_MODEL_FIRST_SEED", "0"))
    checked = justified = 0
    for seed in range(first, first + int(os.environ.get("KVFS_FS_MODEL_SEEDS", "40"))):
        model = await run_model(seed)
        checked += model.checked
        justified += model.failures_justified
    print(f"{checked} answers checked, {justified} failures justified")
