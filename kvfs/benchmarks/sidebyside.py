"""The workloads of the kvfs-vs-JuiceFS comparison, on any two views of one directory.

Each workload gets a :class:`Round`: the round's directory seen through the writing mount
(``a``) and through the reading mount (``b``), and ``make_cold``, which makes ``b`` as cold
as a mount that has never seen the data -- nothing to do when ``b`` is a second mount of
the volume, an unmount, a drop of the kernel's caches and a fresh mount when there is only
one (then ``a`` and ``b`` are the same path).  Workloads run from this process, one
operation after another, and return ``{figure key: value}``; a workload whose reads do
not return exactly what was written raises :class:`WorkloadError` instead of reporting a
figure for less work.

Only the operations a figure names are timed: preparing data in memory, waiting for a
directory to show up on ``b`` and checking the result are not.
"""

from __future__ import annotations

import os
import random
import stat
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvfs.benchmarks import deploy

PAYLOAD = b"k" * 1024
VISIBLE_TIMEOUT = 60.0


class WorkloadError(RuntimeError):
    """A workload saw something other than what it wrote, or a tool it ran failed."""


@dataclass
class Round:
    """One round's directory through the writing mount (``a``) and the reading one
    (``b``); ``make_cold`` makes ``b`` cold; ``sample_rss`` records the mounts' memory
    (its caller keeps the samples)."""

    a: Path
    b: Path
    make_cold: Callable[[], None]
    sample_rss: Callable[[str], None]


def wait_visible(path: Path, timeout: float = VISIBLE_TIMEOUT) -> None:
    """Wait until ``path`` exists (a directory made on one mount, seen from another)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise WorkloadError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.01)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- small files -------------------------------------------------------------------------


def small_files(r: Round, count: int) -> dict[str, float]:
    """``count`` operations of each kind in one directory: create empty files, stat them
    on the same mount, write 1 KiB files, read those cold on ``b``, rename the empty ones,
    list the 2 x ``count`` entries, unlink the renamed ones.  Rates in operations per
    second, the listing in milliseconds."""
    da, db = r.a / "small", r.b / "small"
    da.mkdir()

    def each(fn: Callable[[int], object]) -> float:
        return count / _timed(lambda: [fn(i) for i in range(count)])

    def create(i: int) -> None:
        os.close(os.open(da / f"e{i}", os.O_CREAT | os.O_WRONLY, 0o644))

    def write(i: int) -> None:
        fd = os.open(da / f"w{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, PAYLOAD)
        os.close(fd)

    wrong: list[int] = []

    def read(i: int) -> None:
        with open(db / f"w{i}", "rb") as f:
            if f.read() != PAYLOAD:
                wrong.append(i)

    out = {"create": each(create), "stat": each(lambda i: os.stat(da / f"e{i}")),
           "write_1k": each(write)}
    r.make_cold()
    wait_visible(db)
    out["read_1k_cold"] = each(read)
    if wrong:
        raise WorkloadError(f"{len(wrong)} of {count} 1 KiB files read back wrong on the "
                            f"other mount, e.g. {db / f'w{wrong[0]}'}")
    out["rename"] = each(lambda i: os.rename(da / f"e{i}", da / f"r{i}"))
    names: list[str] = []
    out["readdir_ms"] = _timed(lambda: names.extend(os.listdir(da))) * 1000
    if len(names) != 2 * count:
        raise WorkloadError(f"listing {da} gave {len(names)} entries, not {2 * count}")
    out["unlink"] = each(lambda i: os.unlink(da / f"r{i}"))
    return out


# -- an /etc-like tree -------------------------------------------------------------------


@dataclass(frozen=True)
class TreeSpec:
    """A tree shaped like a small /etc: ``files`` files in ``dirs`` directories (the top
    one included), ``total_bytes`` of text in all, most files small and a few large."""

    files: int
    dirs: int
    total_bytes: int

    def build(self) -> list[tuple[str, bytes]]:
        """The tree as (relative path, content), directories first; the same every time."""
        rng = random.Random(11)
        dirs = ["."]
        while len(dirs) < self.dirs:
            # Most directories hang off the top, some one or two levels down.
            parent = dirs[rng.randrange(len(dirs))] if rng.random() < 0.4 else "."
            dirs.append(os.path.normpath(f"{parent}/conf{len(dirs)}.d"))
        sizes = [rng.lognormvariate(7.0, 1.4) for _ in range(self.files)]
        scale = self.total_bytes / sum(sizes)
        out: list[tuple[str, bytes]] = [(d, b"") for d in dirs[1:]]
        for i, size in enumerate(sizes):
            where = "." if i < self.files // 5 else dirs[rng.randrange(len(dirs))]
            line = f"option_{i} = value {i} # setting for the service\n".encode()
            n = max(1, round(size * scale))
            out.append((os.path.normpath(f"{where}/file{i}.conf"),
                        (line * (n // len(line) + 1))[:n]))
        return out


def etc_tree(r: Round, spec: TreeSpec) -> dict[str, float]:
    """Write the tree on ``a`` (mkdir, then open/write/close each file), read every file
    cold on ``b``, then read it all again there (warm).  Seconds each."""
    entries = spec.build()
    root_a, root_b = r.a / "etc", r.b / "etc"

    def write() -> None:
        root_a.mkdir()
        for rel, data in entries:
            if not data:
                (root_a / rel).mkdir()
            else:
                with open(root_a / rel, "wb") as f:
                    f.write(data)

    expected = (spec.files, sum(len(d) for _, d in entries))

    def read_all() -> None:
        files = size = 0
        for top, _dirs, names in os.walk(root_b):
            for name in names:
                with open(os.path.join(top, name), "rb") as f:
                    size += len(f.read())
                files += 1
        if (files, size) != expected:
            raise WorkloadError(f"reading {root_b} gave {files} files of {size} bytes, "
                                f"not {expected[0]} of {expected[1]}")

    out = {"etc_write": _timed(write)}
    r.make_cold()
    wait_visible(root_b)
    out["etc_read_cold"] = _timed(read_all)
    out["etc_read_warm"] = _timed(read_all)
    return out


# -- cp -a and diff -r -------------------------------------------------------------------


def tree_size(source: Path) -> tuple[int, int]:
    """(bytes of regular files, entries) under ``source``, its top directory excluded."""
    size = entries = 0
    for top, dirs, names in os.walk(source):
        entries += len(dirs) + len(names)
        for name in names:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return size, entries


def prime(source: Path) -> None:
    """Read every file under ``source`` so that copying it reads from memory, whichever
    filesystem copies first."""
    for top, _dirs, names in os.walk(source):
        for name in names:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                try:
                    with open(path, "rb") as f:
                        while f.read(1 << 20):
                            pass
                except OSError:
                    pass  # unreadable files are cp's and diff's business


def _run(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        tail = "\n".join(res.stderr.splitlines()[-3:])
        raise WorkloadError(f"{what} failed with status {res.returncode}: {tail}")


def copy_tree(r: Round, source: Path) -> dict[str, float]:
    """``cp -a SOURCE`` onto ``a``, then ``diff -r`` of the source against the copy seen
    cold through ``b`` (symbolic links compared as links).  Seconds each."""
    dst_a, dst_b = r.a / "doc", r.b / "doc"
    prime(source)
    out = {"cp": _timed(lambda: _run(["cp", "-a", str(source), str(dst_a)], "cp -a"))}
    r.sample_rss("cp")
    r.make_cold()
    prime(source)
    wait_visible(dst_b)
    out["diff"] = _timed(lambda: _run(["diff", "-r", "--no-dereference", str(source),
                                        str(dst_b)], "diff -r"))
    r.sample_rss("cp")
    return out


# -- sequential I/O with fio -------------------------------------------------------------


def sequential(r: Round, fio: str, mib: int) -> dict[str, float]:
    """fio writes ``mib`` MiB sequentially in 1 MiB requests on ``a`` (then fsyncs), and
    reads it sequentially, cold, on ``b``.  MiB/s over the wall time of each fio run."""
    name = "seq.fio"
    # fio joins --directory to a file name only if it comes first.
    common = [fio, "--name=seq", "--bs=1M", f"--size={mib}M", "--ioengine=psync",
              "--output=/dev/null"]
    out = {"fio_write": mib / _timed(lambda: _run(
        [*common, f"--directory={r.a}", f"--filename={name}", "--rw=write",
         "--end_fsync=1"], "fio write"))}
    r.sample_rss("fio")
    r.make_cold()
    wait_visible(r.b / name)
    size = (r.b / name).stat().st_size
    if size != mib << 20:  # fio would lay the file out itself, writing instead of reading
        raise WorkloadError(f"{r.b / name} has {size} bytes on the other mount, "
                            f"not {mib << 20}")
    out["fio_read_cold"] = mib / _timed(lambda: _run(
        [*common, f"--directory={r.b}", f"--filename={name}", "--rw=read"], "fio read"))
    r.sample_rss("fio")
    return out


# -- rename-deploy visibility ------------------------------------------------------------


# Seconds between two reads of the deployed file on the other mount.
DEPLOY_POLL = 0.001


def deploy_visibility(r: Round, deploys: int) -> dict[str, float]:
    """kvfs.benchmarks.deploy between ``a`` and ``b``: the median and maximum time until
    ``b`` reads a file renamed into place on ``a``, and how many polls of ``b`` got
    ENOENT meanwhile.  ``b`` polls every DEPLOY_POLL seconds: a coarser poll would add
    up to its own period to every figure (10 ms polling measured kvfs's ~5 ms at 10-16)."""
    (r.a / "deploy").mkdir()
    wait_visible(r.b / "deploy")
    res = deploy.run(str(r.a / "deploy"), str(r.b / "deploy"), rounds=deploys,
                     poll=DEPLOY_POLL)
    if res.torn:
        raise WorkloadError(f"{res.torn} polls of the other mount read a torn file")
    return {"deploy_median_ms": statistics.median(res.latencies_ms),
            "deploy_max_ms": max(res.latencies_ms), "deploy_enoent": float(res.enoent)}
