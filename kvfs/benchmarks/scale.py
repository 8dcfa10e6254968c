"""How kvfs's costs grow with size: ``kvfs bench scale`` (kvfs issue 11, "Scale").

    kvfs bench scale [--engine embedded|etcd|META_URL] [--entries 1000,10000,100000]
                     [--files 10000,100000,1000000] [--mounts 10] [--seconds 30]
                     [--samples 1000] [--parts dir,volume,watch] [--dir DIR] [--json]

Three parts, each printed as a Markdown table:

``dir`` -- one directory of N entries, for each N of ``--entries``.  The N empty files are
made in-process, before anything mounts the volume, through the volume's own metadata
layer (``open_volume(...).meta.create``, one transaction per file, one file after another:
they all change the same directory), and that rate is reported.  Then, through a real
mount: ``--samples`` stats of random existing names right after a fresh mount (cold
lookups), the same stats again (warm: the kernel's and the record cache's), stats of
absent names (negative lookups), and, on another fresh mount, a full listing
(``os.scandir`` to its end, the calls ``ls -f`` makes) cold and again warm.

``volume`` -- one volume of M files, for each M of ``--files``, in directories of 1,000
files each.  The files are made in-process as above, 16 directories at a time (one task
per directory, so creates do not conflict).  Then: how long a mount takes (from starting
``kvfs mount`` until a stat of the mountpoint answers), the mount's resident memory idle,
after ``find`` over the volume (``find MNT -type f``: listings only) and after a stat of
every file (``find MNT -printf %s``).

``watch`` -- ``--mounts`` writer mounts of one shared volume plus two observer mounts,
on a shared engine (etcd: the one started for the run, or the META_URL given).  Each
writer has a directory of its own (100 files); a change is: create ``tmp``, write 1 KiB
to it, rename it over one of the 100 files.  Three phases of ``--seconds`` each: nobody
writes (idle), one writer writes (solo), every writer writes (all).  For each mount, the
CPU seconds it used per phase (``/proc/PID/stat``, user + system).  One observer has
nothing cached (it was mounted and never looked at); the other has read every directory
and stat'ed every file (``ls -lR``), so every change touches something it holds: what
the watch costs a mount for changes it has no state for, against changes it has.

Engines: ``embedded`` (the default: the ``dir`` and ``volume`` parts on embedded volumes,
the ``watch`` part on an etcd started for it), ``etcd`` (one etcd member on loopback,
started by the run, :class:`kvfs.benchmarks.launch.Etcd`, for every part), or a META_URL
of a shared engine (``etcd://HOST:PORT/PREFIX``, ``raft://...``): each volume is then
formatted under PREFIX plus a suffix (``-dir``, ``-vol1000``, ``-watch``), which must not
hold a volume yet, and is left there.  Everything the run started (etcd, mounts) is
stopped by PID and its temporary directory removed, also on an error, Ctrl-C or SIGTERM.

Each figure is one measurement, not a median of several, and other work on the machine
moves it: the output carries the load average at the start and the end.
"""

from __future__ import annotations

import datetime
import os
import random
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio

from kvfs.benchmarks.fsmounts import KvfsMount, run_checked
from kvfs.benchmarks.launch import Etcd, LaunchError, Processes, log_tail, sigterm_as_sigint
from kvfs.volume import format_volume, open_engine, open_volume

PARTS = ("dir", "volume", "watch")
ENGINES = ("embedded", "etcd")
ROOT_INO = 1  # the root directory's inode (kvfs's and FUSE's)
FILES_PER_DIR = 1000  # the ``volume`` part's directory size
WATCH_FILES = 100  # files in each writer's directory (``watch`` part)
FILL_TASKS = 16  # directories filled at once (``volume`` part)
Log = Callable[[str], None]


@dataclass(frozen=True)
class _Caller:
    """Who creates the files: this process's effective ids.  Stands in for
    ``kvfs.meta.metadata.Ctx``, which a benchmark may not import (tests/test_layering.py);
    ``Metadata.create`` reads only ``uid`` and ``gid``."""

    uid: int
    gid: int
    pid: int = 0


@dataclass
class Table:
    """One part's figures: a title, notes printed under it, column headings, rows."""

    title: str
    columns: list[str]
    rows: list[list[float | str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    """Everything a run measured, and the conditions it ran under."""

    started: str
    engine: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    tables: list[Table] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"started": self.started, "engine": self.engine,
                "load_start": self.load_start, "load_end": self.load_end,
                "seconds": round(self.seconds, 1),
                "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows,
                            "notes": t.notes} for t in self.tables]}


def _cell(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value else "0"


def markdown(res: Result) -> str:
    """The result as text: how it ran, then each part's table and notes."""
    la = ", ".join(f"{x:.2f}" for x in res.load_start)
    lb = ", ".join(f"{x:.2f}" for x in res.load_end)
    lines = [f"kvfs bench scale --engine {res.engine}: {res.started}, {os.cpu_count()} CPUs, "
             f"{res.seconds / 60:.1f} min",
             f"load average (1, 5, 15 min): {la} at the start, {lb} at the end"]
    for t in res.tables:
        lines += ["", f"### {t.title}", "", "| " + " | ".join(t.columns) + " |",
                  "|" + "---|" * len(t.columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t.rows]
        if t.notes:
            lines += [""] + t.notes
    return "\n".join(lines)


def _fill_now(url: str, dirs: list[tuple[str, int]], tasks: int) -> list[float]:
    """:func:`_fill` in a trio run of its own; a Ctrl-C (or SIGTERM) during it is a plain
    KeyboardInterrupt, as anywhere else in the run, not one wrapped in a group."""
    try:
        return trio.run(_fill, url, dirs, tasks)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise


def _row_text(t: Table) -> str:
    """The last row of ``t`` with its headings, for the log as soon as it is measured (a
    long run stopped halfway keeps what it measured)."""
    return "; ".join(f"{c}: {_cell(v)}" for c, v in zip(t.columns, t.rows[-1], strict=True))


# -- filling volumes in-process --------------------------------------------------------


def _file_name(i: int) -> bytes:
    return b"file-%07d" % i


async def _format(url: str) -> None:
    kv = await open_engine(url, create=True)
    try:
        await format_volume(kv, "scale")
    finally:
        await kv.aclose()


async def _fill(url: str, dirs: list[tuple[str, int]], tasks: int) -> list[float]:
    """Format ``url`` and make each ``(name, files)`` of ``dirs`` under the root: a
    directory holding that many empty files, made one after another through the volume's
    metadata layer; ``tasks`` directories at a time.  Returns each directory's seconds."""
    await _format(url)
    vol = await open_volume(url)
    caller = cast(Any, _Caller(os.geteuid(), os.getegid()))
    seconds = [0.0] * len(dirs)
    todo = iter(enumerate(dirs))
    try:
        async def worker() -> None:
            for k, (name, files) in todo:
                t0 = time.monotonic()
                ino, _, _ = await vol.meta.create(caller, ROOT_INO, name.encode(),
                                                  stat.S_IFDIR | 0o755)
                for i in range(files):
                    await vol.meta.create(caller, ino, _file_name(i), stat.S_IFREG | 0o644)
                seconds[k] = time.monotonic() - t0

        async with trio.open_nursery() as nursery:
            for _ in range(min(tasks, len(dirs))):
                nursery.start_soon(worker)
        await vol.meta.usage.flush()  # so df on the mount counts the files
    finally:
        await vol.aclose()
    return seconds


# -- measuring a mount from outside ----------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid(m: KvfsMount) -> int:
    assert m.proc is not None, "the mount is not running"
    return m.proc.pid


def _mount(m: KvfsMount) -> float:
    """Start ``m``; the seconds until a stat of its root answers."""
    t0 = time.monotonic()
    m.start()
    os.stat(m.mountpoint)
    return time.monotonic() - t0


def _per_op_us(paths: list[str], expect_missing: bool = False) -> float:
    """Mean microseconds of an ``os.stat`` of each path, in order."""
    t0 = time.perf_counter()
    for p in paths:
        try:
            os.stat(p)
        except FileNotFoundError:
            if not expect_missing:
                raise
        else:
            if expect_missing:
                raise LaunchError(f"{p} exists: expected a negative lookup")
    return (time.perf_counter() - t0) / max(1, len(paths)) * 1e6


def _listing(path: Path, expect: int) -> float:
    """Seconds of a full ``os.scandir`` of ``path``; LaunchError unless it lists ``expect``."""
    t0 = time.perf_counter()
    with os.scandir(path) as it:
        n = sum(1 for _ in it)
    took = time.perf_counter() - t0
    if n != expect:
        raise LaunchError(f"listing {path} gave {n} entries, not {expect}")
    return took


def _find(root: Path, *args: str) -> tuple[float, int]:
    """Seconds of ``find ROOT ARGS`` and the lines it printed."""
    t0 = time.perf_counter()
    out = run_checked(["find", str(root), *args], "find", timeout=3600)
    return time.perf_counter() - t0, out.count("\n")


def _mb(m: KvfsMount) -> float:
    return m.rss_bytes() / 1e6


# -- the parts -------------------------------------------------------------------------


@dataclass
class _Run:
    """What every part needs: where to work, what to start processes with, how to name
    a fresh volume on the run's engine."""

    base: Path
    procs: Processes
    volume_url: Callable[[str], str]
    shared_url: Callable[[str], str]
    log: Log
    mounts: list[KvfsMount] = field(default_factory=list)  # every mount made, to stop

    def mount(self, url: str, name: str) -> KvfsMount:
        m = KvfsMount(self.procs, url, self.base / "mnt" / name, self.base / f"{name}.log",
                      self.base / f"cache-{name}")
        self.mounts.append(m)
        return m


def part_dir(run: _Run, entries: list[int], samples: int) -> Table:
    """The ``dir`` part (module docstring): one row per directory size."""
    url = run.volume_url("dir")
    dirs = [(f"d{n}", n) for n in entries]
    run.log(f"dir: making directories of {', '.join(f'{n:,}' for n in entries)} entries")
    fill = _fill_now(url, dirs, 1)  # one at a time: each directory's own rate
    table = Table(
        "One directory of N entries",
        ["entries", "create in-process (files/s)", "mount (s)", "cold lookup (µs)",
         "warm lookup (µs)", "negative lookup (µs)", "readdir cold (ms)",
         "readdir cold (µs/entry)", "readdir warm (ms)", "RSS after readdir (MB)"],
        notes=[f"Lookups: os.stat of {samples:,} random names (every name, if fewer) right "
               "after a fresh mount (cold), of the same names again (warm), then of "
               f"{samples:,} absent names (negative).  readdir: os.scandir to its end on "
               "another fresh mount (cold), then again (warm).  The files were made "
               "in-process through the metadata layer (Metadata.create, one transaction "
               "each, one after another), before anything mounted the volume."])
    m = run.mount(url, "dir")
    rng = random.Random(11)
    for (name, n), secs in zip(dirs, fill, strict=True):
        run.log(f"dir: {n:,} entries: lookups")
        mount_s = _mount(m)
        d = m.mountpoint / name
        picked = [str(d / _file_name(i).decode()) for i in rng.sample(range(n), min(samples, n))]
        cold = _per_op_us(picked)
        warm = _per_op_us(picked)
        negative = _per_op_us([str(d / f"absent-{i:07d}") for i in range(samples)],
                              expect_missing=True)
        m.stop()
        run.log(f"dir: {n:,} entries: readdir")
        _mount(m)
        listed_cold = _listing(d, n)
        listed_warm = _listing(d, n)
        rss = _mb(m)
        m.stop()
        table.rows.append([n, n / secs, mount_s, cold, warm, negative, listed_cold * 1e3,
                           listed_cold / n * 1e6, listed_warm * 1e3, rss])
        run.log(_row_text(table))
    return table


def part_volume(run: _Run, sizes: list[int]) -> Table:
    """The ``volume`` part (module docstring): one row per volume size."""
    table = Table(
        "A volume of M files",
        ["files", "directories", "create in-process (files/s)", "mount (s)",
         "RSS idle (MB)", "find -type f (s)", "RSS after find (MB)", "stat every file (s)",
         "stat (µs/file)", "RSS after stat (MB)"],
        notes=[f"Directories of {FILES_PER_DIR:,} empty files under the root, made "
               f"in-process through the metadata layer (Metadata.create, one transaction "
               f"per file), {FILL_TASKS} directories at a time, before anything mounted the "
               "volume.  mount: from starting `kvfs mount` to a stat of the mountpoint "
               "answered.  find -type f lists every directory (no stat); stat every file: "
               "`find -type f -printf %s` right after, on the same mount."])
    for files in sizes:
        url = run.volume_url(f"vol{files}")
        count = -(-files // FILES_PER_DIR)
        dirs = [(f"d{k:04d}", min(FILES_PER_DIR, files - k * FILES_PER_DIR))
                for k in range(count)]
        run.log(f"volume: making {files:,} files in {count:,} directories")
        t0 = time.monotonic()
        _fill_now(url, dirs, FILL_TASKS)
        fill_s = time.monotonic() - t0
        run.log(f"volume: {files:,} files: mount, find, stat")
        m = run.mount(url, f"vol{files}")
        mount_s = _mount(m)
        rss_idle = _mb(m)
        find_s, found = _find(m.mountpoint, "-type", "f")
        rss_find = _mb(m)
        stat_s, stated = _find(m.mountpoint, "-type", "f", "-printf", "%s\n")
        rss_stat = _mb(m)
        m.stop()
        if found != files or stated != files:
            raise LaunchError(f"find saw {found:,} and {stated:,} files, not {files:,}")
        table.rows.append([files, count, files / fill_s, mount_s, rss_idle, find_s, rss_find,
                           stat_s, stat_s / files * 1e6, rss_stat])
        run.log(_row_text(table))
    return table


def _writer(d: Path, stop: threading.Event, made: list[int], k: int,
            errors: list[BaseException]) -> None:
    """Change files in ``d`` until ``stop``: write ``tmp``, rename it over a file."""
    data = b"x" * 1024
    tmp = d / "tmp"
    i = 0
    try:
        while not stop.is_set():
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, d / _file_name(i % WATCH_FILES).decode())
            i += 1
    except BaseException as exc:  # handed to the main thread, which raises it
        errors.append(exc)
    made[k] = i


def part_watch(run: _Run, writers: int, seconds: float,
               extra_pid: Callable[[], int | None]) -> Table:
    """The ``watch`` part (module docstring): one row per mount, and one for the engine's
    server when the run started it (``extra_pid``)."""
    url = run.shared_url("watch")
    names = [f"w{k:02d}" for k in range(writers)]
    run.log(f"watch: {writers} directories of {WATCH_FILES} files, {writers + 2} mounts")
    _fill_now(url, [(n, WATCH_FILES) for n in names], FILL_TASKS)
    wmounts = [run.mount(url, f"writer-{n}") for n in names]
    cold, warm = run.mount(url, "observer-cold"), run.mount(url, "observer-warm")
    everyone = [*wmounts, cold, warm]
    for m in everyone:
        _mount(m)
    for m, n in zip(wmounts, names, strict=True):  # a writer knows its own directory
        for e in os.scandir(m.mountpoint / n):
            e.stat(follow_symlinks=False)
    for top, _, files in os.walk(warm.mountpoint):  # ls -lR: everything cached
        for f in files:
            os.lstat(os.path.join(top, f))
    pids = [_pid(m) for m in everyone]
    server = extra_pid()
    if server is not None:
        pids.append(server)

    def phase(active: list[int], what: str) -> tuple[list[float], list[int]]:
        run.log(f"watch: {what} for {seconds:g} s")
        before = [cpu_seconds(p) for p in pids]
        stop = threading.Event()
        made = [0] * writers
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_writer, daemon=True,
                                    args=(wmounts[k].mountpoint / names[k], stop, made, k,
                                          errors)) for k in active]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)], made

    idle, _ = phase([], "idle")
    solo, made_solo = phase([0], "one writer")
    every, made_all = phase(list(range(writers)), f"{writers} writers")
    table = Table(
        f"{writers} mounts changing files in one etcd volume, {seconds:g} s per phase",
        ["mount", "idle: CPU (s)", "one writer: CPU (s)", f"{writers} writers: CPU (s)",
         "changes made (one writer)", f"changes made ({writers} writers)"])
    for k in range(writers):
        table.rows.append([f"writer {k}", idle[k], solo[k], every[k], made_solo[k],
                           made_all[k]])
    table.rows.append(["observer, nothing cached", idle[writers], solo[writers],
                       every[writers], 0, 0])
    table.rows.append(["observer, all cached (ls -lR)", idle[writers + 1],
                       solo[writers + 1], every[writers + 1], 0, 0])
    if server is not None:
        table.rows.append(["etcd server", idle[-1], solo[-1], every[-1], "", ""])
    total_solo, total_all = sum(made_solo), sum(made_all)

    def per_change_ms(cpu: float, changes: int) -> str:
        return f"{cpu / changes * 1e3:.3f} ms" if changes else "—"

    busy = [every[k] for k in range(writers)]
    table.notes = [
        f"A change: write 1 KiB to a new file and rename it over one of the {WATCH_FILES} "
        "files of the writer's own directory (three commits: create, write, rename).  "
        "CPU: user + system seconds of each mount's process over the phase "
        "(/proc/PID/stat).",
        f"CPU per change: writer 0 alone {per_change_ms(solo[0], made_solo[0])} of its "
        f"own; with all {writers} writing, {per_change_ms(sum(busy), total_all)} per own "
        f"change (mean over writers, each also watching the other {writers - 1}'s "
        "changes).",
        f"Observers, per change in the volume: nothing cached "
        f"{per_change_ms(solo[writers], total_solo)} (one writer), "
        f"{per_change_ms(every[writers], total_all)} ({writers} writers); all cached "
        f"{per_change_ms(solo[writers + 1], total_solo)} (one writer), "
        f"{per_change_ms(every[writers + 1], total_all)} ({writers} writers).",
    ]
    for m in everyone:
        m.stop()
    return table


def _suffixed(url: str, suffix: str) -> str:
    """``url`` with ``-suffix`` added to its prefix (before any ``?query``)."""
    head, sep, query = url.partition("?")
    return f"{head.rstrip('/')}-{suffix}{sep}{query}"


def run(engine: str = "embedded", entries: list[int] | None = None,
        files: list[int] | None = None, mounts: int = 10, seconds: float = 30.0,
        samples: int = 1000, parts: list[str] | None = None, workdir: str = "",
        log: Log = lambda line: None) -> Result:
    """Run the parts asked for (module docstring) and return what they measured; ``log``
    hears what is going on.  LaunchError for a bad argument, a missing tool or a server
    that does not start; every process started is stopped before this returns or raises."""
    entries = entries if entries is not None else [1000, 10_000, 100_000]
    files = files if files is not None else [10_000, 100_000, 1_000_000]
    parts = parts if parts is not None else list(PARTS)
    if engine not in ENGINES and not engine.startswith(("etcd://", "raft://")):
        raise LaunchError(f"--engine {engine!r}: choose embedded, etcd, or the URL of a "
                          "shared engine (etcd://..., raft://...)")
    if unknown := [p for p in parts if p not in PARTS]:
        raise LaunchError(f"unknown part {unknown[0]!r}: choose from {', '.join(PARTS)}")
    if min([*entries, *files, mounts, samples], default=1) < 1 or seconds <= 0:
        raise LaunchError("sizes, --mounts, --samples and --seconds must be positive")
    res = Result(datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), engine,
                 os.getloadavg())
    t0 = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="kvfs-scale-", dir=workdir or "/var/tmp"))
    procs = Processes()
    etcd: list[Etcd] = []

    def etcd_url(suffix: str) -> str:
        if not etcd:
            etcd.append(Etcd(procs, base))
            log(f"started {etcd[0].version()} on {etcd[0].endpoint}")
        return f"etcd://{etcd[0].endpoint}/kvfs-scale-{suffix}"

    def embedded_url(suffix: str) -> str:
        return str(base / f"volume-{suffix}")

    def given_url(suffix: str) -> str:
        return _suffixed(engine, suffix)

    volume_url = {"embedded": embedded_url, "etcd": etcd_url}.get(engine, given_url)
    shared_url = etcd_url if engine in ENGINES else given_url
    state = _Run(base, procs, volume_url, shared_url, log)
    try:
        with sigterm_as_sigint():
            log(f"working in {base}")
            if "dir" in parts:
                res.tables.append(part_dir(state, entries, samples))
            if "volume" in parts:
                res.tables.append(part_volume(state, files))
            if "watch" in parts:
                res.tables.append(part_watch(
                    state, mounts, seconds,
                    lambda: etcd[0].proc.pid if etcd and shared_url is etcd_url else None))
    except BaseException:
        # The logs go with the run's directory: what the mounts said is shown first.
        for m in state.mounts:
            if tail := log_tail(m.log, 10):
                log(f"log of the mount at {m.mountpoint}:\n{tail}")
        raise
    finally:
        for m in state.mounts:
            m.stop()
        procs.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    res.load_end = os.getloadavg()
    res.seconds = time.monotonic() - t0
    return res


def sizes(text: str) -> list[int]:
    """The sizes of a comma-separated list of integers (``1000,10_000``)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LaunchError(f"{text!r} is not a comma-separated list of integers") from None
    if not out:
        raise LaunchError("an empty list of sizes")
    return out
