#!/usr/bin/env python3
"""Run the kvfs POSIX conformance checks (as root).

    .venv/bin/python posix-tests/run.py [--engine embedded|etcd|raft|mem] [--url META_URL]
                                        [--keep-going] [-k PATTERN] [-v]

Formats a fresh volume (embedded engine: in a temporary directory; etcd: on a throwaway
single-member etcd started on loopback for this run and always stopped at the end; raft:
on three throwaway ``kvfs raft serve`` members on loopback, stopped likewise; mem:
nothing to format), mounts it in the background, runs every registered check against the
mountpoint, unmounts (always), prints one line per failed assertion and, last,
``N passed, M failed``.  Exit status 0 only when nothing failed.

Without --keep-going the run stops after the first check that has a failure.
--url mounts an existing META_URL (e.g. an etcd:// volume formatted beforehand) instead
of formatting one; --dir (for validating the suite itself) runs against an existing
directory, e.g. a tmpfs or ext4 one, without mounting anything.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import glob
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree

import lib  # noqa: E402

CHECK_TIMEOUT = 120  # seconds one check may take before it is abandoned


# --------------------------------------------------------------------------- engines

def kvfs_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "kvfs")
    if os.path.exists(exe):
        return [exe]
    return [sys.executable, "-m", "kvfs.cli.main"]


def prepare_embedded(tmp: str, stack: contextlib.ExitStack) -> str:
    """Format a fresh embedded volume; return its META_URL."""
    db = os.path.join(tmp, "meta")
    subprocess.run(kvfs_cmd() + ["format", db, "posix"], check=True,
                   stdout=subprocess.DEVNULL)
    return db


def prepare_mem(tmp: str, stack: contextlib.ExitStack) -> str:
    return "mem://"


ETCD = os.environ.get("KVFS_POSIX_ETCD", "/usr/bin/etcd")
ETCD_START_TIMEOUT = 30  # seconds for a fresh etcd to answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """A throwaway single-member etcd on 127.0.0.1 with its data in ``dir``.

    Started with :meth:`start` (retried on fresh ports if one was taken meanwhile), stopped
    by PID with :meth:`stop` (SIGTERM, then SIGKILL); used as a context manager it is always
    stopped, whatever happened in between.
    """

    def __init__(self, dir: str):
        self.dir = dir
        self.log = os.path.join(dir, "etcd.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.client_port = self.peer_port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def _spawn(self) -> None:
        self.client_port, self.peer_port = free_port(), free_port()
        client, peer = f"http://{self.endpoint}", f"http://127.0.0.1:{self.peer_port}"
        cmd = [ETCD, "--name", "posix", "--data-dir", os.path.join(self.dir, "data"),
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"posix={peer}", "--initial-cluster-state", "new",
               "--logger", "zap", "--log-outputs", self.log]
        # own session: a ^C at the terminal must not kill etcd under a still-mounted volume;
        # the finally of main() stops it once the volume is unmounted
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def start(self) -> None:
        if not os.access(ETCD, os.X_OK):
            raise RuntimeError(f"{ETCD} is missing (apt-get install etcd-server)")
        os.makedirs(self.dir, exist_ok=True)
        for _attempt in range(3):
            self._spawn()
            end = time.monotonic() + ETCD_START_TIMEOUT
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    break  # e.g. a port was taken between free_port() and bind: retry
                if self._healthy():
                    return
                time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError(f"etcd not healthy after {ETCD_START_TIMEOUT}s; "
                                   f"see {self.log}")
            shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)
        raise RuntimeError(f"etcd exited with status {self.proc.returncode}; see {self.log}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:
            if proc.returncode not in (0, -signal.SIGTERM):
                print(f"warning: etcd (pid {proc.pid}) had died with status "
                      f"{proc.returncode} before the end of the run; see {self.log}",
                      file=sys.stderr)
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)

    def __enter__(self) -> EtcdServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prepare_etcd(tmp: str, stack: contextlib.ExitStack) -> str:
    """Start a throwaway etcd (stopped when ``stack`` closes), format a volume on it."""
    server = stack.enter_context(EtcdServer(os.path.join(tmp, "etcd")))
    url = f"etcd://{server.endpoint}/posix"
    subprocess.run(kvfs_cmd() + ["format", url, "posix"], check=True,
                   stdout=subprocess.DEVNULL, timeout=120)
    return url


RAFT_START_TIMEOUT = 30  # seconds for a fresh member to listen


class RaftCluster:
    """Three throwaway ``kvfs raft serve`` members on 127.0.0.1 with their data in ``dir``,
    stopped by PID (SIGTERM, then SIGKILL) when the context exits."""

    NAMES = ("p1", "p2", "p3")

    def __init__(self, dir: str):
        self.dir = dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.peer = {n: free_port() for n in self.NAMES}
        self.client = {n: free_port() for n in self.NAMES}

    @property
    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.client.values())

    def __enter__(self) -> RaftCluster:
        os.makedirs(self.dir, exist_ok=True)
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in self.peer.items())
        clients = ",".join(f"{n}=127.0.0.1:{p}" for n, p in self.client.items())
        try:
            for name in self.NAMES:
                log = open(os.path.join(self.dir, f"{name}.log"), "ab")  # noqa: SIM115
                cmd = kvfs_cmd() + [
                    "raft", "serve", "--name", name,
                    "--data-dir", os.path.join(self.dir, name),
                    "--listen-peer", f"http://127.0.0.1:{self.peer[name]}",
                    "--listen-client", f"http://127.0.0.1:{self.client[name]}",
                    "--initial-cluster", initial, "--initial-cluster-clients", clients,
                    "--initial-cluster-token", "posix"]
                # own session, as for etcd: ^C must not stop a member under a live mount
                self.procs.append(subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True))
                log.close()
            for name, proc in zip(self.NAMES, self.procs, strict=True):
                end = time.monotonic() + RAFT_START_TIMEOUT
                while True:
                    if proc.poll() is not None or time.monotonic() > end:
                        raise RuntimeError(f"raft member {name} did not start; see "
                                           f"{os.path.join(self.dir, name + '.log')}")
                    try:
                        socket.create_connection(("127.0.0.1", self.client[name]), 1).close()
                        break
                    except OSError:
                        time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


def prepare_raft(tmp: str, stack: contextlib.ExitStack) -> str:
    """Start a throwaway three-member Raft store, format a volume on it."""
    cluster = stack.enter_context(RaftCluster(os.path.join(tmp, "raft")))
    url = f"raft://{cluster.endpoints}/posix"
    subprocess.run(kvfs_cmd() + ["format", url, "posix"], check=True,
                   stdout=subprocess.DEVNULL, timeout=120)
    return url


# engine name -> function(tmpdir, exit_stack) returning the META_URL to mount; whatever
# the engine starts must be registered on exit_stack, which closes after the last unmount.
ENGINES = {
    "embedded": prepare_embedded,
    "etcd": prepare_etcd,
    "mem": prepare_mem,
    "raft": prepare_raft,
}


DAEMON_EXIT_TIMEOUT = 60  # seconds a mount daemon may take to flush and exit after umount


class Mount:
    """A background kvfs mount of ``url`` at ``mnt``.

    Leaving the context unmounts and then waits for the mount daemon to exit: ``kvfs
    umount`` returns as soon as the kernel lets go, while the daemon still flushes to the
    engine, which must not be stopped (etcd) or reopened (the remount) before it is done.
    """

    def __init__(self, url: str, mnt: str, log: str):
        self.url, self.mnt, self.log = url, mnt, log
        self.mounted = False
        self.pid: int | None = None  # the mount daemon, from its "mounted at" log line

    def __enter__(self) -> Mount:
        # On a shared engine a deleted file's data, and its space in df, goes only after
        # orphan_grace (for other hosts that may have it open); this one mount's open files
        # are kept by its own holds, so a short grace loses nothing and keeps checks quick.
        # Its disk block cache (engines across the network) beside the mountpoint, so
        # runs leave nothing in /var/cache/kvfs.
        cmd = kvfs_cmd() + ["mount", "-d", "--log", self.log, "-o",
                            f"orphan_grace=2,cache_dir={self.mnt}.cache", self.url, self.mnt]
        subprocess.run(cmd, check=True, timeout=120)
        if not os.path.ismount(self.mnt):
            raise RuntimeError(f"{self.mnt} is not a mountpoint after `kvfs mount`")
        self.mounted = True
        self.pid = self._daemon_pid()
        return self

    def _daemon_pid(self) -> int | None:
        pat = re.compile(r" kvfs\[(\d+)\] INFO kvfs\.mount: .* mounted at "
                         + re.escape(self.mnt) + r" \(")
        pid = None
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            for line in f:
                m = pat.search(line)
                if m:
                    pid = int(m.group(1))
        return pid if pid is not None and self._daemon_alive(pid) else None

    def _daemon_alive(self, pid: int) -> bool:
        """Is ``pid`` still our daemon (not a recycled PID)?"""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return self.mnt.encode() in f.read().split(b"\0")
        except OSError:
            return False

    def _wait_daemon(self) -> None:
        pid = self.pid
        if pid is None:
            return
        end = time.monotonic() + DAEMON_EXIT_TIMEOUT
        while self._daemon_alive(pid):
            if time.monotonic() > end:
                print(f"warning: mount daemon {pid} still running {DAEMON_EXIT_TIMEOUT}s "
                      f"after unmount; stopping it (see {self.log})", file=sys.stderr)
                for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                    stop = time.monotonic() + grace
                    while self._daemon_alive(pid) and time.monotonic() < stop:
                        time.sleep(0.1)
                    if not self._daemon_alive(pid):
                        break
                break
            time.sleep(0.1)
        self.pid = None

    def __exit__(self, *exc: object) -> None:
        try:
            self._unmount()
        finally:
            self._wait_daemon()

    def _close_own_fds(self) -> None:
        """Close descriptors this process still holds on the mount: a check interrupted
        (timeout, SIGTERM) between open() and the assignment of its result leaks one, and
        it would keep the mount busy and its daemon alive."""
        inside = self.mnt + os.sep
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                if os.readlink(f"/proc/self/fd/{name}").startswith(inside):
                    os.close(int(name))

    def _unmount(self) -> None:
        if not os.path.ismount(self.mnt):
            return
        if os.getcwd().startswith(self.mnt + os.sep):
            os.chdir("/")
        self._close_own_fds()
        for _attempt in range(3):
            r = subprocess.run(kvfs_cmd() + ["umount", self.mnt], timeout=180,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode == 0 or not os.path.ismount(self.mnt):
                break
            time.sleep(1)
        if r.returncode != 0 and os.path.ismount(self.mnt):
            print(f"kvfs umount failed ({r.stdout.strip()}); detaching lazily", file=sys.stderr)
            subprocess.run(kvfs_cmd() + ["umount", "-z", self.mnt], timeout=60)
            if os.path.ismount(self.mnt):
                subprocess.run(["umount", "-l", self.mnt], timeout=60)


# --------------------------------------------------------------------------- running

def load_checks() -> list:
    for path in sorted(glob.glob(os.path.join(HERE, "checks_*.py"))):
        importlib.import_module(os.path.splitext(os.path.basename(path))[0])
    return list(lib.CHECKS)


def selected(name: str, patterns: list[str]) -> bool:
    if not patterns:
        return True
    for pat in patterns:
        if any(c in pat for c in "*?["):
            if fnmatch.fnmatch(name, pat):
                return True
        elif pat in name:
            return True
    return False


def _alarm(signum, frame):  # noqa: ANN001
    raise lib.CheckTimeout(f"check took over {CHECK_TIMEOUT}s")


class Tally:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.stop = False


def run_one(tally: Tally, root: str, name: str, fn, t: lib.T,  # noqa: ANN001
            args: argparse.Namespace) -> None:
    """Run one check (or remount verification) and report its failures."""
    old_cwd = os.getcwd()
    old_umask = os.umask(0)
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CHECK_TIMEOUT)
    try:
        fn(t)
    except Exception as e:  # noqa: BLE001 - a crashed check is a failure
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{os.path.basename(fr.filename)}:{fr.lineno}"
                      for fr in reversed(tb) if fr.filename.startswith(HERE)), "?")
        t.failures.append(f"check aborted at {where}: {type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.umask(old_umask)
        os.chdir(old_cwd)
    took = time.monotonic() - start
    tally.passed += t.passed
    tally.failed += len(t.failures)
    for msg in t.failures:
        print(f"FAIL {name}: {msg}", flush=True)
    if args.verbose:
        print(f"  {name}: {t.passed} passed, {len(t.failures)} failed ({took:.1f}s)",
              flush=True)
    try:
        os.stat(root)
    except OSError as e:
        print(f"FAIL {name}: the filesystem under test stopped answering: {e}", flush=True)
        tally.failed += 1
        tally.stop = True
        return
    if t.failures and not args.keep_going:
        print(f"stopping after {name} (use --keep-going to run everything)", flush=True)
        tally.stop = True


def run_checks(root: str, args: argparse.Namespace, tally: Tally) -> str:
    """Run the selected checks in a new directory under root; return that directory."""
    checks = [(n, f) for n, f in load_checks() if selected(n, args.k)]
    base = tempfile.mkdtemp(prefix="posix.", dir=root)
    os.chmod(base, 0o755)
    for i, (name, fn) in enumerate(checks):
        d = os.path.join(base, f"c{i:03d}")
        os.mkdir(d)
        os.chmod(d, 0o755)
        run_one(tally, root, name, fn, lib.T(name, d), args)
        if tally.stop:
            break
    return base


def run_verifications(root: str, args: argparse.Namespace, tally: Tally) -> None:
    for name, fn, d in lib.AFTER_REMOUNT:
        run_one(tally, root, f"{name} (after remount)", fn, lib.T(name, d), args)
        if tally.stop:
            break


def _terminated(signum, frame):  # noqa: ANN001
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=sorted(ENGINES), default="embedded",
                    help="metadata engine of the fresh volume (default embedded)")
    ap.add_argument("--url", help="mount this existing META_URL instead of a fresh volume")
    ap.add_argument("--dir", help=argparse.SUPPRESS)  # run against an existing directory
    ap.add_argument("--keep-going", action="store_true",
                    help="run all checks even after one fails")
    ap.add_argument("-k", action="append", default=[], metavar="PATTERN",
                    help="run only checks whose name contains PATTERN (or matches the "
                         "glob); repeatable")
    ap.add_argument("--keep-files", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per check")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("posix-tests must run as root", file=sys.stderr)
        return 2

    # a plain kill (SIGTERM) still unmounts and stops the engine's servers (finally blocks)
    signal.signal(signal.SIGTERM, _terminated)
    tally = Tally()
    if args.dir:
        base = run_checks(os.path.abspath(args.dir), args, tally)
        try:
            if not tally.stop:
                run_verifications(os.path.abspath(args.dir), args, tally)
        finally:
            if not args.keep_files:
                shutil.rmtree(base, ignore_errors=True)
    else:
        tmp = tempfile.mkdtemp(prefix="kvfs-posix.")
        os.chmod(tmp, 0o755)  # other users must reach the mountpoint
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        log = os.path.join(tmp, "mount.log")
        try:
            # the stack stops what the engine started (etcd) after the last unmount
            with contextlib.ExitStack() as stack:
                url = args.url or ENGINES[args.engine](tmp, stack)
                with Mount(url, mnt, log):
                    base = run_checks(mnt, args, tally)
                # a volatile engine starts empty on every mount: nothing to verify
                if lib.AFTER_REMOUNT and not tally.stop and not url.startswith("mem:"):
                    with Mount(url, mnt, log):
                        run_verifications(mnt, args, tally)
                        if not args.keep_files:
                            shutil.rmtree(base, ignore_errors=True)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL setup: {type(e).__name__}: {e}", flush=True)
            tally.failed += 1
        finally:
            if tally.failed and os.path.exists(log):
                with open(log, errors="replace") as f:
                    errs = [ln.rstrip() for ln in f if " ERROR " in ln or "Traceback" in ln]
                if errs:
                    print(f"mount log has {len(errs)} error lines, e.g.: {errs[0]}")
            if os.path.ismount(mnt):
                print(f"warning: {mnt} is still mounted; keeping {tmp}", file=sys.stderr)
            elif args.keep_files:
                print(f"kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    passed, failed = tally.passed, tally.failed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
