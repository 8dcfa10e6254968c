"""One ``/etc/nginx`` shared by three hosts: the scenario kvfs exists for, end to end.

Three emulated hosts are network namespaces on one bridge (``tests/raft_netns.py``).  Each
host runs

* a member of the volume's engine, listening on the host's address: a member of a
  3-member etcd cluster (Debian's etcd-server), or in the second variant a ``kvfs raft
  serve`` member (``tests/raft_cluster.py`` ``BridgedCluster``);
* a kvfs mount of the volume whose daemon runs in the host's namespace (``nsenter --net``,
  so the mount stays visible here) and whose META_URL lists the host's own member first;
* nginx, in the host's namespace, serving on port 80 of the host's address from the config
  tree ``MOUNTPOINT/nginx`` -- its pid file, logs and temporary directories are relative
  to a prefix (``-p``) in the host's own scratch directory, so the shared config holds
  nothing host-specific and nothing touches the system's ``/etc/nginx`` or
  ``/var/log/nginx``;
* ``kvfs watch MOUNTPOINT/nginx`` in the host's namespace, whose check records the
  generation every file of the tree carries and then runs ``nginx -t``, and whose reload
  runs ``nginx -s reload``.

Every file of a deployed tree carries its generation (``# generation N``); the served body
is ``generation N from ADDRESS``.  Steps:

(a) a new tree is deployed on host 1 with ``kvfs deploy`` (staged inside the volume, then
    swapped in with one ``RENAME_EXCHANGE``) and every host validates, reloads and serves
    it, fetched over HTTP from the root namespace; the end-to-end rollout time
    (deploy start to every host serving the new body) is printed for each of
    ``KVFS_SHARED_ETC_DEPLOYS`` deploys (default 3), with their minimum, median and
    maximum -- the acceptance figure is 1 s, printed, not asserted;
(b) a broken tree deployed with ``--check 'nginx -t ...'`` is refused on host 1 and nothing
    changes anywhere; deployed without a check, it is rejected on every host: no reload
    runs, every nginx keeps serving the previous body, and ``kvfs status MOUNTPOINT
    --json`` shows the failed check per host;
(c) host 3 dies: its mount daemon is killed with SIGKILL, its watcher and nginx (master and
    workers) too, and so is its engine member (etcd member or Raft member: the host is
    gone, not only its mount); its watch record goes with its lease, and the two others
    keep serving and take the next deploy;
(d) ``kvfs restore MOUNTPOINT/nginx --at @TIME`` on host 1 brings back the tree as it was
    before the broken deploy (from the volume's history); the live hosts validate, reload
    and serve it again (its rollout time is printed too).

Throughout, no host's check ever sees a partial tree: each check run records one
generation across all files, and the file set of that generation.  (A directory restore
rewrites its files one by one, each atomically; the watchers' quiet window covers it.)

Both variants together take about a minute (more with more deploys).  Needs root,
/dev/fuse, iproute2, nsenter, nginx (``/usr/sbin/nginx``, Debian package
``nginx``, installed by ``install.sh``) and etcd-server; a missing one fails the test.
Every process is ended by its PID, mounts are unmounted and namespaces deleted also when
a step fails.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import waiting
from etcd_cluster import ETCD, require_etcd, scratch_dir
from mounting import KVFS, Mount, kvfs
from raft_cluster import BridgedCluster
from raft_netns import BridgedHosts

pytestmark = pytest.mark.mount

NGINX = "/usr/sbin/nginx"
NSENTER = "/usr/bin/nsenter"
HOSTS = ("h1", "h2", "h3")
QUIET_MS = 150  # the watchers' quiet window: a deploy is one rename, so little is needed
LEASE_TTL = 3  # the watchers' lease: a dead host's record goes within this
DEPLOYS = int(os.environ.get("KVFS_SHARED_ETC_DEPLOYS", "3"))  # timed deploys in step (a)
WAIT = 60.0  # bound on any wait: catches hangs only


def require_tools() -> None:
    for tool, package in ((NGINX, "nginx"), (NSENTER, "util-linux")):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing: install {package} (apt-get install -y "
                        f"{package}, or run ./install.sh deps); the shared-/etc scenario "
                        "test needs it", pytrace=False)


def wait_until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    waiting.wait_until(pred, what, timeout)


# -- the deployed tree -----------------------------------------------------------------------

TREE_FILES = ("./conf.d/headers.conf", "./conf.d/site.conf", "./nginx.conf")


def write_tree(dest: Path, gen: int, *, broken: bool = False) -> None:
    """A complete nginx config of generation ``gen`` in ``dest`` (created).  Every path
    in it is relative: to the config's directory (includes) or to nginx's ``-p`` prefix
    (pid, logs, temporary files), which each host chooses.  ``broken`` adds a directive
    nginx does not know, so ``nginx -t`` fails."""
    (dest / "conf.d").mkdir(parents=True)
    (dest / "nginx.conf").write_text(
        f"# generation {gen}\n"
        "worker_processes 1;\n"
        "error_log logs/error.log;\n"
        "pid logs/nginx.pid;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "    access_log off;\n"
        "    client_body_temp_path tmp/body;\n"
        "    proxy_temp_path tmp/proxy;\n"
        "    fastcgi_temp_path tmp/fastcgi;\n"
        "    uwsgi_temp_path tmp/uwsgi;\n"
        "    scgi_temp_path tmp/scgi;\n"
        "    include conf.d/*.conf;\n"
        "}\n")
    (dest / "conf.d" / "headers.conf").write_text(
        f"# generation {gen}\nadd_header X-Generation {gen};\n")
    (dest / "conf.d" / "site.conf").write_text(
        f"# generation {gen}\n"
        "server {\n"
        "    listen 80;\n"
        f"    {'no_such_directive on;' if broken else ''}\n"
        "    location / {\n"
        "        default_type text/plain;\n"
        f'        return 200 "generation {gen} from $server_addr\\n";\n'
        "    }\n"
        "}\n")


def source(base: Path, gen: int, *, broken: bool = False) -> Path:
    """A local directory holding the tree of generation ``gen`` (made once)."""
    src = base / "src" / f"{gen}{'-broken' if broken else ''}"
    if not src.exists():
        write_tree(src, gen, broken=broken)
    return src


def start_deploy(host: Host, src: Path, *flags: str) -> subprocess.Popen[str]:
    """``kvfs deploy SRC MOUNTPOINT/nginx`` on ``host``, in the background."""
    return subprocess.Popen([*host.wrap, *KVFS, "deploy", *flags, str(src),
                             str(host.mountpoint / "nginx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], status: int = 0) -> str:
    """Wait for a kvfs command; its output (stdout, or stderr when ``status`` is not 0).
    (After the swap a deploy waits a grace period before removing the old tree.)"""
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == status, f"{proc.args!r} exited with {proc.returncode}: {err}"
    return (out if status == 0 else err).strip()


# -- one host --------------------------------------------------------------------------------


@dataclass
class Host:
    """What runs on one emulated host besides its engine member (module docstring)."""

    name: str
    addr: str
    netns: str
    base: Path
    mount: Mount | None = None
    nginx: subprocess.Popen[bytes] | None = None
    watcher: subprocess.Popen[bytes] | None = None
    prefix: Path = field(init=False)
    check_log: Path = field(init=False)
    reload_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = self.base / "nginx-prefix"
        for d in ("logs", "tmp"):
            (self.prefix / d).mkdir(parents=True)
        self.check_log = self.base / "check.log"
        self.reload_log = self.base / "reload.log"

    @property
    def wrap(self) -> list[str]:
        """Runs a program in this host's network namespace, in the root mount namespace
        (``ip netns exec`` would give it a mount namespace of its own)."""
        return [NSENTER, f"--net=/run/netns/{self.netns}"]

    @property
    def mountpoint(self) -> Path:
        return self.base / "mnt"

    @property
    def conf(self) -> Path:
        return self.mountpoint / "nginx" / "nginx.conf"

    def nginx_argv(self, *args: str, conf: str = "") -> list[str]:
        """nginx with this host's prefix, on ``conf`` (default: the mounted tree's)."""
        return [NGINX, "-p", f"{self.prefix}/", "-e", str(self.prefix / "logs" / "error.log"),
                "-c", conf or str(self.conf), *args]

    def start_mount(self, url: str) -> None:
        self.mount = Mount(url, self.mountpoint, log=self.base / "mount.log", wrap=self.wrap)

    def start_nginx(self) -> None:
        with open(self.base / "nginx.out", "ab") as out:
            self.nginx = subprocess.Popen([*self.wrap, *self.nginx_argv("-g", "daemon off;")],
                                          stdout=out, stderr=subprocess.STDOUT)

    def start_watcher(self) -> None:
        check = self.base / "check.sh"
        reload = self.base / "reload.sh"
        nginx = " ".join(f"'{a}'" for a in self.nginx_argv())
        # One line per run, written at once: the revision, then every file of the tree
        # with its generation.
        check.write_text(
            "#!/bin/sh\n"
            'line=$KVFS_WATCH_REVISION\n'
            'for f in $(cd "$KVFS_WATCH_PATH" && find . -type f | sort); do\n'
            '    line="$line $f=$(sed -n "s/^# generation //p" "$KVFS_WATCH_PATH/$f")"\n'
            "done\n"
            f'echo "$line" >> {self.check_log}\n'
            f"exec {nginx} -t -q\n")
        reload.write_text("#!/bin/sh\n"
                          f'echo "$KVFS_WATCH_REVISION" >> {self.reload_log}\n'
                          f"exec {nginx} -s reload\n")
        with open(self.base / "watch.log", "ab") as out:
            self.watcher = subprocess.Popen(
                [*self.wrap, *KVFS, "watch", str(self.mountpoint / "nginx"),
                 "--check", f"/bin/sh {check}", "--reload", f"/bin/sh {reload}",
                 "--quiet-ms", str(QUIET_MS), "--host", self.name,
                 "--lease-ttl", str(LEASE_TTL), "--timeout", "20"],
                stdout=out, stderr=subprocess.STDOUT)

    def checks(self) -> list[tuple[int, dict[str, int]]]:
        """Every check run so far: (revision, {file: generation})."""
        runs = []
        text = self.check_log.read_text() if self.check_log.exists() else ""
        for line in text.splitlines()[:text.count("\n")]:  # whole lines only
            rev, *files = line.split(" ")
            runs.append((int(rev), {f: int(g) if g else -1
                                    for f, _, g in (x.partition("=") for x in files)}))
        return runs

    def reloads(self) -> int:
        return len(self.reload_log.read_text().splitlines()) if self.reload_log.exists() else 0

    def get(self, timeout: float = 1.0) -> str | None:
        """The body nginx serves on this host's address, None if it does not answer."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{self.addr}/", timeout=timeout) as r:
                return str(r.read().decode())
        except (OSError, urllib.error.URLError):
            return None

    def kill(self) -> None:
        """The host dies: SIGKILL of its watcher, of nginx's master and workers, and of its
        mount daemon (whose dead mount is then cleared)."""
        if self.watcher is not None:
            self.watcher.kill()
            self.watcher.wait(10)
        if self.nginx is not None:
            workers = children(self.nginx.pid)
            self.nginx.kill()
            kill_all(workers)
            self.nginx.wait(10)
        assert self.mount is not None
        self.mount.kill9()

    def stop(self) -> None:
        """Best-effort teardown (a failed step may have left any part running)."""
        if self.watcher is not None and self.watcher.poll() is None:
            self.watcher.send_signal(signal.SIGTERM)
            try:
                self.watcher.wait(15)
            except subprocess.TimeoutExpired:
                self.watcher.kill()
                self.watcher.wait()
        if self.nginx is not None and self.nginx.poll() is None:
            workers = children(self.nginx.pid)
            self.nginx.send_signal(signal.SIGTERM)  # fast shutdown: the master ends workers
            try:
                self.nginx.wait(15)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
                kill_all(workers)
        if self.mount is not None:
            self.mount.cleanup()


def kill_all(pids: list[int]) -> None:
    """SIGKILL each of ``pids`` that still runs (nginx's workers outlive a killed master)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (nginx's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


# -- the engines -----------------------------------------------------------------------------


@dataclass
class Engine:
    """The volume's engine, one member per host: ``url(host)`` is the META_URL that host
    mounts (its own member first), ``kill(host)`` SIGKILLs that host's member."""

    kind: str
    net: BridgedHosts
    url: Callable[[str], str]
    kill: Callable[[str], None]


def local_first(hosts: tuple[str, ...], first: str) -> list[str]:
    return [first, *(h for h in hosts if h != first)]


@contextmanager
def etcd_engine(base: Path) -> Iterator[Engine]:
    """A 3-member etcd cluster, one member per host on the host's address (fixed ports:
    each namespace has no other listener), with election timing generous enough for a
    loaded two-core machine."""
    require_etcd()
    net = BridgedHosts(HOSTS)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    data = scratch_dir("shared-etc")
    try:
        cluster = ",".join(f"{h}=http://{net.addr[h]}:2380" for h in HOSTS)
        for h in HOSTS:
            a = net.addr[h]
            argv = [NSENTER, f"--net=/run/netns/{net.ns[h]}", ETCD, "--name", h,
                    "--data-dir", str(data / h),
                    "--listen-client-urls", f"http://{a}:2379",
                    "--advertise-client-urls", f"http://{a}:2379",
                    "--listen-peer-urls", f"http://{a}:2380",
                    "--initial-advertise-peer-urls", f"http://{a}:2380",
                    "--listen-metrics-urls", f"http://{a}:2381",
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--heartbeat-interval", "100", "--election-timeout", "1000",
                    "--logger", "zap", "--log-outputs", str(data / f"{h}.log")]
            procs[h] = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def healthy(h: str) -> bool:
            assert procs[h].poll() is None, f"etcd {h} exited; see {data / f'{h}.log'}"
            try:
                with opener.open(f"http://{net.addr[h]}:2381/health", timeout=1) as r:
                    return bool(json.loads(r.read()).get("health") == "true")
            except OSError:
                return False

        for h in HOSTS:
            wait_until(functools.partial(healthy, h), f"etcd member {h} healthy")

        def kill(h: str) -> None:
            procs[h].kill()
            procs[h].wait(10)

        prefix = f"shared-etc-{secrets.token_hex(4)}"
        yield Engine("etcd", net, lambda host: "etcd://" + ",".join(
            f"{net.addr[h]}:2379" for h in local_first(HOSTS, host)) + f"/{prefix}", kill)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        net.delete()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def raft_engine(base: Path) -> Iterator[Engine]:
    """A 3-member Raft store, one ``kvfs raft serve`` member per host (BridgedCluster),
    with a 2-4 s election timeout."""
    (base / "raft").mkdir()
    with BridgedCluster(base / "raft", f"shared-etc-{secrets.token_hex(4)}", HOSTS,
                        election_ticks=20) as cluster:
        yield Engine("raft", cluster.net, lambda host: "raft://" + ",".join(
            cluster.endpoint(h) for h in local_first(HOSTS, host)) + "/shared-etc",
            lambda h: cluster.kill(h))


# -- the scenario ----------------------------------------------------------------------------


def rollout(hosts: list[Host], gen: int) -> tuple[float, dict[str, float]]:
    """Poll every host's nginx (from the root namespace) until it serves generation
    ``gen``, and the first host's mount until its tree is of ``gen``: the moment the swap
    was seen there, and the moment each host first served ``gen`` (its new worker
    answered), in monotonic seconds."""
    swapped = 0.0
    seen: dict[str, float] = {}
    deadline = time.monotonic() + WAIT
    while len(seen) < len(hosts):
        if not swapped:
            try:
                if hosts[0].conf.read_text().startswith(f"# generation {gen}\n"):
                    swapped = time.monotonic()
            except OSError:
                pass
        for h in hosts:
            if h.name not in seen:
                body = h.get(timeout=0.5)
                if body is not None and body.startswith(f"generation {gen} "):
                    seen[h.name] = time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"generation {gen} not served by "
                                 f"{sorted({h.name for h in hosts} - set(seen))} "
                                 f"within {WAIT} s")
        time.sleep(0.005)
    return swapped or min(seen.values()), seen


def steady(hosts: list[Host], gen: int, rounds: int = 5) -> None:
    """Wait until every host answered generation ``gen`` ``rounds`` times in a row: for a
    moment after a reload nginx's old worker still answers next to the new one."""
    in_row = 0
    deadline = time.monotonic() + WAIT
    while in_row < rounds:
        ok = all((h.get() or "").startswith(f"generation {gen} ") for h in hosts)
        in_row = in_row + 1 if ok else 0
        assert time.monotonic() < deadline, f"generation {gen} not served steadily"
        time.sleep(0.02)


def watchers(host: Host) -> dict[str, dict[str, object]]:
    """``kvfs status`` of ``host``'s mount, run in its namespace: the records by host."""
    res = subprocess.run([*host.wrap, *KVFS, "status", str(host.mountpoint), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return {str(w["host"]): w for w in json.loads(res.stdout)["watchers"]}


def assert_whole_trees(hosts: list[Host]) -> int:
    """Every check run on every host saw one generation across all files, and all of its
    files; the number of runs."""
    runs = 0
    for h in hosts:
        for rev, files in h.checks():
            runs += 1
            assert sorted(files) == list(TREE_FILES), (h.name, rev, files)
            assert len(set(files.values())) == 1, \
                f"{h.name} checked a partial tree at revision {rev}: {files}"
    return runs


def last_check(host: Host) -> tuple[int, int]:
    """(revision, generation) of ``host``'s newest check run; (0, 0) before the first."""
    runs = host.checks()
    if not runs:
        return 0, 0
    rev, files = runs[-1]
    return rev, min(files.values(), default=-1)


def recorded(where: Host, hosts: list[Host], result: str) -> bool:
    """Whether ``kvfs status`` (on ``where``) shows, for every host of ``hosts``, the
    revision of its newest check run with ``result``."""
    recs = watchers(where)
    return all(h.name in recs and recs[h.name]["revision"] == last_check(h)[0]
               and recs[h.name]["result"] == result for h in hosts)


def timed_rollout(first: Host, live: list[Host], gen: int, label: str,
                  *argv: str) -> tuple[float, float]:
    """Run ``kvfs ARGV`` (a deploy or a restore) on ``first`` and wait until every live
    host serves generation ``gen``; print the times, and return the rollout time from the
    command's start and from the new tree seen on ``first``."""
    t0 = time.monotonic()
    proc = subprocess.Popen([*first.wrap, *KVFS, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    swapped, seen = rollout(live, gen)
    steady(live, gen)
    total = max(seen.values()) - t0
    per_host = ", ".join(f"{n} {t - t0:.3f} s" for n, t in sorted(seen.items()))
    out = finish(proc)
    what = out[out.index("swap "):] if "swap " in out else f"{len(out.splitlines())} restored"
    print(f"{label}: rollout of generation {gen} to {len(live)} hosts {total:.3f} s "
          f"({per_host}; new tree seen on {first.name} at {swapped - t0:.3f} s; {what})")
    return total, max(seen.values()) - swapped


def timed_deploy(src: Path, first: Host, live: list[Host], gen: int,
                 label: str) -> tuple[float, float]:
    """Deploy ``gen`` on ``first`` with ``kvfs deploy`` (:func:`timed_rollout`)."""
    return timed_rollout(first, live, gen, label, "deploy", str(source(src, gen)),
                         str(first.mountpoint / "nginx"))


@pytest.fixture(params=["etcd", "raft"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    require_tools()
    make = etcd_engine if request.param == "etcd" else raft_engine
    with make(tmp_path) as e:
        yield e


def test_shared_etc_nginx_on_three_hosts(engine: Engine, tmp_path: Path) -> None:
    net = engine.net
    hosts = [Host(h, net.addr[h], net.ns[h], tmp_path / h) for h in HOSTS]
    h1, h2, h3 = hosts
    with ExitStack() as stack:
        for h in hosts:
            stack.callback(h.stop)
        kvfs("format", engine.url("h1"), "shared-etc")
        t0 = time.monotonic()
        for h in hosts:
            h.start_mount(engine.url(h.name))
        print(f"{engine.kind}: 3 mounts up in {time.monotonic() - t0:.1f} s")
        src = tmp_path
        gen = 1
        finish(start_deploy(h1, source(src, gen)))
        for h in hosts:
            wait_until(h.conf.exists, f"the tree on {h.name}")
            h.start_nginx()
        steady(hosts, gen)
        for h in hosts:
            h.start_watcher()
        # On start each watcher checks and reloads what is there once.
        wait_until(lambda: all(h.reloads() == 1 for h in hosts), "the watchers' first reload")

        # (a) A new tree deployed on host 1 is validated, reloaded and served everywhere.
        times: list[tuple[float, float]] = []
        for _ in range(DEPLOYS):
            gen += 1
            times.append(timed_deploy(src, h1, hosts, gen, f"{engine.kind} (a)"))
            wait_until(lambda: recorded(h1, hosts, "ok"),
                       f"every host's record of generation {gen} applied")
            for h in hosts:
                assert last_check(h)[1] == gen and h.reloads() == 1 + len(times)
        for what, figures in (("deploy start (acceptance: 1 s)", sorted(t for t, _ in times)),
                              ("the swap", sorted(t for _, t in times))):
            print(f"{engine.kind} (a): {len(figures)} deploys, from {what} to 3 hosts "
                  f"serving: min {figures[0]:.3f} s, median {figures[len(figures) // 2]:.3f} "
                  f"s, max {figures[-1]:.3f} s")
        applied = {h.name: last_check(h)[0] for h in hosts}
        good, reloads = gen, 1 + len(times)
        good_time = time.time()  # the history's clock: the hosts share this machine's

        # (b) A broken tree checked before the swap is refused, and nothing changes; one
        # deployed without a check is rejected everywhere, every nginx keeps the old one.
        gen += 1
        check = " ".join(h1.nginx_argv("-t", "-q", conf="{}/nginx.conf"))
        err = finish(start_deploy(h1, source(src, gen, broken=True), "--check", check), 2)
        assert "check failed" in err and "nothing changed" in err, err
        assert all(len(h.checks()) == reloads for h in hosts)  # no watcher acted
        finish(start_deploy(h1, source(src, gen, broken=True)))
        wait_until(lambda: all(last_check(h)[1] == gen for h in hosts),
                   f"every host's check of generation {gen}")
        wait_until(lambda: recorded(h1, hosts, "check failed"),
                   "every host's record of the failed check")
        recs = watchers(h1)
        print(f"{engine.kind} (b): " + kvfs("status", str(h1.mountpoint)).stdout)
        for h in hosts:
            rec = recs[h.name]
            assert rec["path"] == "/nginx" and rec["reload"] == "skipped", rec
            assert str(rec["check"]).startswith("failed: exit status"), rec
            assert rec["applied"] == applied[h.name], rec
            assert h.reloads() == reloads and len(h.checks()) == reloads + 1
            assert (h.get() or "").startswith(f"generation {good} from {h.addr}")

        # (c) Host 3 dies, engine member and all; the others serve and take the next deploy.
        h3.kill()
        engine.kill("h3")
        assert h3.get(timeout=0.5) is None
        gen += 1
        timed_deploy(src, h1, [h1, h2], gen, f"{engine.kind} (c) with h3 dead")
        wait_until(lambda: "h3" not in watchers(h1), "the dead host's record to go")
        wait_until(lambda: recorded(h1, [h1, h2], "ok"), "the live hosts' records")
        assert sorted(watchers(h2)) == ["h1", "h2"]
        for h in (h1, h2):
            assert last_check(h)[1] == gen and h.reloads() == reloads + 1

        # (d) The tree as it was before the broken deploy, restored from the volume's
        # history on host 1: the live hosts validate, reload and serve it again.
        timed_rollout(h1, [h1, h2], good, f"{engine.kind} (d) restore", "restore",
                      str(h1.mountpoint / "nginx"), "--at", f"@{good_time:.6f}")
        wait_until(lambda: recorded(h1, [h1, h2], "ok"), "the live hosts' records")
        for h in (h1, h2):
            assert last_check(h)[1] == good and h.reloads() == reloads + 2

        runs = assert_whole_trees(hosts)
        print(f"{engine.kind}: {runs} check runs on 3 hosts, each saw one whole tree")
