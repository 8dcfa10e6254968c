"""Model-based test of :class:`~kvfs.meta.metadata.Metadata` over a MemoryEngine.

A hypothesis state machine applies random namespace operations (mkdir, create, symlink,
unlink, rmdir, rename with flags, link, open/close of handles) both to Metadata and to a
plain in-memory tree, and checks after every step that

* every operation fails exactly when the model says so, with the model's errno;
* the whole tree (names, types, link counts, inode identity of hard links, symlink
  targets, ``..`` of every directory) matches the model;
* inodes unlinked while open stay with ``nlink == 0`` until closed;
* the fsck reports no problem.

Each step runs in its own ``trio.run``; the engine (plain in-memory state) is kept between
steps.  The expected errors follow Linux's ``renameat2``/``linkat`` order where the order
decides the outcome.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvfs.errors import FSError
from kvfs.kv.local import MemoryEngine
from kvfs.meta.fsck import check
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.metadata import RENAME_EXCHANGE, RENAME_NOREPLACE, Ctx, Metadata

CTX = Ctx(1000, 1000)
NAMES = [b"a", b"b", b"c", b"d"]
FLAGS = [0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_NOREPLACE | RENAME_EXCHANGE]
DIR, REG, LNK = "d", "f", "l"


def _errname(err: int | None) -> str:
    """An errno's name, or "success" for no error."""
    return "success" if err is None else errno.errorcode.get(err, str(err))


class Expected(Exception):
    """The model's verdict: the operation must fail with ``errno``."""

    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode[err])
        self.errno = err


@dataclass
class Node:
    kind: str
    entries: dict[bytes, int] = field(default_factory=dict)  # directories only
    parent: int = 0  # directories: the containing directory (kept after removal)
    target: bytes = b""  # symlinks
    removed: bool = False  # no links left but still open (orphan)


class Model:
    """The namespace as a plain tree of :class:`Node` keyed by the real inode numbers."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {ROOT_INO: Node(DIR, parent=ROOT_INO)}
        self.gone: set[int] = set()  # inodes that no longer exist at all
        self.open: set[int] = set()

    # -- queries --------------------------------------------------------------------

    def links(self, ino: int) -> int:
        n = self.nodes[ino]
        if n.removed:
            return 0
        if n.kind == DIR:
            return 2 + sum(self.nodes[c].kind == DIR for c in n.entries.values())
        return sum(list(d.entries.values()).count(ino)
                   for d in self.nodes.values() if d.kind == DIR)

    def dir(self, ino: int) -> Node:
        """The directory ``ino`` as a parent of an operation (ENOENT / ENOTDIR)."""
        n = self.nodes.get(ino)
        if n is None:
            raise Expected(errno.ENOENT)
        if n.kind != DIR:
            raise Expected(errno.ENOTDIR)
        return n

    def is_ancestor_or_self(self, anc: int, ino: int) -> bool:
        """Walks ``..`` from ``ino`` as Metadata does; a removed directory's chain may end in
        an inode that is gone (ENOENT)."""
        cur = ino
        while cur != ROOT_INO:
            if cur == anc:
                return True
            if cur not in self.nodes:
                raise Expected(errno.ENOENT)
            cur = self.nodes[cur].parent
        return anc == ROOT_INO

    # -- changes --------------------------------------------------------------------

    def drop_link(self, ino: int) -> None:
        """One name of ``ino`` went away (already removed from its directory)."""
        if self.links(ino) == 0:
            self.forget(ino)

    def forget(self, ino: int) -> None:
        if ino in self.open:
            self.nodes[ino].removed = True
        else:
            del self.nodes[ino]
            self.gone.add(ino)


class MetadataMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.kv = MemoryEngine()
        self.model = Model()
        self.meta = Metadata(self.kv, session_id=7, is_open=lambda ino: ino in self.model.open)
        trio.run(self.meta.init_root)

    # -- plumbing -------------------------------------------------------------------

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        return trio.run(fn, *args)

    def outcome(self, expect, real):  # type: ignore[no-untyped-def]
        """Run the model's ``expect()`` and Metadata's ``real()``; compare the outcomes.

        ``expect`` raises :class:`Expected` or returns a function applying the change to
        the model given the real result.
        """
        try:
            apply = expect()
            want = None
        except Expected as e:
            apply, want = None, e.errno
        try:
            result = self.run(real)
            got = None
        except FSError as e:
            result, got = None, e.errno
        assert got == want, f"expected {_errname(want)}, got {_errname(got)}"
        if apply is not None:
            apply(result)

    def draw_dir(self, data: st.DataObject, label: str) -> int:
        """Mostly live directories; sometimes anything else (files, removed inodes)."""
        m = self.model
        dirs = sorted(i for i, n in m.nodes.items() if n.kind == DIR and not n.removed)
        others = sorted(i for i, n in m.nodes.items() if n.kind != DIR or n.removed)
        others += sorted(m.gone)[-3:]
        if others and data.draw(st.integers(0, 5), label=f"{label}-odd") == 0:
            return data.draw(st.sampled_from(others), label=label)
        return data.draw(st.sampled_from(dirs), label=label)

    def draw_name(self, data: st.DataObject, label: str) -> bytes:
        return data.draw(st.sampled_from(NAMES), label=label)

    # -- rules ----------------------------------------------------------------------

    def _create(self, data: st.DataObject, kind: str) -> None:
        m = self.model
        parent = self.draw_dir(data, "parent")
        name = self.draw_name(data, "name")
        target = data.draw(st.binary(min_size=1, max_size=8), label="target") \
            if kind == LNK else None
        mode = {DIR: stat.S_IFDIR | 0o755, REG: stat.S_IFREG | 0o644,
                LNK: stat.S_IFLNK | 0o777}[kind]

        def expect():  # type: ignore[no-untyped-def]
            p = m.dir(parent)
            if p.removed:
                raise Expected(errno.ENOENT)
            if name in p.entries:
                raise Expected(errno.EEXIST)

            def apply(res) -> None:  # type: ignore[no-untyped-def]
                ino, attr, created = res
                assert created and ino not in m.nodes and ino not in m.gone
                p.entries[name] = ino
                m.nodes[ino] = Node(kind, parent=parent, target=target or b"")
            return apply

        self.outcome(expect, lambda: self.meta.create(CTX, parent, name, mode, target=target))

    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        self._create(data, DIR)

    @rule(data=st.data())
    def create_file(self, data: st.DataObject) -> None:
        self._create(data, REG)

    @rule(data=st.data())
    def symlink(self, data: st.DataObject) -> None:
        self._create(data, LNK)

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        m = self.model
        parent = self.draw_dir(data, "parent")
        name = self.draw_name(data, "name")

        def expect():  # type: ignore[no-untyped-def]
            p = m.dir(parent)
            if name not in p.entries:
                raise Expected(errno.ENOENT)
            ino = p.entries[name]
            if m.nodes[ino].kind == DIR:
                raise Expected(errno.EISDIR)

            def apply(res) -> None:  # type: ignore[no-untyped-def]
                assert res == ino
                del p.entries[name]
                m.drop_link(ino)
            return apply

        self.outcome(expect, lambda: self.meta.unlink(parent, name))

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        m = self.model
        parent = self.draw_dir(data, "parent")
        name = self.draw_name(data, "name")

        def expect():  # type: ignore[no-untyped-def]
            p = m.dir(parent)
            if name not in p.entries:
                raise Expected(errno.ENOENT)
            ino = p.entries[name]
            if m.nodes[ino].kind != DIR:
                raise Expected(errno.ENOTDIR)
            if m.nodes[ino].entries:
                raise Expected(errno.ENOTEMPTY)

            def apply(res) -> None:  # type: ignore[no-untyped-def]
                assert res == ino
                del p.entries[name]
                m.forget(ino)
            return apply

        self.outcome(expect, lambda: self.meta.rmdir(parent, name))

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        m = self.model
        candidates = sorted(i for i, n in m.nodes.items() if n.kind != DIR)
        pool = candidates * 4 + sorted(m.nodes)[:3] + sorted(m.gone)[-2:]
        if not pool:
            return
        ino = data.draw(st.sampled_from(pool), label="ino")
        parent = self.draw_dir(data, "parent")
        name = self.draw_name(data, "name")

        def expect():  # type: ignore[no-untyped-def]
            n = m.nodes.get(ino)
            if n is None:
                raise Expected(errno.ENOENT)
            if n.kind == DIR:
                raise Expected(errno.EPERM)
            if n.removed:
                raise Expected(errno.ENOENT)
            p = m.dir(parent)
            if p.removed:
                raise Expected(errno.ENOENT)
            if name in p.entries:
                raise Expected(errno.EEXIST)

            def apply(res) -> None:  # type: ignore[no-untyped-def]
                p.entries[name] = ino
            return apply

        self.outcome(expect, lambda: self.meta.link(ino, parent, name))

    @rule(data=st.data(), flags=st.sampled_from(FLAGS))
    def rename(self, data: st.DataObject, flags: int) -> None:
        m = self.model
        p1 = self.draw_dir(data, "p1")
        n1 = self.draw_name(data, "n1")
        p2 = self.draw_dir(data, "p2")
        n2 = self.draw_name(data, "n2")

        def expect():  # type: ignore[no-untyped-def]
            if flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE:
                raise Expected(errno.EINVAL)
            d1, d2 = m.dir(p1), m.dir(p2)
            if n1 not in d1.entries:
                raise Expected(errno.ENOENT)
            src = d1.entries[n1]
            dst = d2.entries.get(n2)
            if dst is not None and flags & RENAME_NOREPLACE:
                raise Expected(errno.EEXIST)
            if dst is None and flags & RENAME_EXCHANGE:
                raise Expected(errno.ENOENT)
            if dst == src:
                return lambda res: None
            s_dir = m.nodes[src].kind == DIR
            if s_dir and p1 != p2 and m.is_ancestor_or_self(src, p2):
                raise Expected(errno.EINVAL)
            if d2.removed:
                raise Expected(errno.ENOENT)
            if flags & RENAME_EXCHANGE:
                assert dst is not None
                d_dir = m.nodes[dst].kind == DIR
                if d_dir and p1 != p2 and m.is_ancestor_or_self(dst, p1):
                    raise Expected(errno.EINVAL)

                def swap(res) -> None:  # type: ignore[no-untyped-def]
                    d1.entries[n1], d2.entries[n2] = dst, src
                    if s_dir:
                        m.nodes[src].parent = p2
                    if d_dir:
                        m.nodes[dst].parent = p1
                return swap
            if dst is not None:
                d_dir = m.nodes[dst].kind == DIR
                if s_dir and not d_dir:
                    raise Expected(errno.ENOTDIR)
                if not s_dir and d_dir:
                    raise Expected(errno.EISDIR)
                if d_dir and m.nodes[dst].entries:
                    raise Expected(errno.ENOTEMPTY)

            def move(res) -> None:  # type: ignore[no-untyped-def]
                del d1.entries[n1]
                d2.entries[n2] = src
                if s_dir:
                    m.nodes[src].parent = p2
                if dst is not None:
                    if m.nodes[dst].kind == DIR:
                        m.forget(dst)
                    else:
                        m.drop_link(dst)
            return move

        self.outcome(expect, lambda: self.meta.rename(p1, n1, p2, n2, flags))

    @rule(data=st.data())
    def open(self, data: st.DataObject) -> None:
        m = self.model
        live = sorted(i for i, n in m.nodes.items()
                      if not n.removed and n.kind != LNK and i not in m.open)
        if live:
            m.open.add(data.draw(st.sampled_from(live), label="ino"))

    @precondition(lambda self: self.model.open)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        m = self.model
        ino = data.draw(st.sampled_from(sorted(m.open)), label="ino")
        m.open.discard(ino)
        if m.nodes[ino].removed:
            assert self.run(self.meta.getattr, ino).nlink == 0
            self.run(self.meta.release_orphan, ino)
            del m.nodes[ino]
            m.gone.add(ino)

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def tree_matches(self) -> None:
        self.run(self._compare_tree)

    async def _compare_tree(self) -> None:
        m = self.model
        want: dict[tuple[bytes, ...], tuple[str, int, int]] = {}
        got: dict[tuple[bytes, ...], tuple[str, int, int]] = {}

        def walk_model(ino: int, path: tuple[bytes, ...]) -> None:
            n = m.nodes[ino]
            want[path] = (n.kind, ino, m.links(ino))
            for name, child in n.entries.items():
                walk_model(child, (*path, name))

        async def walk_real(ino: int, path: tuple[bytes, ...], ftype: int) -> None:
            a = await self.meta.getattr(ino)
            assert stat.S_IFMT(a.mode) >> 12 == ftype, f"entry type of {path}"
            kind = DIR if a.is_dir else LNK if a.is_symlink else REG
            got[path] = (kind, ino, a.nlink)
            if a.is_dir:
                dotdot, _ = await self.meta.lookup(ino, b"..")
                assert dotdot == m.nodes[ino].parent, f"'..' of {path}"
                for e in await self.meta.readdir(ino):
                    await walk_real(e.ino, (*path, e.name), e.ftype)
            elif a.is_symlink:
                assert await self.meta.readlink(ino) == m.nodes[ino].target

        walk_model(ROOT_INO, ())
        await walk_real(ROOT_INO, (), stat.S_IFDIR >> 12)
        assert got == want
        for ino, n in m.nodes.items():
            if n.removed:
                assert (await self.meta.getattr(ino)).nlink == 0
        for ino in m.gone:
            try:
                await self.meta.getattr(ino)
            except FSError as e:
                assert e.errno == errno.ENOENT
            else:
                raise AssertionError(f"inode {ino} should be gone")

    @invariant()
    def fsck_clean(self) -> None:
        rep = self.run(check, self.kv, None, 4 << 20)
        assert rep.problems == []

    def teardown(self) -> None:
        self.run(self.kv.aclose)


MetadataMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestMetadataModel = MetadataMachine.TestCase
