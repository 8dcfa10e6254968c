"""fstab, mount(8) and systemd (issue 10, items 1 and 2), with real mounts.

* mount(8) runs ``/sbin/mount.fuse.kvfs`` (install.sh's link to the ``mount.kvfs`` console
  script) with its reset PATH and no HOME: ``mount -T FILE -a``, ``mount -T FILE MP``,
  ``umount MP``, a second ``mount -a`` that must not stack, ``mount MP`` over a dead
  mount, ``findmnt`` showing
  ``fuse.kvfs`` and the source as written (an etcd URL with several endpoints and a query
  included);
* a bad line (unknown option, missing volume, missing or open credentials file) fails with
  kvfs's one line and mounts nothing, and ``nofail`` makes ``mount -a`` succeed anyway;
* a credentials file gives the META_URL and the etcd password, which appear neither in any
  process's command line nor in the mount table (which shows the label);
* ``kvfs mount --update-fstab`` writes a line mount(8) can use, replacing an older one;
* recovery: examples/kvfs-mount@.service's ExecStart, run under a supervisor loop that
  restarts it on failure as ``Restart=on-failure`` does (there is no systemd as PID 1
  here), comes back after ``kill -9`` with no ENOTCONN left; the time is printed;
* the example units pass ``systemd-analyze verify``.

The helper link in /sbin is made for the tests (and the previous one put back) when it does
not already point at this checkout's venv.  Every test fails, never skips, when FUSE,
mount(8), findmnt, fusermount3 or systemd-analyze is missing.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import (
    ROOT_PASSWORD,
    EtcdProcesses,
    Member,
    enable_auth,
    etcd_procs,
    unique_prefix,
)
from mounting import KVFS, kvfs, require_fuse

from kvfs.cli.mount import read_credentials
from kvfs.fuse import mounttab

__all__ = ["etcd_procs"]  # fixtures used by this module

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parent.parent
STD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# mount(8) as systemd and boot scripts run it: nothing but the standard PATH.
CLEAN_ENV = ["env", "-i", f"PATH={STD_PATH}"]
HELPER_LINKS = (Path("/sbin/mount.fuse.kvfs"), Path("/sbin/mount.kvfs"))


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helper() -> Iterator[Path]:
    """This checkout's ``mount.kvfs``, linked where mount(8) looks for it; the links found
    before are put back afterwards."""
    require_fuse()
    for tool in ("mount", "umount", "findmnt", "fusermount3"):
        assert shutil.which(tool, path=STD_PATH), f"{tool} is missing (util-linux, fuse3)"
    script = Path(sys.executable).parent / "mount.kvfs"
    assert script.exists(), (f"{script} is missing: reinstall kvfs into the venv "
                             "(./install.sh deps, or pip install -e .)")
    saved: list[tuple[Path, str | None]] = []
    for link in HELPER_LINKS:
        if link.is_symlink() and link.resolve() == script.resolve():
            continue
        saved.append((link, os.readlink(link) if link.is_symlink() else None))
        assert link.is_symlink() or not link.exists(), f"{link} is not a symlink: not ours"
        tmp = link.with_name(link.name + ".kvfs-test")
        tmp.symlink_to(script)
        os.replace(tmp, link)
    try:
        yield script
    finally:
        for link, old in saved:
            if old is None:
                link.unlink(missing_ok=True)
            else:
                tmp = link.with_name(link.name + ".kvfs-test")
                tmp.symlink_to(old)
                os.replace(tmp, link)


class Cleanup:
    """Every mountpoint a test used: whatever is left mounted there is detached and its
    daemon ended, also when the test failed half-way."""

    def __init__(self) -> None:
        self.mountpoints: list[Path] = []

    def add(self, mp: Path) -> Path:
        mp.mkdir(parents=True, exist_ok=True)
        self.mountpoints.append(mp)
        return mp

    def run(self) -> None:
        for mp in self.mountpoints:
            pids = daemon_pids(mp)
            for _ in range(8):
                if not mounted_here(mp):
                    break
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False,
                               capture_output=True)
            for pid in pids:
                stop_pid(pid)


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    c = Cleanup()
    try:
        yield c
    finally:
        c.run()


# -- helpers ----------------------------------------------------------------------------


def mount8(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """mount(8) (or umount(8) when the first argument is "umount") with a clean
    environment plus ``env``."""
    cmd = [*CLEAN_ENV, *(f"{k}={v}" for k, v in (env or {}).items())]
    cmd += list(args) if args[0] == "umount" else ["mount", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"{res.args} exited {res.returncode}: {res.stderr}"
    return res


def mounted_here(mp: Path) -> list[mounttab.MountEntry]:
    """Every mount at ``mp`` (stacked ones included), from the kernel's table."""
    return [e for e in mounttab.mounts() if e.mountpoint == str(mp)]


def findmnt(mp: Path) -> dict[str, str]:
    res = ok(subprocess.run(["findmnt", "-J", "-o", "SOURCE,TARGET,FSTYPE,OPTIONS",
                             "--mountpoint", str(mp)], capture_output=True, text=True,
                            check=False))
    fs = json.loads(res.stdout)["filesystems"]
    assert len(fs) == 1, fs
    return {k: str(v) for k, v in fs[0].items()}


def cmdlines() -> dict[int, str]:
    """Every process's command line, arguments joined by spaces."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def daemon_pids(mp: Path) -> list[int]:
    """The kvfs daemons (helper-started or ``kvfs mount``) serving, or set to serve, ``mp``."""
    return [pid for pid, cmd in cmdlines().items()
            if f" {mp}" in cmd and ("mount.fuse.kvfs" in cmd or "mount.kvfs" in cmd
                                    or "kvfs.cli.main mount" in cmd)
            and pid != os.getpid()]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} still running after {timeout} s"
        time.sleep(0.05)


def stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def etcd_member(etcd_procs: EtcdProcesses) -> Member:
    """A plain etcd of this module's own (the auth test makes another)."""
    return etcd_procs.member("fstab")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = tmp_path / "store"
    kvfs("format", str(s), "fstab")
    return s


# -- mount(8) and fstab -----------------------------------------------------------------


def test_mount_a_umount_and_mount_by_mountpoint(helper: Path, store: Path, tmp_path: Path,
                                                 cleanup: Cleanup) -> None:
    mp = cleanup.add(tmp_path / "etc-nginx")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# kvfs\n{store} {mp} fuse.kvfs _netdev,allow_other,log={tmp_path}/log"
                     f",attr_timeout=2 0 0\n")
    t0 = time.monotonic()
    ok(mount8("-T", str(fstab), "-a"))
    print(f"mount -a returned after {time.monotonic() - t0:.2f} s")
    # Live when mount(8) returns, shown as fstab says, and usable.
    shown = findmnt(mp)
    assert (shown["fstype"], shown["source"], shown["target"]) == ("fuse.kvfs", str(store),
                                                                   str(mp))
    (mp / "nginx.conf").write_text("events {}\n")
    [pid] = daemon_pids(mp)
    assert "HOME" not in (Path(f"/proc/{pid}/environ").read_bytes().decode())

    # A second mount -a sees the line as mounted and leaves one mount.
    ok(mount8("-T", str(fstab), "-a"))
    assert len(mounted_here(mp)) == 1
    assert daemon_pids(mp) == [pid]

    ok(mount8("umount", str(mp)))
    assert not mounted_here(mp)
    wait_gone(pid)

    # By mountpoint alone, the line is found in the fstab.
    ok(mount8("-T", str(fstab), str(mp)))
    assert (mp / "nginx.conf").read_text() == "events {}\n"
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)

    # mount -t kvfs runs /sbin/mount.kvfs: the same helper.
    ok(mount8("-t", "kvfs", "-o", "allow_other", str(store), str(mp)))
    assert findmnt(mp)["fstype"] == "fuse.kvfs"
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)


def test_mount_by_mountpoint_replaces_a_dead_mount(helper: Path, store: Path, tmp_path: Path,
                                                    cleanup: Cleanup) -> None:
    """After kill -9, mount -a skips the line (the dead mount is still in the table);
    mount MP clears the dead mount and mounts again, without a stacked mount left."""
    mp = cleanup.add(tmp_path / "mnt")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{store} {mp} fuse.kvfs allow_other,log={tmp_path}/log 0 0\n")
    ok(mount8("-T", str(fstab), "-a"))
    (mp / "f").write_text("kept")
    [pid] = daemon_pids(mp)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    with pytest.raises(OSError) as dead:
        os.stat(mp)
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    ok(mount8("-T", str(fstab), "-a"))
    assert not daemon_pids(mp)  # skipped: mount(8) sees the line as mounted
    res = ok(mount8("-T", str(fstab), str(mp)))
    assert "clearing the dead kvfs mount" in res.stderr
    assert (mp / "f").read_text() == "kept"
    assert len(mounted_here(mp)) == 1
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)


def test_etcd_url_with_several_endpoints(helper: Path, etcd_member: Member, tmp_path: Path,
                                         cleanup: Cleanup) -> None:
    """An etcd META_URL as the source: commas and a query survive into the mount table,
    so a second mount -a still finds the line mounted."""
    port = etcd_member.endpoint.rsplit(":", 1)[1]
    url = f"etcd://127.0.0.1:{port},localhost:{port}/{unique_prefix('fst')}?timeout=10"
    kvfs("format", url, "fst")
    mp = cleanup.add(tmp_path / "mnt")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{url} {mp} fuse.kvfs _netdev,allow_other 0 0\n")
    ok(mount8("-T", str(fstab), "-a"))
    assert findmnt(mp)["source"] == url
    ok(mount8("-T", str(fstab), "-a"))
    assert len(mounted_here(mp)) == 1
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)


@pytest.mark.parametrize("case", ["unknown option", "missing volume", "missing credentials",
                                  "open credentials", "label without url"])
def test_bad_line_fails_with_one_line_and_nofail_forgives_it(
        helper: Path, store: Path, tmp_path: Path, cleanup: Cleanup, case: str) -> None:
    mp = cleanup.add(tmp_path / "mnt")
    creds = tmp_path / "vol.env"
    source, options, expected = {
        "unknown option": (str(store), "allow_other,atr_timeout=1",
                           "unknown mount option 'atr_timeout=1'"),
        "missing volume": (str(tmp_path / "nothing"), "allow_other",
                           "no kvfs volume here"),
        "missing credentials": ("etc", f"credentials={creds}",
                                f"cannot read credentials file {creds}: No such file"),
        "open credentials": ("etc", f"credentials={creds}",
                             "must not be accessible to group or others (mode 0644)"),
        "label without url": ("etc", "allow_other", "source 'etc' is a label"),
    }[case]
    if case == "open credentials":
        creds.write_text(f"KVFS_META_URL={store}\n")
        creds.chmod(0o644)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{source} {mp} fuse.kvfs {options} 0 0\n")
    res = mount8("-T", str(fstab), "-a")
    assert res.returncode != 0
    assert expected in one_error_line(res)
    assert not mounted_here(mp) and not daemon_pids(mp)

    fstab.write_text(f"{source} {mp} fuse.kvfs {options},nofail 0 0\n")
    res = mount8("-T", str(fstab), "-a")
    assert res.returncode == 0, res.stderr
    assert expected in one_error_line(res)  # still said, but not a failure
    assert not mounted_here(mp) and not daemon_pids(mp)


def test_credentials_file_keeps_url_and_password_out_of_sight(
        helper: Path, etcd_procs: EtcdProcesses, tmp_path: Path, cleanup: Cleanup) -> None:
    member = etcd_procs.member("fstab-auth")
    enable_auth(member)
    prefix = unique_prefix("fstab")
    url = f"etcd://{member.endpoint}/{prefix}?user=root"
    res = subprocess.run([*KVFS, "format", url, "etc"], capture_output=True, text=True,
                         env=dict(os.environ, KVFS_ETCD_PASSWORD=ROOT_PASSWORD), check=False)
    assert res.returncode == 0, res.stderr
    creds = write_private(tmp_path / "etc.env",
                          f"# the volume of /etc/nginx\nKVFS_META_URL={url}\n"
                          f"KVFS_ETCD_PASSWORD='{ROOT_PASSWORD}'\n")
    mp = cleanup.add(tmp_path / "nginx")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"nginx-conf {mp} fuse.kvfs _netdev,credentials={creds} 0 0\n")
    ok(mount8("-T", str(fstab), "-a"))
    shown = findmnt(mp)
    assert (shown["source"], shown["fstype"]) == ("nginx-conf", "fuse.kvfs")
    (mp / "nginx.conf").write_text("worker_processes 1;\n")

    # Neither the URL nor the password is in any command line or the mount table.
    [pid] = daemon_pids(mp)
    table = Path("/proc/self/mountinfo").read_text()
    findmnt_all = subprocess.run(["findmnt", "-l"], capture_output=True, text=True,
                                 check=False).stdout
    for secret in (prefix, member.endpoint, ROOT_PASSWORD):
        assert secret not in table and secret not in findmnt_all
        assert not [p for p, cmd in cmdlines().items() if secret in cmd and p != pid
                    and "etcd" not in cmd.split()[0]]
        assert secret not in cmdlines()[pid]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert ROOT_PASSWORD.encode() not in environ and prefix.encode() not in environ

    ok(mount8("umount", str(mp)))
    wait_gone(pid)
    # The same volume through kvfs mount: the data is there.
    ok(mount8("-T", str(fstab), str(mp)))
    assert (mp / "nginx.conf").read_text() == "worker_processes 1;\n"
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)


def test_update_fstab_writes_a_line_mount_can_use(helper: Path, store: Path, tmp_path: Path,
                                                   cleanup: Cleanup) -> None:
    mp = cleanup.add(tmp_path / "two words")
    other = "/dev/sda1 / ext4 errors=remount-ro 0 1\n"
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# static information about the filesystems\n{other}"
                     f"{store} {str(mp).replace(' ', chr(92) + '040')} fuse.kvfs ro 0 0\n"
                     f"\n# end\n")
    fstab.chmod(0o640)
    log = tmp_path / "mount.log"
    res = kvfs("mount", "--update-fstab", "--fstab", str(fstab), "--log", str(log),
               "-o", "allow_other,attr_timeout=2", str(store), str(mp))
    assert "replaced the line" in res.stdout
    assert mounted_here(mp)
    escaped = str(mp).replace(" ", "\\040")
    assert fstab.read_text() == (
        f"# static information about the filesystems\n{other}"
        f"{store} {escaped} fuse.kvfs allow_other,attr_timeout=2,log={log} 0 0\n"
        f"\n# end\n")
    assert fstab.stat().st_mode & 0o777 == 0o640
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)

    # The written line is what mount(8) mounts.
    ok(mount8("-T", str(fstab), "-a"))
    assert findmnt(mp)["source"] == str(store)
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)

    # A new file, a credentials file and a label: no URL in the line.
    creds = write_private(tmp_path / "vol.env", f"KVFS_META_URL={store}\n")
    fresh = tmp_path / "fstab.new"
    res = kvfs("mount", "--update-fstab", "--fstab", str(fresh), "-o",
               f"credentials={creds}", "vol", str(mp))
    assert "added a line" in res.stdout
    assert fresh.read_text() == f"vol {escaped} fuse.kvfs credentials={creds} 0 0\n"
    assert str(store) not in fresh.read_text()
    [pid] = daemon_pids(mp)
    ok(mount8("umount", str(mp)))
    wait_gone(pid)

    # Nothing is written for a mount that fails.
    res = kvfs("mount", "--update-fstab", "--fstab", str(fresh), "-o", "bogus", str(store),
               str(mp), check=False)
    assert res.returncode == 1 and "unknown mount option 'bogus'" in res.stderr
    assert fresh.read_text() == f"vol {escaped} fuse.kvfs credentials={creds} 0 0\n"


# -- systemd units ----------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, list[str]]:
    """The ``[Service]`` settings of a unit file (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def exec_start(unit: dict[str, list[str]], instance: str, mountpoint: Path,
               env: dict[str, str]) -> list[str]:
    """ExecStart as systemd would run it: %i, %f and ${VAR} expanded, and the installed
    kvfs replaced by this checkout's."""
    [line] = unit["ExecStart"]
    words = []
    for word in shlex.split(line):
        word = word.replace("%i", instance).replace("%f", str(mountpoint))
        assert "%" not in word, f"unexpected specifier in {word!r}"
        if word.startswith("${") and word.endswith("}"):
            word = env.get(word[2:-1], "")
        words.append(word)
    assert words[0] == "/usr/local/bin/kvfs"
    return [*KVFS, *words[1:]]


class Supervisor:
    """What ``Restart=on-failure`` does, without systemd: run the command, and each time it
    exits with a failure (a non-zero status or a signal) start it again after RestartSec.
    Readiness (``READY=1``) arrives on a NOTIFY_SOCKET, as for ``Type=notify``."""

    def __init__(self, cmd: list[str], env: dict[str, str], restart_sec: float, sock: Path):
        self.cmd, self.restart_sec = cmd, restart_sec
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(sock))
        self.notify.settimeout(0.2)
        self.env = dict(env, NOTIFY_SOCKET=str(sock))
        self.log = open(sock.with_suffix(".log"), "ab")
        self.ready: list[float] = []
        self.starts = 0
        self.stopping = False
        self.proc = self._start()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        return subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=self.log)

    def _loop(self) -> None:
        while True:
            try:
                if b"READY=1" in self.notify.recv(4096):
                    self.ready.append(time.monotonic())
            except TimeoutError:
                pass
            rc = self.proc.poll()
            if rc is None:
                continue
            if rc == 0 or self.stopping:
                return
            time.sleep(self.restart_sec)
            self.proc = self._start()

    def wait_ready(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ready) < count:
            assert time.monotonic() < deadline, "the mount never reported READY=1"
            assert self.thread.is_alive(), "the unit exited without failing"
            time.sleep(0.02)

    def stop(self) -> int:
        """``systemctl stop``: SIGTERM to the main process, whose clean exit ends it."""
        self.stopping = True
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(90)
        self.thread.join(10)
        self.notify.close()
        self.log.close()
        return rc


@pytest.mark.parametrize("engine", ["embedded", "etcd"])
def test_recovery_after_kill_9_under_the_unit(engine: str, tmp_path: Path,
                                              request: pytest.FixtureRequest,
                                              cleanup: Cleanup) -> None:
    require_fuse()
    if engine == "etcd":
        member: Member = request.getfixturevalue("etcd_member")
        volume = f"etcd://{member.endpoint}/{unique_prefix('rec')}"
    else:
        volume = str(tmp_path / "store")
    kvfs("format", volume, "rec")
    assert shutil.which("systemd-escape"), "systemd-escape is missing"
    unit = read_unit(REPO / "examples" / "kvfs-mount@.service")
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    # A mountpoint whose escaped name is a plain label (tmp_path has dashes: \x2d).
    base = Path(tempfile.mkdtemp(prefix="kvfsunit"))
    try:
        mp = cleanup.add(base / "etc")
        instance = subprocess.run(["systemd-escape", "--path", str(mp)], capture_output=True,
                                  text=True, check=True).stdout.strip()
        # The unit's Environment=, then its EnvironmentFile= (here a file of ours).
        env = {"PATH": STD_PATH}
        for assignment in unit["Environment"]:
            key, _, value = assignment.partition("=")
            env[key] = value
        assert unit["EnvironmentFile"] == ["/etc/kvfs/%i.env"]
        env.update(read_credentials(str(write_private(
            base / f"{instance}.env", f"KVFS_META_URL={volume}\n"
                                      f"KVFS_MOUNT_OPTIONS=allow_other,nonempty\n"))))
        cmd = exec_start(unit, instance, mp, env)
        sup = Supervisor(cmd, env, float(unit["RestartSec"][0]), base / "notify")
        try:
            sup.wait_ready(1)
            assert findmnt(mp)["source"] == instance  # the label, not the store
            (mp / "site.conf").write_text("server {}\n")
            first = sup.proc.pid

            t0 = time.monotonic()
            os.kill(first, signal.SIGKILL)
            answered = None
            while answered is None:
                try:
                    if (mp / "site.conf").read_text() == "server {}\n":
                        answered = time.monotonic()
                except OSError:
                    pass  # ENOTCONN until the restarted daemon is mounted
                assert time.monotonic() - t0 < 120, "the mount never came back"
                time.sleep(0.01)
            sup.wait_ready(2)
            print(f"recovery after kill -9 ({engine}): mount answering again "
                  f"{answered - t0:.2f} s "
                  f"after the kill (RestartSec={unit['RestartSec'][0]}); READY=1 after "
                  f"{sup.ready[1] - t0:.2f} s")
            assert sup.starts == 2 and sup.proc.pid != first
            # The dead mount was detached, not stacked under the new one.
            assert len(mounted_here(mp)) == 1
            os.stat(mp)
        finally:
            rc = sup.stop()
        assert rc == 0
        assert not mounted_here(mp)
    finally:
        cleanup.run()
        shutil.rmtree(base, ignore_errors=True)


def test_example_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (apt-get install systemd)"
    kvfs_bin = Path(sys.executable).parent / "kvfs"
    for template, instance in (("kvfs-mount@.service", "etc-nginx"),
                               ("kvfs-raft@.service", "m1")):
        text = (REPO / "examples" / template).read_text()
        # The installed path may not exist on a test machine; check the rest.
        unit = tmp_path / template.replace("@", f"@{instance}")
        unit.write_text(text.replace("/usr/local/bin/kvfs", str(kvfs_bin)))
        res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                             check=False)
        assert res.returncode == 0 and not res.stderr.strip(), res.stderr
