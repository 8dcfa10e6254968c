"""Real mounts of volumes stored in etcd: two mounts of one volume behave like two hosts.

Every test mounts through the kernel (tests/mounting.py) against real etcd servers
(tests/etcd_cluster.py).  Changes made on one mount reach the other's kernel caches through
the etcd watch within milliseconds, so the tests wait for them with short bounded polling
loops, never with fixed sleeps; an open (close-to-open) must see the latest state at once.
Nothing here measures speed -- ``kvfs bench`` does that -- the time bounds only catch hangs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
from etcd_cluster import (
    Certs,
    EtcdProcesses,
    Member,
    etcd_procs,
    etcd_single,
    make_certs,
    scratch_dir,
    unique_prefix,
)
from mounting import Mount, fsck, is_mounted, kvfs

from kvfs.benchmarks import deploy
from kvfs.kv.api import Delete, Put, prefix_end
from kvfs.meta import keys
from kvfs.volume import open_engine

pytestmark = pytest.mark.mount

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

VISIBLE = 2.0  # seconds a change on one mount may take to show on the other


# -- helpers ---------------------------------------------------------------------------------


def wait_until(pred: Callable[[], bool], what: str, timeout: float = VISIBLE) -> None:
    """Poll ``pred`` until it holds; a path that does not exist (yet) counts as "not yet".

    Any other error propagates: e.g. ESTALE reaching an application is a bug, not a state
    to wait out."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            if pred():
                return
        except (FileNotFoundError, NotADirectoryError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout} s (last error: {last})")
        time.sleep(0.005)


def volume_url(member: Member | list[Member], tag: str, query: str = "") -> str:
    members = member if isinstance(member, list) else [member]
    url = f"etcd://{','.join(m.endpoint for m in members)}/{unique_prefix(tag)}"
    return url + (f"?{query}" if query else "")


@contextmanager
def mounts(url: str, base: Path, *names: str, options: tuple[str, ...] = ()
           ) -> Iterator[list[Mount]]:
    """Mount ``url`` once per name under ``base``; always torn down (cleanup is idempotent,
    so tests may unmount explicitly first)."""
    ms: list[Mount] = []
    try:
        for n in names:
            ms.append(Mount(url, base / n, *options))
        yield ms
    finally:
        for m in reversed(ms):
            m.cleanup()


def unmount_all(*ms: Mount) -> None:
    for m in ms:
        m.unmount()


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What a tree looks like through one mount: names, types, attributes, contents."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                body = sorted(os.listdir(p))
            out[str(p.relative_to(root))] = (st.st_mode, st.st_ino, st.st_nlink, st.st_uid,
                                             st.st_gid, st.st_size, st.st_mtime_ns,
                                             st.st_ctime_ns, body)
    return out


def run_together(*fns: Callable[[], object], timeout: float = 60) -> list[object]:
    """Run ``fns`` in threads released at the same moment; return what each returned, or
    the OSError it raised."""
    barrier = threading.Barrier(len(fns))
    results: list[object] = [None] * len(fns)

    def body(i: int, fn: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except OSError as e:
            results[i] = e

    threads = [threading.Thread(target=body, args=(i, f), daemon=True)
               for i, f in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), f"an operation hung for {timeout} s"
    return results


def errno_of(r: object) -> int:
    return (r.errno or 0) if isinstance(r, OSError) else 0


def lists(d: Path, want: list[str]) -> bool:
    """Whether directory ``d`` holds exactly the names ``want`` (sorted)."""
    return sorted(os.listdir(d)) == want


def nlink_is(p: Path, n: int) -> bool:
    return p.stat().st_nlink == n


def absent(p: Path) -> bool:
    return not p.exists()


def inode_keys_left(url: str, ino: int) -> list[bytes]:
    """Keys the volume still holds for inode ``ino`` (attributes, chunks, queue entries)."""

    async def go() -> list[bytes]:
        kv = await open_engine(url)
        try:
            found = []
            for start in (keys.inode_all(ino), keys.delfile(ino)):
                res = await kv.range(start, prefix_end(start))
                found += [x.key for x in res.kvs]
            res = await kv.range(keys.SUSTAINED_PREFIX, prefix_end(keys.SUSTAINED_PREFIX))
            found += [x.key for x in res.kvs if keys.read_u64(x.key, 10) == ino]
            return found
        finally:
            await kv.aclose()

    return trio.run(go)


class WatchFlood:
    """Keeps the coherence watch of every mount busy while active.

    A background client commits batches of throw-away directory entries under ``parent``
    (a directory the mounts know, so each event costs them a kernel invalidation) and
    deletes them again.  Invalidations then queue up behind the flood, so a mount cannot
    count on the watch having told it about a change before its next open: what such an
    open sees comes from the open path itself.  Everything is deleted before it stops."""

    BATCH = 100  # below etcd's default --max-txn-ops (128)

    def __init__(self, url: str, parent: int) -> None:
        self.url = url
        self.prefix = keys.dentry(parent, b"flood-")
        self.stop = threading.Event()
        self.batches = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> WatchFlood:
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.batches < 5 and self.error is None:  # the flood is under way
            assert time.monotonic() < deadline, "watch flood did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "watch flood did not stop"
        if self.error is not None:
            raise AssertionError(f"watch flood failed: {self.error!r}")

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as e:  # noqa: BLE001 - reported by __exit__
            self.error = e

    async def _run(self) -> None:
        kv = await open_engine(self.url)
        everything = Delete(self.prefix, prefix_end(self.prefix))
        try:
            while not self.stop.is_set():
                puts = [Put(self.prefix + b"%d" % i, b"-") for i in range(self.BATCH)]
                await kv.commit([], puts)
                await kv.commit([], [], [everything])
                self.batches += 1
        finally:
            with trio.CancelScope(shield=True):
                await kv.commit([], [], [everything])
                await kv.aclose()


# -- 1. one tree, two hosts -----------------------------------------------------------------


def _changes_propagate(w: Path, r: Path, tag: str) -> None:
    """Every kind of change made through ``w`` shows through ``r``."""
    dw, dr = w / tag, r / tag
    os.mkdir(dw)
    os.mkdir(dw / "sub")
    wait_until(lambda: (dr / "sub").is_dir(), f"{tag}: mkdir")

    v1 = b"hello\n"
    (dw / "f").write_bytes(v1)
    wait_until(lambda: (dr / "f").read_bytes() == v1, f"{tag}: new file")
    v2 = b"a longer second version\n" * 300
    (dw / "f").write_bytes(v2)  # same inode, new content and length
    wait_until(lambda: (dr / "f").read_bytes() == v2, f"{tag}: rewrite")
    assert (dr / "f").stat().st_size == len(v2)

    os.rename(dw / "f", dw / "sub" / "g")
    wait_until(lambda: not (dr / "f").exists() and (dr / "sub" / "g").read_bytes() == v2,
               f"{tag}: rename")

    os.chmod(dw / "sub" / "g", 0o640)
    wait_until(lambda: stat.S_IMODE((dr / "sub" / "g").stat().st_mode) == 0o640,
               f"{tag}: chmod")

    os.symlink("sub/g", dw / "ln")
    wait_until(lambda: os.readlink(dr / "ln") == "sub/g" and (dr / "ln").read_bytes() == v2,
               f"{tag}: symlink")

    os.link(dw / "sub" / "g", dw / "hard")
    ino = (dw / "sub" / "g").stat().st_ino
    wait_until(lambda: (dr / "hard").stat().st_ino == ino
               and (dr / "sub" / "g").stat().st_nlink == 2, f"{tag}: hard link")

    os.unlink(dw / "sub" / "g")
    wait_until(lambda: not (dr / "sub" / "g").exists() and (dr / "hard").stat().st_nlink == 1
               and (dr / "hard").read_bytes() == v2, f"{tag}: unlink")
    # The symlink now dangles on both sides.
    wait_until(lambda: not (dr / "ln").exists() and (dr / "ln").is_symlink(),
               f"{tag}: dangling symlink")

    os.rename(dw / "sub", dw / "sub2")
    (dw / "sub2" / "inner").write_bytes(b"inner")
    wait_until(lambda: not (dr / "sub").exists()
               and (dr / "sub2" / "inner").read_bytes() == b"inner", f"{tag}: rename dir")

    os.unlink(dw / "ln")
    wait_until(lambda: not (dr / "ln").is_symlink(), f"{tag}: unlink symlink")

    # Directory listings and every attribute agree.
    wait_until(lambda: sorted(os.listdir(dr)) == sorted(os.listdir(dw)) == ["hard", "sub2"],
               f"{tag}: listing")
    wait_until(lambda: snapshot(dr) == snapshot(dw), f"{tag}: attributes")

    os.unlink(dw / "sub2" / "inner")
    os.rmdir(dw / "sub2")
    wait_until(lambda: sorted(os.listdir(dr)) == ["hard"], f"{tag}: rmdir")


def test_same_tree_on_both_mounts(etcd_single: Member, tmp_path: Path) -> None:
    url = volume_url(etcd_single, "tree")
    kvfs("format", url, "tree")
    with mounts(url, tmp_path, "a", "b") as (a, b):
        _changes_propagate(a.mountpoint, b.mountpoint, "from-a")
        _changes_propagate(b.mountpoint, a.mountpoint, "from-b")
        wait_until(lambda: snapshot(a.mountpoint) == snapshot(b.mountpoint), "whole tree")
        unmount_all(a, b)
    fsck(url)


# -- 2. rename-deploy ------------------------------------------------------------------------


def test_rename_deploy_is_atomic_across_mounts(etcd_single: Member, tmp_path: Path) -> None:
    url = volume_url(etcd_single, "deploy")
    kvfs("format", url, "deploy")
    with mounts(url, tmp_path, "a", "b") as (a, b):
        os.mkdir(a.mountpoint / "etc")
        wait_until(lambda: (b.mountpoint / "etc").is_dir(), "etc on B")
        res = deploy.run(str(a.mountpoint / "etc"), str(b.mountpoint / "etc"), rounds=10,
                         poll=0.01)
        assert (res.enoent, res.empty, res.torn, res.timeouts) == (0, 0, 0, 0), res.summary()
        assert len(res.latencies_ms) == 10
        unmount_all(a, b)
    fsck(url)


# -- 3. close-to-open ------------------------------------------------------------------------


def test_close_to_open(etcd_single: Member, tmp_path: Path) -> None:
    url = volume_url(etcd_single, "c2o")
    kvfs("format", url, "c2o")
    with mounts(url, tmp_path, "a", "b") as (a, b):
        os.mkdir(a.mountpoint / "d")
        fa, fb = a.mountpoint / "d" / "conf", b.mountpoint / "d" / "conf"
        current = b"version 0\n" * 100
        fa.write_bytes(current)
        wait_until(lambda: fb.read_bytes() == current, "initial content on B")
        ino = fa.stat().st_ino
        c2o_rounds(fa, fb, current, 8, "plain")  # as it comes
        with WatchFlood(url, (b.mountpoint / "d").stat().st_ino):  # the watch lagging
            current = c2o_rounds(fa, fb, fb.read_bytes(), 8, "flood")
        assert fb.read_bytes() == current
        assert fb.stat().st_ino == ino  # always the same file, rewritten in place
        unmount_all(a, b)
    fsck(url)


def c2o_rounds(fa: Path, fb: Path, current: bytes, rounds: int, tag: str) -> bytes:
    """B reads; A rewrites in place and closes; B's very next open must see it."""
    for i in range(1, rounds + 1):
        with open(fb, "rb") as fh:  # B's kernel now caches attributes and pages
            assert fh.read() == current, f"round {i}: B lost the previous version"
        # Alternately much longer and much shorter than the previous version.
        new = (f"{tag} version {i}\n" * (900 if i % 2 else 40 + i)).encode()
        if i % 3:
            with open(fa, "r+b") as fh:  # in place: overwrite, then cut
                fh.write(new)
                fh.truncate()
        else:
            with open(fa, "wb") as fh:  # in place: O_TRUNC, then write
                fh.write(new)
        with open(fb, "rb") as fh:  # no wait: the open itself must see the new version
            got = fh.read()
        assert got == new, (f"round {i}: B read {len(got)} bytes "
                            f"({got[:20]!r}...), A wrote {len(new)}")
        current = new
    return current


# -- 4. open-unlinked across hosts -----------------------------------------------------------


def test_unlinked_on_one_host_stays_readable_on_the_other(etcd_single: Member,
                                                          tmp_path: Path) -> None:
    url = volume_url(etcd_single, "orphan")
    # Without a history or a trash: the test ends by checking that every block was deleted.
    kvfs("format", url, "orphan", "--history-days", "0", "--trash-days", "0")
    data = os.urandom(3 << 20) + b"tail"  # several 1 MiB blocks
    with mounts(url, tmp_path, "a", "b", options=("orphan_grace=1",)) as (a, b):
        fa, fb = a.mountpoint / "big", b.mountpoint / "big"
        fa.write_bytes(data)
        wait_until(lambda: fb.exists() and fb.stat().st_size == len(data), "file on B")
        fd = os.open(fb, os.O_RDONLY)
        try:
            ino = os.fstat(fd).st_ino
            assert os.pread(fd, 4096, 0) == data[:4096]
            os.unlink(fa)
            wait_until(lambda: not fb.exists(), "unlink on B")
            assert os.pread(fd, 1 << 20, 0) == data[:1 << 20]
            # Long past the grace period, with B's page cache dropped, every byte still
            # comes from the volume.
            time.sleep(3.5)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = b"".join(os.pread(fd, 1 << 20, off) for off in range(0, len(data), 1 << 20))
            assert got == data, "B lost the data of its open, unlinked file"
            assert os.fstat(fd).st_size == len(data)
        finally:
            os.close(fd)
        # Closed on B: once the grace period has passed, the cleaners drop the data.
        wait_until(lambda: not inode_keys_left(url, ino), "data of the closed orphan dropped",
                   timeout=20)
        assert os.listdir(a.mountpoint) == os.listdir(b.mountpoint) == []
        unmount_all(a, b)
    out = fsck(url)
    assert "0 slices, 0 blocks" in out, out


# -- 5. concurrency across mounts ------------------------------------------------------------


def test_concurrent_creates_in_one_directory(etcd_single: Member, tmp_path: Path) -> None:
    url = volume_url(etcd_single, "conc")
    kvfs("format", url, "conc")
    with mounts(url, tmp_path, "a", "b") as (a, b):
        os.mkdir(a.mountpoint / "d")
        wait_until(lambda: (b.mountpoint / "d").is_dir(), "d on B")

        def creator(m: Mount, host: str, t: int) -> Callable[[], None]:
            def run() -> None:
                for j in range(10):
                    name = f"{host}-{t}-{j}"
                    with open(m.mountpoint / "d" / name, "xb") as fh:
                        fh.write(name.encode() * 10)
            return run

        fns = [creator(m, host, t) for m, host in ((a, "a"), (b, "b")) for t in range(5)]
        results = run_together(*fns)
        assert all(r is None for r in results), results
        want = sorted(f"{h}-{t}-{j}" for h in "ab" for t in range(5) for j in range(10))
        for m in (a, b):
            d = m.mountpoint / "d"
            wait_until(partial(lists, d, want), f"100 files on {m.mountpoint}")
            for name in want:
                assert (d / name).read_bytes() == name.encode() * 10, (m.mountpoint, name)
        assert (a.mountpoint / "d").stat().st_nlink == (b.mountpoint / "d").stat().st_nlink == 2
        unmount_all(a, b)
    fsck(url)


def test_concurrent_mkdir_of_one_name(etcd_single: Member, tmp_path: Path) -> None:
    url = volume_url(etcd_single, "mkdir")
    kvfs("format", url, "mkdir")
    with mounts(url, tmp_path, "a", "b") as (a, b):
        for i in range(10):
            name = f"d{i}"
            res = run_together(partial(os.mkdir, a.mountpoint / name),
                               partial(os.mkdir, b.mountpoint / name))
            assert sorted(errno_of(r) for r in res) == [0, errno.EEXIST], (i, res)
            for m in (a, b):
                wait_until((m.mountpoint / name).is_dir,
                           f"{name} on {m.mountpoint}")
        for m in (a, b):
            wait_until(partial(nlink_is, m.mountpoint, 12),
                       f"root link count on {m.mountpoint}")
        unmount_all(a, b)
    fsck(url)


def _root_attrs(m: Mount) -> tuple[int, int, int]:
    st = m.mountpoint.stat()
    return st.st_nlink, st.st_mtime_ns, st.st_ctime_ns


def test_watch_alone_keeps_kernel_caches_coherent(etcd_single: Member, tmp_path: Path
                                                  ) -> None:
    """With kernel cache timeouts far beyond the wait, only the watch's invalidations can
    make the other mount see a change -- including the root directory's attributes after
    concurrent updates."""
    url = volume_url(etcd_single, "watch")
    kvfs("format", url, "watch")
    with mounts(url, tmp_path, "a", "b",
                options=("attr_timeout=60,entry_timeout=60",)) as (a, b):
        _changes_propagate(a.mountpoint, b.mountpoint, "from-a")
        _changes_propagate(b.mountpoint, a.mountpoint, "from-b")
        for i in range(10):
            run_together(partial(os.mkdir, a.mountpoint / f"d{i}"),
                         partial(os.mkdir, b.mountpoint / f"d{i}"))
        wait_until(lambda: _root_attrs(a) == _root_attrs(b), "root attributes agree")
        assert _root_attrs(a)[0] == 2 + 2 + 10
        wait_until(lambda: snapshot(a.mountpoint) == snapshot(b.mountpoint), "whole tree")
        unmount_all(a, b)
    fsck(url)


def test_rmdir_racing_create_inside(etcd_single: Member, tmp_path: Path) -> None:
    url = volume_url(etcd_single, "rmdir")
    kvfs("format", url, "rmdir")
    outcomes = []
    with mounts(url, tmp_path, "a", "b") as (a, b):
        for i in range(12):
            # Alternate which host removes and which creates.
            rm, cr = (a, b) if i % 2 == 0 else (b, a)
            name = f"d{i}"
            os.mkdir(rm.mountpoint / name)
            # The creator's kernel knows the directory (a cached lookup) before the race.
            wait_until((cr.mountpoint / name).is_dir,
                       f"{name} on the creating mount")

            def create(cr: Mount = cr, name: str = name) -> None:
                os.close(os.open(cr.mountpoint / name / "f",
                                 os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

            r_rm, r_cr = run_together(partial(os.rmdir, rm.mountpoint / name), create)
            outcome = (errno_of(r_rm), errno_of(r_cr))
            outcomes.append(outcome)
            assert outcome in ((0, errno.ENOENT), (errno.ENOTEMPTY, 0)), \
                f"round {i}: rmdir -> {r_rm!r}, create inside -> {r_cr!r}"
            if outcome[0] == 0:
                for m in (a, b):
                    wait_until(partial(absent, m.mountpoint / name),
                               f"{name} gone on {m.mountpoint}")
            else:
                for m in (a, b):
                    wait_until(partial(lists, m.mountpoint / name, ["f"]),
                               f"{name}/f on {m.mountpoint}")
                os.unlink(rm.mountpoint / name / "f")
                os.rmdir(rm.mountpoint / name)
        wait_until(lambda: os.listdir(a.mountpoint) == os.listdir(b.mountpoint) == [],
                   "empty root on both")
        unmount_all(a, b)
    fsck(url)


# -- 6. a 3-member cluster losing members ----------------------------------------------------


@pytest.fixture(scope="module")
def cluster3(etcd_procs: EtcdProcesses) -> Iterator[list[Member]]:
    members = etcd_procs.cluster(3)
    yield members
    for m in members:
        m.kill()


def _content(i: int) -> bytes:
    return f"file {i}\n".encode() * (100 + i)


def test_cluster_member_loss_and_full_outage(cluster3: list[Member], tmp_path: Path) -> None:
    url = volume_url(cluster3, "ha", "timeout=3")
    kvfs("format", url, "ha")
    acked: list[int] = []
    errors: list[tuple[int, OSError]] = []
    stop = threading.Event()
    with mounts(url, tmp_path, "m") as (m,):
        d = m.mountpoint / "ha"
        os.mkdir(d)

        def writer() -> None:
            i = 0
            while not stop.is_set():
                try:
                    with open(d / f"f{i:04d}", "wb") as fh:
                        fh.write(_content(i))
                        fh.flush()
                        os.fsync(fh.fileno())
                except OSError as e:
                    errors.append((i, e))
                    return
                acked.append(i)
                i += 1

        def wait_acked(n: int, what: str) -> None:
            deadline = time.monotonic() + 60
            while len(acked) < n and not errors:
                assert time.monotonic() < deadline, f"writer stalled ({what})"
                time.sleep(0.02)
            assert not errors, f"writer failed ({what}): {errors}"

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            wait_acked(10, "before the member loss")
            cluster3[0].kill()  # the first endpoint of the URL
            n = len(acked)
            wait_acked(n + 30, "after the member loss")
        finally:
            stop.set()
            t.join(60)
        assert not t.is_alive(), "writer hung"
        assert not errors, errors
        for i in acked:
            assert (d / f"f{i:04d}").read_bytes() == _content(i), i

        # The whole cluster goes away: operations fail with EIO within the bound.
        for member in cluster3[1:]:
            member.kill()
        outcome: dict[str, int | float] = {}  # ok, errno, elapsed

        def create_during_outage() -> None:
            t0 = time.monotonic()
            try:
                with open(d / "during-outage", "wb"):
                    pass
                outcome["ok"] = True
            except OSError as e:
                outcome["errno"] = e.errno or 0
            outcome["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=create_during_outage, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "a create during the outage hung for 30 s"
        assert outcome.get("errno") == errno.EIO, outcome
        assert outcome["elapsed"] < 20, outcome

        # Files read before the outage stay readable from the mount's own caches, even with
        # the kernel's caches dropped (so the daemon, not the page cache, answers).
        Path("/proc/sys/vm/drop_caches").write_text("3")
        reads: dict[str, object] = {}

        def read_during_outage() -> None:
            try:
                reads["ok"] = all((d / f"f{i:04d}").read_bytes() == _content(i)
                                  for i in acked[:5])
            except OSError as e:
                reads["errno"] = e.errno

        t = threading.Thread(target=read_during_outage, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "reading cached files during the outage hung"
        assert reads.get("ok") is True, reads

        # The cluster comes back: the mount recovers by itself.
        for member in cluster3:
            member.start()
        for member in cluster3:
            member.wait_healthy(30)
        deadline = time.monotonic() + 60
        while True:
            try:
                (d / "after-outage").write_bytes(b"back")
                break
            except OSError as e:
                assert e.errno == errno.EIO, e
                assert time.monotonic() < deadline, "the mount did not recover within 60 s"
                time.sleep(0.2)
        assert (d / "after-outage").read_bytes() == b"back"
        for i in acked:
            assert (d / f"f{i:04d}").read_bytes() == _content(i), i
        m.unmount()
    fsck(url)
    # A fresh mount reads every acknowledged file from the cluster, not from a page cache.
    with mounts(url, tmp_path, "again") as (m2,):
        d2 = m2.mountpoint / "ha"
        for i in acked:
            assert (d2 / f"f{i:04d}").read_bytes() == _content(i), i
        assert (d2 / "after-outage").read_bytes() == b"back"
        m2.unmount()


# -- 7. TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    import shutil

    d = scratch_dir("mcerts")
    try:
        yield make_certs(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_member(etcd_procs: EtcdProcesses, certs: Certs) -> Iterator[Member]:
    m = etcd_procs.member("mtls", tls={"cacert": certs.ca, "cert": certs.server_cert,
                                       "key": certs.server_key})
    yield m
    m.kill()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmdline = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(p.name))
    return pids


def test_tls_volume_end_to_end(tls_member: Member, certs: Certs, tmp_path: Path) -> None:
    prefix = unique_prefix("tls")
    base = f"etcd://{tls_member.endpoint}/{prefix}"
    url = f"{base}?cacert={certs.ca}&cert={certs.client_cert}&key={certs.client_key}"
    kvfs("format", url, "tls")
    with mounts(url, tmp_path, "a", "b") as (a, b):
        data = os.urandom(1 << 20)
        (a.mountpoint / "secret").write_bytes(data)
        os.mkdir(a.mountpoint / "dir")
        wait_until(lambda: (b.mountpoint / "secret").read_bytes() == data, "file over TLS")
        os.rename(b.mountpoint / "secret", b.mountpoint / "dir" / "moved")
        wait_until(lambda: (a.mountpoint / "dir" / "moved").read_bytes() == data
                   and not (a.mountpoint / "secret").exists(), "rename over TLS")
        unmount_all(a, b)
    fsck(url)

    # The wrong client certificate: a one-line error, a non-zero exit, nothing mounted.
    bad = (f"{base}?cacert={certs.ca}&cert={certs.other_cert}&key={certs.other_key}"
           "&timeout=5")
    mp = tmp_path / "bad"
    mp.mkdir()
    try:
        res = kvfs("mount", "-d", "--log", str(tmp_path / "bad.log"), bad, str(mp),
                   check=False, timeout=60)
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvfs: error: "), res.stderr
        assert "TLS" in lines[0] and tls_member.endpoint in lines[0], lines[0]
        assert res.stdout == ""
        assert not is_mounted(mp)
        # The daemon the CLI forked is gone too.
        wait_until(lambda: not _processes_mentioning(str(mp)), "no mount daemon left",
                   timeout=10)
    finally:
        if is_mounted(mp):
            kvfs("umount", str(mp), check=False)


# -- 8. status -------------------------------------------------------------------------------


def _sessions(url: str) -> list[dict[str, object]]:
    info = json.loads(kvfs("status", url, "--json").stdout)
    return list(info["sessions"])


def test_status_lists_both_sessions(etcd_single: Member, tmp_path: Path) -> None:
    url = volume_url(etcd_single, "status")
    kvfs("format", url, "status")
    host = socket.gethostname()
    with mounts(url, tmp_path, "a", "b") as (a, b):
        got = {(s["host"], s["pid"], s["mountpoint"]) for s in _sessions(url)}
        assert got == {(host, a.pid, str(a.mountpoint)), (host, b.pid, str(b.mountpoint))}
        text = kvfs("status", url).stdout
        assert "sessions: 2" in text, text
        for m in (a, b):
            assert f"pid {m.pid} at {m.mountpoint}" in text, text
        unmount_all(a, b)
    assert _sessions(url) == []
    assert "sessions: 0" in kvfs("status", url).stdout
