"""kvfs against JuiceFS, side by side in one run: ``kvfs bench compare``.

    kvfs bench compare [--engine etcd|local] [--rounds 3] [--scale full|small|tiny]
                       [--dir DIR] [--json]

``--engine etcd`` (the default) starts one etcd member on loopback, formats a kvfs volume
on it (default options: blocks in etcd) and a JuiceFS 1.4.2 volume on the same etcd
(metadata under another prefix, ``--storage etcd``, ``--block-size 1024`` because its
4 MiB default does not fit an etcd request), and mounts each twice.  ``--engine local``
compares the single-host defaults instead: a kvfs embedded volume (a local directory)
against JuiceFS on SQLite with blocks in a local directory, one mount each; there "the
other mount" is the same one unmounted, with the kernel's caches dropped
(``/proc/sys/vm/drop_caches``), and mounted again.

Rounds are interleaved -- kvfs round 1, JuiceFS round 1, kvfs round 2, ... -- and each
figure is the median over the rounds.  A round runs, on fresh directories: the small-file
rates (:func:`kvfs.benchmarks.sidebyside.small_files`), an /etc-like tree, ``cp -a`` of
``/usr/share/doc`` and ``diff -r`` of the copy, fio sequential write and cold read, and
(with two mounts) rename-deploy visibility; resident memory of the mounts is sampled
right after mounting, after the copy and after fio.  The output is a Markdown table of
both figures and a ratio oriented so that above 1 always means kvfs is ahead, and the
load average of the machine at the start and the end (other work on the machine moves
every figure).

Scales: ``full`` is the table of issue 11 (1,000 operations per small-file row, all of
``/usr/share/doc``, 512 MiB for fio, 20 deploys); ``small`` (200 operations, the first 60
entries of ``/usr/share/doc``, 64 MiB, 10 deploys) takes a few minutes; ``tiny`` (5
operations, 3 entries, 4 MiB, 3 deploys, a 12-file tree) only checks that every row
works.  Everything the run starts (etcd, mounts) is stopped by PID and its temporary
directory removed, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import datetime
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvfs import __version__
from kvfs.benchmarks import sidebyside
from kvfs.benchmarks.fsmounts import (
    KVFS,
    JuiceFSMount,
    KvfsMount,
    Mount,
    juicefs_binary,
    run_checked,
)
from kvfs.benchmarks.launch import Etcd, LaunchError, Processes, find_program, sigterm_as_sigint
from kvfs.benchmarks.sidebyside import Round, TreeSpec

DOC_SOURCE = Path("/usr/share/doc")
ENGINES = ("etcd", "local")
SIDES = ("kvfs", "JuiceFS")


@dataclass(frozen=True)
class Scale:
    """How much work one round does."""

    count: int  # operations per small-file row
    tree: TreeSpec  # the /etc-like tree
    doc_entries: int | None  # the first N entries of /usr/share/doc, or None for all
    fio_mib: int
    deploys: int


SCALES = {
    "full": Scale(1000, TreeSpec(200, 31, 889_000), None, 512, 20),
    "small": Scale(200, TreeSpec(200, 31, 889_000), 60, 64, 10),
    "tiny": Scale(5, TreeSpec(12, 4, 40_000), 3, 4, 3),
}


@dataclass(frozen=True)
class Row:
    """One figure of the table; ``higher`` says whether a higher value is better."""

    key: str
    label: str
    higher: bool
    two_mounts_only: bool = False


def rows(scale: Scale, doc_label: str, engine: str) -> list[Row]:
    """The table's rows, in order, labelled for ``scale`` and ``engine`` (the rows that
    need two mounts are left out of ``local``)."""
    n, t = scale.count, scale.tree
    other = "cold on the other mount" if engine == "etcd" else "after a cold remount"
    tree = f"/etc-like tree ({t.files} files in {t.dirs} dirs, {t.total_bytes / 1000:,.0f} KB)"
    out = [
        Row("create", f"create empty file (ops/s, {n:,} in one dir)", True),
        Row("stat", "stat, same mount, right after creating (ops/s)", True),
        Row("write_1k", "write 1 KiB file: open, write, close (ops/s)", True),
        Row("read_1k_cold", f"read 1 KiB file, {other} (ops/s)", True),
        Row("rename", "rename in one dir (ops/s)", True),
        Row("unlink", "unlink (ops/s)", True),
        Row("readdir_ms", f"readdir of {2 * n:,} entries (ms)", False),
        Row("etc_write", f"{tree}: write (s)", False),
        Row("etc_read_cold", f"{tree}: read, {other} (s)", False),
        Row("etc_read_warm", f"{tree}: warm re-read there (s)", False),
        Row("cp", f"`cp -a` of {doc_label} (s)", False),
        Row("diff", f"`diff -r` of that copy, {other} (s)", False),
        Row("fio_write", f"fio sequential write, 1 MiB requests, {scale.fio_mib:,} MiB "
            "(MiB/s)", True),
        Row("fio_read_cold", f"fio sequential read of it, {other} (MiB/s)", True),
        Row("deploy_median_ms", f"rename-deploy seen on the other mount (polled every "
            f"{sidebyside.DEPLOY_POLL * 1000:g} ms): median of {scale.deploys} (ms)", False,
            two_mounts_only=True),
        Row("deploy_max_ms", "rename-deploy seen on the other mount: max (ms)", False,
            two_mounts_only=True),
        Row("deploy_enoent", "rename-deploy: polls of the other mount that got ENOENT",
            False, two_mounts_only=True),
        Row("rss_idle_mb", "RSS of a mount, idle after mounting (MB)", False),
        Row("rss_cp_mb", "RSS of a mount after cp -a / diff -r (MB)", False),
        Row("rss_fio_mb", "RSS of a mount after fio (MB)", False),
    ]
    return [r for r in out if engine == "etcd" or not r.two_mounts_only]


@dataclass
class Side:
    """One filesystem under test: its mounts (the writer first) and how a round finds
    its directories."""

    name: str
    mounts: list[Mount]
    rss: dict[str, list[float]] = field(default_factory=dict)

    @property
    def two_mounts(self) -> bool:
        return len(self.mounts) == 2

    def make_cold(self) -> None:
        """With one mount: unmount, drop the kernel's caches, mount again."""
        if self.two_mounts:
            return
        for m in self.mounts:
            m.stop()
        drop_caches()
        for m in self.mounts:
            m.start()

    def sample_rss(self, what: str) -> None:
        """Record the largest resident set among this side's mounts under ``what``."""
        self.rss.setdefault(what, []).append(max(m.rss_bytes() for m in self.mounts) / 1e6)

    def round(self, n: int) -> Round:
        a, b = self.mounts[0].mountpoint, self.mounts[-1].mountpoint
        (a / f"round-{n}").mkdir()
        return Round(a / f"round-{n}", b / f"round-{n}", self.make_cold, self.sample_rss)


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@dataclass
class Result:
    """Everything a run measured: per side, per figure, one value per round."""

    engine: str
    scale: str
    rounds: int
    rows: list[Row]
    values: dict[str, dict[str, list[float]]]
    started: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    seconds: float
    versions: dict[str, str]
    setup: dict[str, str]

    def median(self, side: str, key: str) -> float | None:
        got = self.values[side].get(key)
        return statistics.median(got) if got else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "scale": self.scale, "rounds": self.rounds,
            "started": self.started, "seconds": round(self.seconds, 1),
            "load_start": self.load_start, "load_end": self.load_end,
            "versions": self.versions, "setup": self.setup,
            "rows": [{"key": r.key, "label": r.label, "higher_is_better": r.higher,
                      **{side: self.median(side, r.key) for side in SIDES},
                      "ratio": ratio(r, self.median("kvfs", r.key),
                                     self.median("JuiceFS", r.key)),
                      "rounds": {side: self.values[side].get(r.key, []) for side in SIDES}}
                     for r in self.rows],
        }


def ratio(row: Row, kvfs: float | None, juicefs: float | None) -> float | None:
    """How far kvfs is ahead: kvfs / JuiceFS where higher is better, JuiceFS / kvfs where
    lower is better; None where undefined (a missing figure, or 0 against 0); inf where
    kvfs scores 0 on a lower-is-better figure that JuiceFS does not."""
    if kvfs is None or juicefs is None:
        return None
    num, den = (kvfs, juicefs) if row.higher else (juicefs, kvfs)
    if den == 0:
        return None if num == 0 else float("inf")
    return num / den


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value else "0"


def _ratio_text(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if value == float("inf") else f"{value:.2f}×"


def markdown(res: Result) -> str:
    """The result as text: how it was run, the load, and the table."""
    la = ", ".join(f"{x:.2f}" for x in res.load_start)
    lb = ", ".join(f"{x:.2f}" for x in res.load_end)
    lines = [
        f"kvfs bench compare --engine {res.engine} --scale {res.scale} --rounds "
        f"{res.rounds}: {res.started}, {os.cpu_count()} CPUs, {res.seconds / 60:.1f} min",
        f"load average (1, 5, 15 min): {la} at the start, {lb} at the end",
        "versions: " + "; ".join(f"{k} {v}" for k, v in res.versions.items()),
    ]
    lines += [f"{k}: {v}" for k, v in res.setup.items()]
    lines += [
        f"Each figure is the median of {res.rounds} interleaved round(s). Ratio: kvfs / "
        "JuiceFS for rates, JuiceFS / kvfs for times, counts and memory, so above 1 "
        "always means kvfs is ahead.",
        "",
        f"| workload | kvfs {__version__} | JuiceFS {res.versions.get('JuiceFS', '')} | "
        "ratio (>1: kvfs ahead) |",
        "|---|---|---|---|",
    ]
    for r in res.rows:
        k, j = res.median("kvfs", r.key), res.median("JuiceFS", r.key)
        lines.append(f"| {r.label} | {_number(k)} | {_number(j)} | "
                     f"{_ratio_text(ratio(r, k, j))} |")
    return "\n".join(lines)


def _doc_source(scale: Scale, base: Path) -> tuple[Path, str]:
    """The tree to copy and its label: /usr/share/doc itself, or a copy of its first
    entries made in ``base`` (the same every run)."""
    if not DOC_SOURCE.is_dir():
        raise LaunchError(f"{DOC_SOURCE} is missing: the copy workload needs it")
    if scale.doc_entries is None:
        source = DOC_SOURCE
        what = str(DOC_SOURCE)
    else:
        source = base / "doc-source"
        source.mkdir()
        for name in sorted(os.listdir(DOC_SOURCE))[:scale.doc_entries]:
            subprocess.run(["cp", "-a", str(DOC_SOURCE / name), str(source / name)],
                           check=True, stdin=subprocess.DEVNULL)
        what = f"the first {scale.doc_entries} entries of {DOC_SOURCE}"
    size, entries = sidebyside.tree_size(source)
    return source, f"{what} ({size / 1e6:,.1f} MB, {entries:,} entries)"


def _setup_etcd(procs: Processes, base: Path, versions: dict[str, str],
                setup: dict[str, str]) -> list[Side]:
    etcd = Etcd(procs, base)
    versions["etcd"] = etcd.version().removeprefix("etcd ")
    kvfs_url = f"etcd://{etcd.endpoint}/kvfs-compare"
    jfs_meta = f"etcd://{etcd.endpoint}/juicefs-compare"
    jfs = juicefs_binary()
    run_checked([*KVFS, "format", kvfs_url, "compare"], "kvfs format")
    run_checked([jfs, "format", "--block-size", "1024", "--storage", "etcd", "--bucket",
                 etcd.endpoint, jfs_meta, "juicefs-compare"], "juicefs format")
    setup["setup"] = (
        "one etcd member on 127.0.0.1, data directory on disk, --snapshot-count 10000, "
        "--quota-backend-bytes 16 GiB; two mounts of each volume on this host; "
        "kvfs: `kvfs format etcd://…/kvfs-compare` (blocks in etcd); JuiceFS: `juicefs "
        "format --block-size 1024 --storage etcd` (metadata under another prefix), "
        "mounted with a local cache directory of its own each")
    mnt = base / "mnt"
    return [
        Side("kvfs", [KvfsMount(procs, kvfs_url, mnt / f"kvfs-{x}", base / f"kvfs-{x}.log",
                                base / f"kvfs-cache-{x}")
                      for x in "ab"]),
        Side("JuiceFS", [JuiceFSMount(procs, jfs_meta, mnt / f"juicefs-{x}",
                                      base / f"juicefs-{x}.log", base / f"jfs-cache-{x}")
                         for x in "ab"]),
    ]


def _setup_local(procs: Processes, base: Path, versions: dict[str, str],
                 setup: dict[str, str]) -> list[Side]:
    if os.geteuid() != 0:
        raise LaunchError("--engine local needs root: cold reads drop the kernel's caches")
    jfs = juicefs_binary()
    volume = base / "kvfs-volume"
    jfs_meta = f"sqlite3://{base / 'juicefs.db'}"
    run_checked([*KVFS, "format", str(volume), "compare"], "kvfs format")
    run_checked([jfs, "format", "--storage", "file", "--bucket", f"{base / 'jfs-blocks'}/",
                 jfs_meta, "juicefs-compare"], "juicefs format")
    setup["setup"] = (
        "one mount of each volume; kvfs: an embedded volume, `kvfs format DIR` (blocks in "
        "its store); JuiceFS: `juicefs format sqlite3://… --storage file` (its defaults, "
        "4 MiB blocks); cold = unmount, drop the kernel's caches, mount again")
    mnt = base / "mnt"
    return [
        Side("kvfs", [KvfsMount(procs, str(volume), mnt / "kvfs", base / "kvfs.log",
                                base / "kvfs-cache")]),
        Side("JuiceFS", [JuiceFSMount(procs, jfs_meta, mnt / "juicefs", base / "juicefs.log",
                                      base / "jfs-cache")]),
    ]


def _round(side: Side, n: int, scale: Scale, doc: Path, fio: str,
           log: Callable[[str], None]) -> dict[str, float]:
    r = side.round(n)
    log("  small files")
    figures = sidebyside.small_files(r, scale.count)
    log("  /etc-like tree")
    figures |= sidebyside.etc_tree(r, scale.tree)
    log("  cp -a, diff -r")
    figures |= sidebyside.copy_tree(r, doc)
    log("  fio")
    figures |= sidebyside.sequential(r, fio, scale.fio_mib)
    if side.two_mounts:
        log("  rename-deploy")
        figures |= sidebyside.deploy_visibility(r, scale.deploys)
    figures["rss_cp_mb"] = max(side.rss.pop("cp"))
    figures["rss_fio_mb"] = max(side.rss.pop("fio"))
    return figures


def run(engine: str = "etcd", rounds: int = 3, scale_name: str = "full", workdir: str = "",
        log: Callable[[str], None] = lambda line: None) -> Result:
    """Run the comparison (see the module docstring) and return what it measured;
    ``log`` hears what is going on.  LaunchError for a missing tool or a server that
    does not start; every process started is stopped before this returns or raises."""
    if engine not in ENGINES:
        raise LaunchError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if rounds < 1:
        raise LaunchError("--rounds must be at least 1")
    scale = SCALES[scale_name]
    fio = find_program("fio", hint="apt-get install fio")
    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    t0 = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="kvfs-compare-", dir=workdir or "/var/tmp"))
    procs = Processes()
    sides: list[Side] = []
    versions = {"JuiceFS": run_checked([juicefs_binary(), "--version"], "juicefs --version")
                .split()[2].split("+")[0],
                "fio": run_checked([fio, "--version"], "fio --version").strip()}
    setup: dict[str, str] = {}
    values: dict[str, dict[str, list[float]]] = {s: {} for s in SIDES}
    try:
        with sigterm_as_sigint():
            log(f"working in {base}")
            doc, doc_label = _doc_source(scale, base)
            setup_fn = _setup_etcd if engine == "etcd" else _setup_local
            sides = setup_fn(procs, base, versions, setup)
            for side in sides:
                for m in side.mounts:
                    log(f"mounting {side.name} at {m.mountpoint}")
                    m.start()
            for side in sides:
                side.sample_rss("idle")
                values[side.name]["rss_idle_mb"] = side.rss.pop("idle")
            for n in range(1, rounds + 1):
                for side in sides:
                    log(f"round {n}/{rounds}: {side.name}")
                    for key, value in _round(side, n, scale, doc, fio, log).items():
                        values[side.name].setdefault(key, []).append(value)
    finally:
        for side in sides:
            for m in side.mounts:
                m.stop()
        procs.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    return Result(engine=engine, scale=scale_name, rounds=rounds,
                  rows=rows(scale, doc_label, engine),
                  values=values, started=started.strftime("%Y-%m-%d %H:%M UTC"),
                  load_start=load_start, load_end=os.getloadavg(),
                  seconds=time.monotonic() - t0, versions=versions, setup=setup)
