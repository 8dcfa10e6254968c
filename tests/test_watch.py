"""``kvfs watch`` on real mounts: two FUSE mounts of one etcd volume act as two hosts.

Host A edits the watched tree; the watcher on host B must see it through the engine (not
inotify), wait for quiet, run the check, and run the reload only if the check passed; its
record in the volume (shown by ``kvfs status`` on A) carries the applied revision and the
outcome, and vanishes with the watcher's lease when the watcher dies.  The check and reload
are shell scripts appending to logs in ``tmp_path``; the tests wait for those logs with
bounded polling, never fixed sleeps, except where they prove that something did *not*
happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import KVFS, Mount, kvfs
from waiting import wait_until

from kvfs.meta import keys
from kvfs.watch.record import WatchRecord

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

QUIET_MS = 300
LEASE_TTL = 2


def lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


def assert_one_line_error(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert err[0].startswith("kvfs: error: "), err[0]
    for w in words:
        assert w in err[0], err[0]


class Hooks:
    """A check script that logs every run (the revision and the files it saw) and fails
    when a file holds BROKEN, and a reload script that logs every run."""

    def __init__(self, base: Path) -> None:
        self.check_log = base / "check.log"
        self.reload_log = base / "reload.log"
        self.check = base / "check.sh"
        self.reload = base / "reload.sh"
        self.check.write_text(
            "#!/bin/sh\n"
            f'echo "$KVFS_WATCH_REVISION $(cat "$KVFS_WATCH_PATH"/*.conf | tr "\\n" " ")"'
            f' >> {self.check_log}\n'
            '! grep -rq BROKEN "$KVFS_WATCH_PATH"\n')
        self.reload.write_text(f'#!/bin/sh\necho "$KVFS_WATCH_REVISION" >> {self.reload_log}\n')
        self.check.chmod(0o755)
        self.reload.chmod(0o755)


@pytest.fixture
def hosts(etcd_single: Member, tmp_path: Path) -> Iterator[tuple[Mount, Mount]]:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('watch')}"
    kvfs("format", url, "watch")
    ms: list[Mount] = []
    try:
        ms.append(Mount(url, tmp_path / "a"))
        ms.append(Mount(url, tmp_path / "b"))
        yield ms[0], ms[1]
    finally:
        for m in reversed(ms):
            m.cleanup()


def start_watch(path: Path, hooks: Hooks, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*KVFS, "watch", str(path), "--check", str(hooks.check), "--reload",
             str(hooks.reload), "--quiet-ms", str(QUIET_MS), "--host", "host-b",
             "--lease-ttl", str(LEASE_TTL), "--timeout", "10", *extra],
            stdout=out, stderr=subprocess.STDOUT)


def watchers(where: Path) -> list[dict[str, object]]:
    return list(json.loads(kvfs("status", str(where), "--json").stdout)["watchers"])


def test_watch_checks_then_reloads_on_changes_from_another_host(
        hosts: tuple[Mount, Mount], tmp_path: Path) -> None:
    a, b = hosts
    (a.mountpoint / "nginx").mkdir()
    (a.mountpoint / "nginx" / "main.conf").write_text("v1\n")
    hooks = Hooks(tmp_path)
    log = tmp_path / "watch.log"
    proc = start_watch(b.mountpoint / "nginx", hooks, log)
    try:
        # On start it applies the current state once.
        wait_until(lambda: len(lines(hooks.reload_log)) == 1, "initial reload")
        assert len(lines(hooks.check_log)) == 1 and "v1" in lines(hooks.check_log)[0]

        # A deploy of two files on host A, written in quick succession: acted on once,
        # after the quiet window, with the whole new tree.
        t0 = time.monotonic()
        (a.mountpoint / "nginx" / "main.conf").write_text("v2\n")
        (a.mountpoint / "nginx" / "site.conf").write_text("site2\n")
        wait_until(lambda: len(lines(hooks.reload_log)) == 2, "reload after a change")
        print(f"change on A -> reload on B: {time.monotonic() - t0:.2f} s "
              f"(quiet window {QUIET_MS} ms)")
        checks = lines(hooks.check_log)
        assert len(checks) == 2 and checks[1].split(" ", 1)[1].split() == ["v2", "site2"]
        applied = int(lines(hooks.reload_log)[1])
        assert applied == int(checks[1].split()[0]) > int(lines(hooks.reload_log)[0])

        # A change outside the watched path is not acted on.
        (a.mountpoint / "elsewhere").write_text("x")
        time.sleep(QUIET_MS / 1000 + 1.5)
        assert len(lines(hooks.check_log)) == 2

        # A broken config: checked, rejected, not reloaded; status on A says so.
        (a.mountpoint / "nginx" / "main.conf").write_text("BROKEN\n")
        wait_until(lambda: len(lines(hooks.check_log)) == 3, "check of the broken config")

        def failed_record() -> bool:
            recs = watchers(a.mountpoint)
            return len(recs) == 1 and recs[0]["result"] == "check failed"

        wait_until(failed_record, "the failed check in B's record")
        rec = watchers(a.mountpoint)[0]
        assert rec["host"] == "host-b" and rec["path"] == "/nginx"
        assert rec["applied"] == applied and int(str(rec["revision"])) > applied
        assert rec["reload"] == "skipped"
        assert len(lines(hooks.reload_log)) == 2
        table = kvfs("status", str(a.mountpoint)).stdout
        print(table)
        row = next(ln for ln in table.splitlines() if "host-b" in ln)
        assert "/nginx" in row and str(applied) in row and "check failed" in row

        # Fixed again: applied.
        (a.mountpoint / "nginx" / "main.conf").write_text("v3\n")
        wait_until(lambda: len(lines(hooks.reload_log)) == 3, "reload of the fixed config")

        # The watcher dies: its record goes with its lease.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        wait_until(lambda: watchers(a.mountpoint) == [], "the dead watcher's record to go")
        print(f"dead watcher's record gone after {time.monotonic() - t0:.1f} s "
              f"(lease TTL {LEASE_TTL} s)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        print(log.read_text()[-3000:])


def test_watch_stops_cleanly_on_sigterm(hosts: tuple[Mount, Mount], tmp_path: Path) -> None:
    a, b = hosts
    hooks = Hooks(tmp_path)
    (b.mountpoint / "x.conf").write_text("x\n")
    proc = start_watch(b.mountpoint, hooks, tmp_path / "watch.log", "--lease-ttl", "60")
    try:
        wait_until(lambda: len(watchers(a.mountpoint)) == 1, "the watcher's record")
        assert watchers(a.mountpoint)[0]["path"] == "/"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert watchers(a.mountpoint) == []  # revoked at once, not left for the 60 s TTL


def test_once_with_a_hanging_check_fails_and_does_not_reload(
        hosts: tuple[Mount, Mount], tmp_path: Path) -> None:
    _, b = hosts
    hooks = Hooks(tmp_path)
    (b.mountpoint / "x.conf").write_text("x\n")
    args = [str(b.mountpoint), "--reload", str(hooks.reload), "--once", "--timeout", "1"]
    t0 = time.monotonic()
    res = kvfs("watch", *args, "--check", "sleep 100", check=False)
    print(f"hung check ended after {time.monotonic() - t0:.1f} s (timeout 1 s)")
    assert res.returncode == 2, res.stderr
    assert "timed out after 1 s" in res.stderr and "reload skipped" in res.stderr
    assert lines(hooks.reload_log) == []
    res = kvfs("watch", *args, "--check", str(hooks.check), check=False)
    assert res.returncode == 0, res.stderr
    assert len(lines(hooks.reload_log)) == 1


def test_reload_failures_are_retried_and_reported(hosts: tuple[Mount, Mount],
                                                  tmp_path: Path) -> None:
    _, b = hosts
    hooks = Hooks(tmp_path)
    tries = tmp_path / "tries"
    # Fails twice, then succeeds.
    flaky = f'echo x >> {tries}; [ "$(wc -l < {tries})" -ge 3 ]'
    res = kvfs("watch", str(b.mountpoint), "--check", str(hooks.check), "--reload", flaky,
               "--once", check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("reload failed: exit status 1") == 2, res.stderr
    assert "reload ok after 3 attempts" in res.stderr
    res = kvfs("watch", str(b.mountpoint), "--check", str(hooks.check), "--reload", "false",
               "--once", check=False)
    assert res.returncode == 2 and "(4 attempts)" in res.stderr, res.stderr


def test_bad_input(hosts: tuple[Mount, Mount], tmp_path: Path) -> None:
    _, b = hosts
    hooks = Hooks(tmp_path)
    ok = ["--check", "true", "--reload", f"touch {tmp_path / 'reloaded'}", "--once"]
    assert_one_line_error(kvfs("watch", str(tmp_path), *ok, check=False),
                          "not inside a kvfs mount")
    assert_one_line_error(kvfs("watch", str(b.mountpoint / "missing"), *ok, check=False),
                          "no such file or directory")
    for missing in ("--check", "--reload"):
        args = [str(b.mountpoint), "--check", "true", "--reload", "true"]
        res = kvfs("watch", *args[:args.index(missing) + 1], *args[args.index(missing) + 2:],
                   check=False)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert f"argument {missing}: expected one argument" in res.stderr.splitlines()[-1]
    res = kvfs("watch", str(b.mountpoint), "--check", "true", "--reload", "true",
               "--quiet-ms", "-1", check=False)
    assert res.returncode == 2 and "must be positive" in res.stderr
    assert not (tmp_path / "reloaded").exists()
    assert not hooks.reload_log.exists()


def test_record_key_and_value_round_trip() -> None:
    rec = WatchRecord("web-1.example", "/etc/nginx x/\u00e9", 42, 17, 12, "ok",
                      "failed: exit status 1 (4 attempts)", 1.5)
    assert rec.key().startswith(keys.WATCHER_PREFIX)
    assert keys.parse_watcher(rec.key()) == ("web-1.example", "/etc/nginx x/\u00e9")
    assert WatchRecord.decode(rec.key(), rec.encode()) == rec
    assert rec.result == "reload failed"
    with pytest.raises(ValueError):
        keys.parse_watcher(keys.session(3))
