"""Real FUSE mounts for tests: a kvfs daemon in a subprocess, and what tests need around it.

Tests that use these fail -- never skip -- when FUSE is unavailable: a filesystem test that
silently does not run is worse than a red one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kvfs.fuse import mounttab

KVFS = [sys.executable, "-m", "kvfs.cli.main"]


def kvfs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the kvfs CLI; ``check`` asserts exit status 0."""
    res = subprocess.run([*KVFS, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"kvfs {' '.join(args)} failed: {res.stderr}"
    return res


def require_fuse() -> None:
    assert os.path.exists("/dev/fuse"), "/dev/fuse is missing: FUSE tests cannot run"
    assert os.geteuid() == 0, "real-mount tests run as root"


def is_mounted(mp: Path) -> bool:
    """Whether something is mounted at ``mp`` (a canonical path, as tmp_path gives)."""
    return mounttab.find(str(mp)) is not None


class Mount:
    """A kvfs daemon serving ``url`` at ``mountpoint`` in the foreground of a subprocess."""

    def __init__(self, url: str, mountpoint: Path, *options: str, log: Path | None = None,
                 wrap: Sequence[str] = ()):
        """``wrap`` prefixes the daemon's command line: ``nsenter --net=...`` runs it in a
        network namespace of its own (tests/nemesis.py) while its mount stays visible here."""
        require_fuse()
        self.url = url
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.log_path = log or mountpoint.parent / f"{mountpoint.name}.log"
        self._log = open(self.log_path, "ab")
        cmd = [*wrap, *KVFS, "mount", url, str(mountpoint)]
        if not any(o.startswith(("cache_dir=", "cache_size=")) for o in options):
            # A disk block cache (remote blocks only) beside the mountpoint, not in
            # /var/cache/kvfs where every test volume would leave its blocks behind.
            options = (*options, f"cache_dir={mountpoint.parent / (mountpoint.name + '.cache')}")
        for o in options:
            cmd += ["-o", o]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not is_mounted(mountpoint):
            if self.proc.poll() is not None:
                raise AssertionError(f"kvfs mount exited with {self.proc.returncode}: "
                                     f"{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("kvfs mount did not come up within 60 s")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def unmount(self, timeout: float = 60) -> None:
        """Unmount cleanly and wait for the daemon to exit with status 0."""
        if self.proc.poll() is None and is_mounted(self.mountpoint):
            kvfs("umount", str(self.mountpoint))
        rc = self.proc.wait(timeout)
        self._log.close()
        assert rc == 0, f"kvfs daemon exited with {rc}: {self.log_path.read_text()[-2000:]}"

    def kill9(self) -> None:
        """Crash the daemon, then clear the dead mount as an operator would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False,
                       capture_output=True)
        assert not is_mounted(self.mountpoint)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self._log.close()
        return rc

    def cleanup(self) -> None:
        """Best-effort teardown for a test that failed half-way."""
        stop_daemon(self.proc, self.mountpoint)
        if not self._log.closed:
            self._log.close()


def stop_daemon(proc: subprocess.Popen[bytes], mountpoint: Path) -> None:
    """Best-effort end of a FUSE daemon: SIGTERM (kill after 30 s), then a lazy unmount
    of whatever it left mounted."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def fsck(url: str, *, after_kill: bool = False) -> str:
    """Run ``kvfs fsck`` (store not mounted) and assert it finds nothing.

    ``after_kill``: a mount was killed (-9) on this volume.  Its usage counters then lag by
    what it had not yet added to them (mounts add their deltas about once a second), which
    fsck reports and ``--repair`` recomputes; that, and only that, is allowed."""
    res = kvfs("fsck", url, check=False)
    if after_kill and res.returncode != 0:
        problems = res.stdout.splitlines()[:-1]  # the last line is the summary
        assert problems and all(p.startswith("usage counters say") for p in problems), \
            f"fsck found problems:\n{res.stdout}{res.stderr}"
        kvfs("fsck", url, "--repair")
        res = kvfs("fsck", url, check=False)
    assert res.returncode == 0, f"fsck found problems:\n{res.stdout}{res.stderr}"
    return res.stdout


def left_behind(root: Path) -> list[str]:
    """Mounts, processes and files under ``root`` that a finished run left."""
    left = [m.mountpoint for m in mounttab.mounts() if m.mountpoint.startswith(str(root))]
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            left.append(f"pid {pid}: {cmdline}")
    return left + [str(p) for p in root.iterdir()]
