"""Workloads that run through real mounts while a nemesis acts (tests/nemesis.py), and the
checks made on what they recorded.

Each workload is a thread bound to one mount, seeded, recording every operation it makes
as an :class:`Op` (what, where, start and end in monotonic time, the errno it got):

* :class:`RandomOps` -- random namespace and data operations on a small set of names that
  every mount shares (create, write, append, truncate, rename, mkdir, rmdir, unlink, link,
  symlink, setxattr, chmod, plus read/stat/listdir).  Races between mounts legitimately
  give the errnos a local filesystem gives for them (:data:`RACE_ERRNOS`);
* :class:`AppendLogger` -- appends numbered fixed-size records to its own file through one
  descriptor, fsyncs each, and remembers which were acknowledged.  During an outage a write
  or fsync may fail with EIO, but the same descriptor must work again afterwards;
* :class:`CachedReader` -- re-reads files its mount read before the run.  Cached files must
  stay readable through outages and partitions (docs/etcd.md, "Outages"), so any error or
  wrong byte is a failure.

:func:`judge` sorts the recorded errors: race errnos are fine, EIO is fine inside an outage
window that disturbs that mount (:meth:`nemesis.Timeline.excuses`); EIO from a request in
flight when its daemon was stopped past the URL's timeout is counted apart (the engine
finds its deadline gone when the daemon runs again); ESTALE is counted apart too, in
episodes, up to :data:`KERNEL_ESTALE_RATE` of the operations (and a few in any run): the
kernel's own, when a path walk finds a directory another mount moved while this kernel
still holds its old dentry, busy, and it cannot take the rename lock a rename across
directories on the same mount holds -- the rename's own lookups most often, any walk's now
and then, its one retry meeting the same dentry (docs/architecture.md, "Directories moved
elsewhere").  Everything else -- ESTALE beyond that, EIO outside a window, wrong data -- is
unexpected and reported with the mount, operation, time and the nearest fault window.
:func:`tree` and :func:`tree_diff` compare what every mount shows once the watch has
settled.
"""

from __future__ import annotations

import abc
import errno
import hashlib
import os
import random
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nemesis import Timeline

# What a local filesystem answers when another process changed the names underneath.
RACE_ERRNOS = frozenset({errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
                         errno.ENOTEMPTY, errno.ELOOP, errno.EINVAL, errno.EXDEV,
                         errno.EPERM, errno.EMLINK})
RECORD = 64  # bytes per log record


@dataclass(frozen=True, slots=True)
class Op:
    mount: str
    workload: str
    kind: str
    detail: str
    start: float
    end: float
    errno: int = 0
    call: str = ""  # the system call that failed
    problem: str = ""  # wrong data, whatever the errno

    def describe(self, t0: float) -> str:
        if self.problem:
            what = self.problem
        else:
            what = f"{errno.errorcode.get(self.errno, self.errno)} from {self.call}"
        return (f"mount {self.mount}: {self.workload}.{self.kind}({self.detail}) -> {what} "
                f"at +{self.start - t0:.2f}s..+{self.end - t0:.2f}s")


class Worker(threading.Thread, abc.ABC):
    """A workload thread on one mount; subclasses implement :meth:`step`."""

    workload = ""
    race_errnos: frozenset[int] = frozenset()

    def __init__(self, mount: str, root: Path, seed: int) -> None:
        super().__init__(name=f"{self.workload}-{mount}", daemon=True)
        self.mount = mount
        self.root = root
        self.rng = random.Random(seed)
        self.ops: list[Op] = []
        self.stopping = threading.Event()
        self.current: tuple[str, float] | None = None  # the op under way, for hang reports
        self.call = ""  # the system call under way, named when it fails
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.step()
        except BaseException as e:  # noqa: BLE001 - reported by the checks
            self.crash = e

    @abc.abstractmethod
    def step(self) -> None:
        """One operation (or a few) of the workload."""

    def attempt(self, kind: str, detail: str, fn: Callable[[], object]) -> tuple[bool, object]:
        """Run ``fn`` as one recorded op: (True, its result), or (False, None) if it raised
        OSError.  ``fn`` may set ``self.call`` before each system call, so a failure names
        it."""
        self.call = kind
        start = time.monotonic()
        self.current = (f"{kind}({detail})", start)
        try:
            result = fn()
        except OSError as e:
            self.ops.append(Op(self.mount, self.workload, kind, detail, start,
                               time.monotonic(), e.errno or -1, self.call))
            return False, None
        finally:
            self.current = None
        self.ops.append(Op(self.mount, self.workload, kind, detail, start, time.monotonic()))
        return True, result

    def wrong(self, kind: str, detail: str, start: float, problem: str) -> None:
        self.ops.append(Op(self.mount, self.workload, kind, detail, start, time.monotonic(),
                           problem=problem))

    def successes_since(self, t: float) -> int:
        return sum(1 for op in list(self.ops) if op.start >= t and not op.errno
                   and not op.problem)


# -- random operations on shared names --------------------------------------------------------


NAMES = ["n0", "n1", "n2", "n3", "n4", "n5", "n0/m0", "n0/m1", "n1/m0", "n1/m1"]


class RandomOps(Worker):
    workload = "random"
    race_errnos = RACE_ERRNOS

    def step(self) -> None:
        rng = self.rng
        name = rng.choice(NAMES)
        p = self.root / name
        q = self.root / rng.choice(NAMES)
        kind = rng.choices(
            ["create", "write", "append", "truncate", "rename", "mkdir", "rmdir", "unlink",
             "link", "symlink", "setxattr", "chmod", "read", "stat", "listdir"],
            [8, 8, 8, 4, 8, 6, 5, 6, 3, 3, 4, 4, 5, 3, 2])[0]
        if kind == "create":
            self.attempt(kind, name, lambda: self._write(p, os.O_CREAT | os.O_WRONLY, b""))
        elif kind == "write":
            data = rng.randbytes(rng.choice([0, 100, 5000, 70_000]))
            self.attempt(kind, name, lambda: self._write(
                p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, data))
        elif kind == "append":
            data = rng.randbytes(rng.randint(1, 3000))
            self.attempt(kind, name, lambda: self._write(
                p, os.O_CREAT | os.O_WRONLY | os.O_APPEND, data))
        elif kind == "truncate":
            size = rng.choice([0, 10, 4096, 100_000])
            self.attempt(kind, f"{name}, {size}", lambda: os.truncate(p, size))
        elif kind == "rename":
            self.attempt(kind, f"{name} -> {q.relative_to(self.root)}", lambda: os.rename(p, q))
        elif kind == "mkdir":
            self.attempt(kind, name, lambda: os.mkdir(p))
        elif kind == "rmdir":
            self.attempt(kind, name, lambda: os.rmdir(p))
        elif kind == "unlink":
            self.attempt(kind, name, lambda: os.unlink(p))
        elif kind == "link":
            self.attempt(kind, f"{name} -> {q.relative_to(self.root)}", lambda: os.link(p, q))
        elif kind == "symlink":
            target = rng.choice(NAMES)
            self.attempt(kind, f"{name} -> {target}", lambda: os.symlink(target, p))
        elif kind == "setxattr":
            key, value = f"user.k{rng.randint(0, 2)}", rng.randbytes(rng.randint(0, 40))
            self.attempt(kind, f"{name}, {key}", lambda: os.setxattr(p, key, value))
        elif kind == "chmod":
            mode = rng.choice([0o600, 0o644, 0o755, 0o700])
            self.attempt(kind, f"{name}, {mode:o}", lambda: os.chmod(p, mode))
        elif kind == "read":
            self.attempt(kind, name, lambda: self._read(p))
        elif kind == "stat":
            self.attempt(kind, name, lambda: os.stat(p))
        else:
            self.attempt(kind, name, lambda: os.listdir(p))

    def _write(self, p: Path, flags: int, data: bytes) -> None:
        self.call = "open"
        fd = os.open(p, flags, 0o644)
        try:
            if data:
                self.call = "write"
                os.write(fd, data)
        finally:
            self.call = "close"
            os.close(fd)

    def _read(self, p: Path) -> bytes:
        self.call = "open"
        with open(p, "rb") as f:
            self.call = "read"
            return f.read()


# -- the append-and-fsync logger ----------------------------------------------------------------


def record(mount: str, seq: int) -> bytes:
    """Log record ``seq`` of ``mount``: exactly :data:`RECORD` bytes, all derived from both."""
    head = f"{mount} {seq:010d} ".encode()
    fill = hashlib.sha256(head).hexdigest().encode()
    return (head + fill)[:RECORD - 1] + b"\n"


class AppendLogger(Worker):
    """Appends record after record to ``root/<mount>.log`` through one descriptor."""

    workload = "log"

    def __init__(self, mount: str, root: Path, seed: int) -> None:
        super().__init__(mount, root, seed)
        self.path = root / f"{mount}.log"
        self.acked: list[int] = []
        self.seq = 0
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def step(self) -> None:
        seq = self.seq
        self.seq += 1
        rec = record(self.mount, seq)
        # A logger writes the next record whatever happened to the previous one, and only
        # fsyncs after a write that worked (this is what kept defect 2 from recovering).
        written, _ = self.attempt("write", str(seq), lambda: os.write(self.fd, rec))
        if written and self.attempt("fsync", str(seq), lambda: os.fsync(self.fd))[0]:
            self.acked.append(seq)
        time.sleep(self.rng.uniform(0, 0.02))

    def close(self) -> Op | None:
        """Close the descriptor after the run; the failed op, if close failed."""
        start = time.monotonic()
        try:
            os.close(self.fd)
        except OSError as e:
            return Op(self.mount, self.workload, "close", "", start, time.monotonic(),
                      e.errno or -1, "close")
        return None


def check_log(mount: str, data: bytes, acked: list[int]) -> list[str]:
    """Problems with a logger's file: torn or foreign records, duplicates or disorder, and
    acknowledged records that are missing (lost writes)."""
    problems = []
    if len(data) % RECORD:
        problems.append(f"{mount}.log: length {len(data)} is not a whole number of records")
    seen: list[int] = []
    for off in range(0, len(data) - len(data) % RECORD, RECORD):
        chunk = data[off:off + RECORD]
        try:
            seq = int(chunk.split(b" ")[1])
        except (IndexError, ValueError):
            seq = -1
        if seq < 0 or chunk != record(mount, seq):
            problems.append(f"{mount}.log: garbage at offset {off}: {chunk[:40]!r}")
            continue
        if seen and seq <= seen[-1]:
            near = [int(data[o:o + RECORD].split(b" ")[1] or -1)
                    for o in range(max(0, off - 4 * RECORD), min(len(data), off + 4 * RECORD),
                                   RECORD)]
            problems.append(f"{mount}.log: record {seq} after {seen[-1]} at offset {off} "
                            f"(= record {off // RECORD}); records around it: {near}; "
                            f"acknowledged among them: {sorted(set(near) & set(acked))}")
        seen.append(seq)
    lost = sorted(set(acked) - set(seen))
    if lost:
        problems.append(f"{mount}.log: {len(lost)} acknowledged records lost, e.g. {lost[:10]}")
    return problems


# -- the reader of cached files -------------------------------------------------------------------


def make_read_set(root: Path, rng: random.Random, count: int = 6) -> dict[str, bytes]:
    """Write ``count`` files under ``root`` for :class:`CachedReader`; name -> content."""
    files = {}
    for i in range(count):
        data = rng.randbytes(rng.choice([100, 5000, 200_000, 1_500_000]))
        (root / f"r{i}").write_bytes(data)
        files[f"r{i}"] = data
    return files


class CachedReader(Worker):
    """Re-reads files of ``root`` that this mount read before the run."""

    workload = "read"

    def __init__(self, mount: str, root: Path, seed: int, files: dict[str, bytes]) -> None:
        super().__init__(mount, root, seed)
        self.files = files
        for name, data in files.items():  # read once now, so they are cached
            assert (root / name).read_bytes() == data, f"{mount}: {name} differs before run"

    def step(self) -> None:
        name = self.rng.choice(sorted(self.files))
        start = time.monotonic()
        ok, got = self.attempt("read", name, lambda: (self.root / name).read_bytes())
        if ok and got != self.files[name]:
            assert isinstance(got, bytes)
            self.wrong("read", name, start, f"read {len(got)} bytes that differ from the "
                       f"{len(self.files[name])} written")
        time.sleep(self.rng.uniform(0, 0.02))


# -- judging a run --------------------------------------------------------------------------------


# The kernel's own ESTALE (see the module docstring) came about once in 70,000 operations of
# the random workload.  One moved directory's busy dentry can fail several walks at once
# (four workers in 0.13 s, once), so ESTALE is counted in episodes: failures that start
# within KERNEL_ESTALE_EPISODE of the previous one's end are one.  A daemon answering
# ESTALE where it must not (a restarted walk, a name that exists) would show episodes far
# more often.  A short run of ~10,000 operations still allows KERNEL_ESTALE_FLOOR.
KERNEL_ESTALE_RATE = 1 / 10_000
KERNEL_ESTALE_FLOOR = 3
KERNEL_ESTALE_EPISODE = 0.5  # seconds


def stale_episodes(ops: list[Op]) -> int:
    """How many episodes the ESTALE failures ``ops`` make (see KERNEL_ESTALE_RATE)."""
    episodes = 0
    last_end = float("-inf")
    for op in sorted(ops, key=lambda o: o.start):
        if op.start > last_end + KERNEL_ESTALE_EPISODE:
            episodes += 1
        last_end = max(last_end, op.end)
    return episodes


@dataclass
class Verdict:
    ops: int = 0
    failed_ops: Counter[str] = field(default_factory=Counter)  # "workload.kind errno"
    excused: int = 0  # EIO inside an outage window
    stalled: list[str] = field(default_factory=list)  # EIO in flight when the daemon stopped
    kernel_stale: list[str] = field(default_factory=list)  # the kernel's ESTALE (see above)
    stale_episodes: int = 0
    unexpected: list[str] = field(default_factory=list)


def judge(workers: list[Worker], timeline: Timeline, grace: float) -> Verdict:
    """Sort every recorded failure (see module docstring)."""
    v = Verdict()
    t0 = timeline.t0
    stale: list[Op] = []
    for w in workers:
        for op in w.ops:
            v.ops += 1
            if not op.errno and not op.problem:
                continue
            what = "WRONG-DATA" if op.problem else errno.errorcode.get(op.errno, op.errno)
            v.failed_ops[f"{op.workload}.{op.kind} {what}"] += 1
            if not op.problem and op.errno in w.race_errnos:
                continue
            if not op.problem and op.errno == errno.ESTALE:
                v.kernel_stale.append(f"{op.describe(t0)}; "
                                      f"{timeline.context(op.mount, op.start, op.end)}")
                stale.append(op)
                continue
            if not op.problem and op.errno == errno.EIO:
                if timeline.excuses(op.mount, op.start, op.end, grace):
                    v.excused += 1
                    continue
                if timeline.stalled(op.mount, op.start, op.end):
                    v.stalled.append(op.describe(t0))
                    continue
            v.unexpected.append(f"{op.describe(t0)}; "
                                f"{timeline.context(op.mount, op.start, op.end)}")
        if w.crash is not None:
            v.unexpected.append(f"mount {w.mount}: {w.workload} workload crashed: "
                                f"{w.crash!r}")
    v.stale_episodes = stale_episodes(stale)
    if v.stale_episodes > max(KERNEL_ESTALE_FLOOR, KERNEL_ESTALE_RATE * v.ops):
        v.unexpected.append(f"ESTALE {len(v.kernel_stale)} times in {v.stale_episodes} "
                            f"episodes in {v.ops} operations, more than the kernel's own "
                            f"rate allows; first: {v.kernel_stale[0]}")
    return v


# -- comparing trees ------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What a tree looks like through one mount: names, types, modes, link counts, sizes,
    content hashes, symlink targets and xattrs of everything under ``root``."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            else:
                body = None
            xattrs = tuple(sorted((n, os.getxattr(p, n, follow_symlinks=False))
                                  for n in os.listxattr(p, follow_symlinks=False)))
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            out[str(p.relative_to(root))] = (stat.filemode(st.st_mode), st.st_nlink, size,
                                             body, xattrs)
    return out


def tree_diff(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]],
              limit: int = 10) -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {a.get(k)} != {b.get(k)}")
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])
