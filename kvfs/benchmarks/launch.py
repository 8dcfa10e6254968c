"""Processes a benchmark starts for itself: one etcd on loopback, FUSE daemons, their logs.

Every process is started through a :class:`Processes` owner, in a session of its own (so a
Ctrl-C on the terminal reaches only the benchmark, which then stops them in order), and
:meth:`Processes.stop_all` ends each one by its PID: SIGTERM, then SIGKILL after a grace
period.  Nothing here finds or signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ETCD_CANDIDATES = ("/usr/bin/etcd",)


class LaunchError(RuntimeError):
    """A needed program is missing, or a server did not come up."""


# Ports for servers are taken from below the kernel's ephemeral range: a port inside it,
# found free by binding port 0 and letting go, can be claimed by an outgoing connection (a
# client's channel, a reconnect) in the moment before the server binds it, and the server
# then exits with "address already in use".
_LOWEST_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports for servers to listen on: below the ephemeral range,
    free on every address now, and never handed out before by this process."""
    top = _ephemeral_start()
    if top - _LOWEST_PORT < 1_000:
        raise LaunchError(f"too few ports below the ephemeral range, which starts at {top}")
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(_LOWEST_PORT, top)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            ports.append(port)
    return ports


def free_port() -> int:
    """One port, as :func:`free_ports`."""
    return free_ports(1)[0]


def find_program(name: str, *candidates: str, hint: str) -> str:
    """The path of ``name``: the first executable candidate, else ``name`` on PATH;
    LaunchError naming ``hint`` (how to install it) when there is none."""
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"{name} is missing ({hint})")
    return found


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or '' if it is unreadable."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Processes:
    """The processes a run started, stopped in reverse order of starting by
    :meth:`stop_all` (or one at a time by :meth:`stop`)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 30) -> None:
        """SIGTERM, then SIGKILL once ``grace`` seconds have passed; forgets ``proc``."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


class Etcd:
    """One etcd member on 127.0.0.1 with its data directory in ``base`` (on disk, as a
    real deployment has it), sized for a benchmark that stores blocks in it: a backend
    quota of 16 GiB and a snapshot every 10,000 entries, so the raft log of 1 MiB block
    values does not pile up in memory (docs/etcd.md)."""

    def __init__(self, procs: Processes, base: Path) -> None:
        self.binary = find_program("etcd", *ETCD_CANDIDATES,
                                   hint="apt-get install etcd-server")
        self.base = base
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log = base / "etcd.log"
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://127.0.0.1:{self.client_port}"
        argv = [self.binary, "--name", "bench", "--data-dir", str(base / "etcd-data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bench={peer}", "--initial-cluster-state", "new",
                "--quota-backend-bytes", str(16 << 30), "--snapshot-count", "10000",
                "--logger", "zap", "--log-outputs", str(self.log)]
        self.proc = procs.start(argv, base / "etcd.stdout")
        self._wait_healthy()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        first = out.stdout.splitlines()[0] if out.stdout else "etcd"
        return first.replace("etcd Version: ", "etcd ")

    def _wait_healthy(self, timeout: float = 60) -> None:
        """Wait until the member answers ``/health`` as healthy (it has elected itself)."""
        deadline = time.monotonic() + timeout
        url = f"http://{self.endpoint}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"etcd exited with status {self.proc.returncode}: "
                                  f"{log_tail(self.log, 5)}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise LaunchError(f"etcd on {self.endpoint} was not healthy within {timeout:.0f} s")


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """While the run lasts, a SIGTERM is handled as a SIGINT, so a terminated run cleans
    up like an interrupted one.  Re-raising it as SIGINT (rather than raising
    KeyboardInterrupt in the handler) lets trio deliver it safely while an in-process
    fill runs inside ``trio.run``, whose own SIGINT handler is then installed; where
    SIGINT has no Python handler (a background job ignores it) the handler raises
    KeyboardInterrupt itself."""
    def as_sigint(signum: int, frame: object) -> None:
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)

    try:
        old = signal.signal(signal.SIGTERM, as_sigint)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
