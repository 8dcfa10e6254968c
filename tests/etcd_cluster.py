"""Real etcd servers for the tests: single members, a 3-member cluster, TLS and auth members.

Everything runs on 127.0.0.1 with free ports, in a temporary directory (on /dev/shm when it
exists, so fsync is cheap).  :func:`require_etcd` fails -- never skips -- when the etcd
binaries are missing.  Each member also serves ``/health`` on a plain-HTTP metrics port, so
health checks need neither TLS nor credentials.

Invariant: every process started here is registered with an :class:`EtcdProcesses` owner
whose ``stop_all`` (called from fixture finalizers) kills it; tests never leak servers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvfs.benchmarks.launch import free_port

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
ROOT_PASSWORD = "s3cret-Pa55word!"


def require_etcd() -> None:
    for binary in (ETCD, ETCDCTL):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: install etcd-server and etcd-client "
                        "(apt-get install -y etcd-server etcd-client); the etcd tests "
                        "need a real server", pytrace=False)


def scratch_dir(name: str) -> Path:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"kvfs-{name}-", dir=base))


@dataclass
class Member:
    """One etcd process (restartable with the same data directory)."""

    name: str
    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    tls: dict[str, Path] | None = None  # cacert, cert, key of the server
    extra: list[str] = field(default_factory=list)
    cluster: str = ""  # --initial-cluster; "" for a single member
    # More local addresses to serve clients on, besides 127.0.0.1: a veth address that a
    # network namespace reaches (tests/nemesis.py), so a "remote host" can be cut off.
    client_hosts: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def endpoint_on(self, host: str) -> str:
        """The client endpoint on one of :attr:`client_hosts`."""
        assert host in self.client_hosts, host
        return f"{host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def args(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        listen = [self.client_url] + [f"{scheme}://{h}:{self.client_port}"
                                      for h in self.client_hosts]
        args = [ETCD, "--name", self.name, "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", ",".join(listen),
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.cluster or f"{self.name}={self.peer_url}",
                "--initial-cluster-state", "new",
                "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}",
                "--logger", "zap", "--log-outputs", str(self.data_dir / "etcd.log")]
        if self.tls:
            args += ["--client-cert-auth", "--trusted-ca-file", str(self.tls["cacert"]),
                     "--cert-file", str(self.tls["cert"]), "--key-file", str(self.tls["key"])]
        return args + self.extra

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health",
                                        timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except OSError:
            return False

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of this member's log, kept in a failure's message because
        the log's directory is removed when the session's servers are cleaned up."""
        try:
            text = (self.data_dir / "etcd.log").read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}; "
                                   f"the end of its log:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout} s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def etcdctl(self, *args: str, stdin: str | None = None, user: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [ETCDCTL, "--endpoints", self.client_url, "--command-timeout=10s"]
        if self.tls:
            raise NotImplementedError("etcdctl against the TLS member is not needed")
        env = dict(os.environ, ETCDCTL_API="3")
        if user:
            env["ETCDCTL_USER"] = user  # user:password in the environment, not argv
        return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True,
                              env=env, check=check, timeout=30)


class EtcdProcesses:
    """Owns members and their directories; :meth:`stop_all` cleans everything up."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.dirs: list[Path] = []

    def member(self, name: str, *, tls: dict[str, Path] | None = None,
               extra: list[str] | None = None, start: bool = True,
               fast: bool = True, client_hosts: tuple[str, ...] = ()) -> Member:
        """A single-member cluster.  ``fast`` shortens raft timing so that 1 s leases work;
        ``client_hosts`` are more local addresses it serves clients on."""
        require_etcd()
        d = scratch_dir(name)
        self.dirs.append(d)
        timing = ["--heartbeat-interval", "10", "--election-timeout", "100"] if fast else []
        m = Member(name, d, tls=tls, extra=timing + (extra or []), client_hosts=client_hosts)
        self.members.append(m)
        if start:
            m.start()
            m.wait_healthy()
        return m

    def cluster(self, size: int = 3, *, client_hosts: tuple[str, ...] = (),
                extra: list[str] | None = None) -> list[Member]:
        """A static ``size``-member cluster, started and healthy; each member also serves
        clients on ``client_hosts`` and gets the ``extra`` flags."""
        require_etcd()
        d = scratch_dir("cluster")
        self.dirs.append(d)
        members = []
        for i in range(size):
            sub = d / f"m{i}"
            sub.mkdir()
            members.append(Member(f"m{i}", sub, extra=["--heartbeat-interval", "50",
                                                       "--election-timeout", "500",
                                                       *(extra or [])],
                                  client_hosts=client_hosts))
        spec = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for m in members:
            m.cluster = spec
            self.members.append(m)
            m.start()
        for m in members:
            m.wait_healthy()
        return members

    def stop_all(self) -> None:
        for m in self.members:
            try:
                m.kill()
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def enable_auth(member: Member, password: str = ROOT_PASSWORD) -> None:
    """Create ``root`` with ``password`` (passed on stdin) and turn authentication on."""
    member.etcdctl("user", "add", "root", "--interactive=false", stdin=password + "\n")
    member.etcdctl("user", "grant-role", "root", "root", check=False)
    member.etcdctl("auth", "enable")


# -- certificates ----------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


def make_cert(d: Path, ca: tuple[Path, Path], name: str, *, server: bool) -> tuple[Path, Path]:
    """A certificate signed by ``ca``: a server one (SAN 127.0.0.1, localhost) or a client."""
    ext = d / f"{name}.ext"
    if server:
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n")
    else:
        ext.write_text("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext),
             cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA
    other_cert: Path  # a client certificate signed by the unrelated CA
    other_key: Path


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d, "ca")
    server = make_cert(d, ca, "server", server=True)
    client = make_cert(d, ca, "client", server=False)
    other = make_ca(d, "otherca")
    other_client = make_cert(d, other, "otherclient", server=False)
    return Certs(ca[0], server[0], server[1], client[0], client[1], other[0],
                 other_client[0], other_client[1])


# -- fixtures (import them into a test module to use them) ------------------------------------


@pytest.fixture(scope="session")
def etcd_procs() -> Iterator[EtcdProcesses]:
    """The owner of every etcd process of the session; kills them all at the end."""
    procs = EtcdProcesses()
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def etcd_single(etcd_procs: EtcdProcesses) -> Member:
    """One shared single-member etcd; tests isolate themselves with unique prefixes."""
    return etcd_procs.member("single")


_counter = itertools.count()


def unique_prefix(tag: str = "t") -> str:
    """A prefix no other test of this session uses."""
    return f"{tag}{os.getpid()}-{next(_counter)}-{time.monotonic_ns() % 10**6}"
