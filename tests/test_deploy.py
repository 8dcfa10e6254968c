"""``kvfs deploy`` on real mounts: atomic tree swaps, the check, and bad input.

The atomicity test runs on etcd (two FUSE mounts of one volume, deploying on one while a
reader process loops over the tree on the other) and on an embedded store (one mount, the
reader another process).  Every file of generation G says G; the reader opens every file
by path under PATH, over and over, and the generations it reads must never go backwards --
a deploy that was not one swap would show a file of the new tree before one of the old --
nor may a file ever be missing, nor the tree's listing hold other than one generation
marker.  ``KVFS_DEPLOY_ROUNDS`` (default 8) sets the number of deploys; on etcd each takes
about 2.8 s, most of it the grace period before the old tree is removed, so a long run is
``KVFS_DEPLOY_ROUNDS=200 .venv/bin/pytest -q -s tests/test_deploy.py -k atomic``.

The check, bad-input and watch tests use the same mounts; the tests wait for logs with
bounded polling, never fixed sleeps, except where they prove that something did *not*
happen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_cluster import etcd_procs, etcd_single
from mounting import KVFS, Mount, kvfs
from test_watch import Hooks, assert_one_line_error, hosts, lines, wait_until

from kvfs.deploy import STAGING_DIR

__all__ = ["etcd_procs", "etcd_single", "hosts"]  # fixtures used by this module

ROUNDS = int(os.environ.get("KVFS_DEPLOY_ROUNDS", "8"))
FILES = ("a.conf", "b.conf", "sub/c.conf", "sub/deeper/d.conf")
QUIET_MS = 300

READER = r"""
import json, os, sys
root, ready, stop, out, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
last = passes = reads = 0
seen, problems = set(), []

def note(what):
    if len(problems) < 20:
        problems.append(what)

while not os.path.exists(stop):
    try:
        marks = [n for n in os.listdir(root) if n.startswith("gen-")]
    except OSError as e:
        note(f"listdir: {e}")
        continue
    if len(marks) != 1:
        note(f"listing with markers {sorted(marks)}")
    else:
        g = int(marks[0][4:])
        if g < last:
            note(f"listing of generation {g} after {last}")
        last = max(last, g)
    for f in files:
        try:
            with open(os.path.join(root, f)) as fh:
                text = fh.read()
        except OSError as e:
            note(f"{f}: {e}")
            continue
        reads += 1
        head, _, rest = text.partition("\n")
        _, g, name, pad = head.split()
        g = int(g)
        if name != f or rest != "x" * int(pad) + "\n":
            note(f"{f}: torn content {text[:40]!r}")
        if g < last:
            note(f"{f}: generation {g} after {last}")
        last = max(last, g)
        seen.add(g)
    passes += 1
    if passes == 1:
        open(ready, "w").close()
with open(out, "w") as fh:
    json.dump({"passes": passes, "reads": reads, "seen": sorted(seen), "problems": problems}, fh)
"""


def content(gen: int, name: str) -> str:
    """File ``name`` of generation ``gen``: its first line names both and the length of
    the second, which varies with the generation (so a torn file shows)."""
    pad = gen * 37 % 500
    return f"gen {gen} {name} {pad}\n" + "x" * pad + "\n"


def make_tree(base: Path, gen: int) -> Path:
    src = base / f"src-{gen}"
    for name in FILES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(content(gen, name))
    (src / f"gen-{gen}").write_text("")
    (src / "link").symlink_to("a.conf")
    return src


def staged(mp: Path) -> list[str]:
    d = mp / STAGING_DIR
    return sorted(os.listdir(d)) if d.exists() else []


@pytest.fixture
def etcd_views(hosts: tuple[Mount, Mount]) -> tuple[Path, Path]:
    """Two mounts of one etcd volume: (the deploying host's, the other host's)."""
    return hosts[0].mountpoint, hosts[1].mountpoint


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Path]:
    """One mount of an embedded volume."""
    kvfs("format", str(tmp_path / "vol"), "deploy")
    m = Mount(str(tmp_path / "vol"), tmp_path / "mnt")
    try:
        yield m.mountpoint
    finally:
        m.cleanup()


@pytest.fixture(params=["etcd", "embedded"])
def views(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    if request.param == "etcd":
        return tuple(request.getfixturevalue("etcd_views"))  # type: ignore[return-value]
    mp = request.getfixturevalue("embedded")
    return mp, mp


def deploy(src: Path, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return kvfs("deploy", str(src), str(target), *extra, check=False)


def test_deploys_are_atomic_for_a_reader_on_another_mount(
        views: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = views
    (a / "etc").mkdir()
    trees = [make_tree(tmp_path, g) for g in range(1, ROUNDS + 1)]
    res = deploy(trees[0], a / "etc" / "nginx")
    assert res.returncode == 0, res.stderr
    ready, stop, out = tmp_path / "ready", tmp_path / "stop", tmp_path / "reader.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(b / "etc" / "nginx"),
                               str(ready), str(stop), str(out), *FILES])
    try:
        wait_until(lambda: ready.exists() or reader.poll() is not None, "the reader to start")
        took = []
        for src in trees[1:]:
            t0 = time.monotonic()
            res = deploy(src, a / "etc" / "nginx")
            took.append(time.monotonic() - t0)
            assert res.returncode == 0, res.stderr
            assert res.stdout.count("\n") == 1 and "swap" in res.stdout, res.stdout
        stop.touch()
        assert reader.wait(60) == 0
    finally:
        stop.touch()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    got = json.loads(out.read_text())
    print(f"{ROUNDS - 1} deploys, {sum(took) / len(took):.2f} s each on average "
          f"(last: {res.stdout.strip()}); the reader made {got['passes']} passes, "
          f"{got['reads']} reads, and saw generations {got['seen']}")
    assert got["problems"] == []
    assert got["passes"] > 0 and len(got["seen"]) > 1
    final = b / "etc" / "nginx"
    assert sorted(p.name for p in final.iterdir()) == sorted(
        ["a.conf", "b.conf", "sub", f"gen-{ROUNDS}", "link"])
    for name in FILES:
        assert (final / name).read_text() == content(ROUNDS, name)
    assert os.readlink(final / "link") == "a.conf"
    assert staged(a) == []


def test_first_deploy_keep_old_and_attributes(embedded: Path, tmp_path: Path) -> None:
    mp = embedded
    src = make_tree(tmp_path, 1)
    (src / "a.conf").chmod(0o640)
    os.utime(src / "a.conf", (1_000_000_000, 1_000_000_000))
    os.chown(src / "b.conf", 1234, 5678)
    res = deploy(src, mp / "nginx")  # PATH does not exist yet: a plain rename
    assert res.returncode == 0, res.stderr
    st = (mp / "nginx" / "a.conf").stat()
    assert st.st_mode & 0o7777 == 0o640 and st.st_mtime == 1_000_000_000
    assert (mp / "nginx" / "b.conf").stat().st_uid == 1234
    assert (mp / "nginx" / "b.conf").stat().st_gid == 5678
    res = deploy(make_tree(tmp_path, 2), mp / "nginx", "--keep-old")
    assert res.returncode == 0, res.stderr
    kept = res.stdout.strip().rsplit("old tree kept at ", 1)[1]
    assert Path(kept).parent == mp / STAGING_DIR
    assert (Path(kept) / "gen-1").exists() and (mp / "nginx" / "gen-2").exists()
    assert (mp / STAGING_DIR).stat().st_mode & 0o777 == 0o700


def test_check_passes_fails_and_times_out(embedded: Path, tmp_path: Path) -> None:
    mp = embedded
    target = mp / "nginx"
    assert deploy(make_tree(tmp_path, 1), target).returncode == 0
    seen = tmp_path / "seen"
    # {} and $KVFS_DEPLOY_PATH both name the staged tree, which is whole.
    res = deploy(make_tree(tmp_path, 2), target, "--check",
                 f'echo "{{}} $KVFS_DEPLOY_PATH $(ls {{}} | tr "\\n" " ")" > {seen}')
    assert res.returncode == 0, res.stderr
    arg, env, *names = seen.read_text().split()
    assert arg == env and Path(arg).parent == mp / STAGING_DIR
    assert sorted(names) == sorted(["a.conf", "b.conf", "sub", "gen-2", "link"])
    assert (target / "gen-2").exists() and staged(mp) == []

    # A failing check: its last stderr line in one line, exit 2, nothing changed.
    res = deploy(make_tree(tmp_path, 3), target, "--check",
                 "echo first >&2; echo 'nginx: bad directive in {}/a.conf' >&2; exit 3")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvfs: error: check failed (exit status 3)")
    assert "bad directive" in err[0] and "first" not in err[0]
    assert (target / "gen-2").exists() and staged(mp) == []

    # A hanging check is killed with its whole process group and counts as failed.
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    res = deploy(make_tree(tmp_path, 4), target, "--timeout", "1", "--check",
                 f"sleep 100 & echo $! > {pidfile}; wait")
    print(f"hung check ended after {time.monotonic() - t0:.1f} s (timeout 1 s)")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "timed out after 1 s" in err[0], res.stderr
    sleeper = int(pidfile.read_text())
    wait_until(lambda: not Path(f"/proc/{sleeper}").exists()
               or "Z" in Path(f"/proc/{sleeper}/stat").read_text().split()[2],
               "the check's background process to be killed")
    assert (target / "gen-2").exists() and staged(mp) == []
    assert sorted(os.listdir(target)) == sorted(["a.conf", "b.conf", "sub", "gen-2", "link"])


def test_bad_input(embedded: Path, tmp_path: Path) -> None:
    mp = embedded
    src = make_tree(tmp_path, 1)
    assert deploy(src, mp / "nginx").returncode == 0
    (mp / "file").write_text("x")
    fifo_src = make_tree(tmp_path, 2)
    os.mkfifo(fifo_src / "sub" / "pipe")
    cases: list[tuple[list[str], str]] = [
        ([str(tmp_path / "missing"), str(mp / "nginx")], "no such directory"),
        ([str(src / "a.conf"), str(mp / "nginx")], "not a directory"),
        ([str(src), str(tmp_path / "elsewhere")], "not inside a kvfs mount"),
        ([str(src), str(mp / "file")], "not a directory"),
        ([str(src), str(mp / "no" / "nginx")], "no such directory"),
        ([str(src), str(mp)], "a mountpoint"),
        ([str(src), str(mp / STAGING_DIR / "x")], "staging area"),
        ([str(fifo_src), str(mp / "nginx")], "special file"),
        ([str(src), str(mp / "nginx"), "--timeout", "0"], "--timeout"),
        ([str(src), str(mp / "nginx"), "--timeout", "soon"], "--timeout"),
        ([str(src), str(mp / "nginx"), "--timeout", "-1"], "--timeout"),
        ([str(src), str(mp / "nginx"), "--grace", "-1"], "--grace"),
    ]
    before = sorted(os.listdir(mp))
    for args, words in cases:
        res = kvfs("deploy", *args, check=False)
        assert res.returncode == 1, (args, res.stderr)
        assert_one_line_error(res, words)
        assert sorted(os.listdir(mp)) == before and staged(mp) == []
        assert (mp / "nginx" / "gen-1").exists() and (mp / "file").read_text() == "x"
    assert not (tmp_path / "elsewhere").exists()
    res = subprocess.run([*KVFS, "deploy", str(src)], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def reloads(hooks: Hooks, n: int) -> Callable[[], bool]:
    return lambda: len(lines(hooks.reload_log)) == n


@pytest.mark.parametrize("watched", ["nginx", "."])
def test_watch_acts_once_per_deploy_on_whole_trees(
        etcd_views: tuple[Path, Path], tmp_path: Path, watched: str) -> None:
    """A watch of PATH, or of the whole volume (which holds the staging area, left out of
    what the watcher compares), acts once per deploy."""
    a, b = etcd_views
    deploys = 2
    assert deploy(make_tree(tmp_path, 1), a / "nginx").returncode == 0
    hooks = Hooks(tmp_path)
    if watched == ".":  # the check reads the deployed tree under the watched root
        hooks.check.write_text(hooks.check.read_text().replace(
            '"$KVFS_WATCH_PATH"/*.conf', '"$KVFS_WATCH_PATH"/nginx/*.conf'))
    log = tmp_path / "watch.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*KVFS, "watch", str(b / watched), "--check", str(hooks.check), "--reload",
             str(hooks.reload), "--quiet-ms", str(QUIET_MS), "--host", "host-b",
             "--lease-ttl", "2", "--timeout", "10"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(lines(hooks.reload_log)) == 1, "initial reload")
        for g in range(2, deploys + 2):
            src = make_tree(tmp_path, g)
            t0 = time.monotonic()
            dep = subprocess.Popen([*KVFS, "deploy", str(src), str(a / "nginx")],
                                   stdout=subprocess.PIPE, text=True)
            wait_until(reloads(hooks, g), f"reload of deploy {g}")
            reloaded = time.monotonic() - t0
            assert dep.wait(60) == 0
            print(f"deploy {g} on A: reload on B after {reloaded:.2f} s, the deploy "
                  f"(with the old tree's grace period) done after "
                  f"{time.monotonic() - t0:.2f} s; quiet window {QUIET_MS} ms")
        # Nothing more: the removal of old trees in the staging area is not acted on.
        time.sleep(QUIET_MS / 1000 + 1.5)
        checks = lines(hooks.check_log)
        assert len(checks) == deploys + 1 and len(lines(hooks.reload_log)) == deploys + 1
        for g, line in enumerate(checks, 1):
            words = line.split()
            gens = {words[i + 1] for i, w in enumerate(words) if w == "gen"}
            assert gens == {str(g)}, line  # every file it read is of one generation
    finally:
        proc.terminate()
        proc.wait(30)
        print(log.read_text()[-2000:])
