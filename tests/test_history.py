"""File history on real mounts: ``kvfs log``, ``diff`` and ``restore`` against a model.

The model-based test drives a random sequence of edits through FUSE mounts -- writes,
rename-deploys (a temporary file renamed over the target), chmod, renames between paths,
removals and restores of earlier versions -- and keeps, in memory, every version each
path should have.  After the sequence, every path's ``kvfs log`` must list exactly the
model's versions (kind, type, mode, size), the content of every version must be the bytes
the model recorded, and each restore must have brought back exactly what was restored.  It
runs on an embedded store (one mount) and on etcd (two mounts, edits alternating between
them).  ``KVFS_HISTORY_STEPS`` (default 60) sets the length of each sequence and
``KVFS_HISTORY_SEED`` its seed.

Other tests: a directory restored to a revision and to a time, the history of deployed
trees, retention (pure, on an in-memory engine), versions whose blocks outlive the file,
a volume without history, and bad input.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from etcd_cluster import etcd_procs, etcd_single
from fsapi import ROOT, mkfile
from mounting import Mount, kvfs
from test_watch import hosts

from kvfs.fuse import controlsocket
from kvfs.history.recorder import Recorder
from kvfs.history.records import HistorySettings, Version
from kvfs.history.store import expire, read_content, versions_of
from kvfs.kv.api import Put, prefix_end
from kvfs.kv.local import MemoryEngine
from kvfs.meta import keys
from kvfs.objstore.api import BlockNotFound
from kvfs.vfs.fs import FileSystem

__all__ = ["etcd_procs", "etcd_single", "hosts"]  # fixtures used by this module

STEPS = int(os.environ.get("KVFS_HISTORY_STEPS", "60"))
SEED = int(os.environ.get("KVFS_HISTORY_SEED", str(random.randrange(1 << 30))))
PATHS = ("/etc/a.conf", "/etc/b.conf", "/etc/sub/c.conf")


@dataclass
class Expected:
    kind: str
    content: bytes | None  # None: a tombstone
    mode: int = 0


@dataclass
class Model:
    versions: dict[str, list[Expected]] = field(default_factory=dict)

    def add(self, path: str, v: Expected) -> None:
        self.versions.setdefault(path, []).append(v)

    def current(self, path: str) -> Expected | None:
        vs = self.versions.get(path)
        return vs[-1] if vs and vs[-1].content is not None else None


def ask(mp: Path, req: dict[str, object]) -> dict[str, object]:
    answer = controlsocket.request(str(mp), req)
    assert answer["ok"], answer
    return answer


def log_of(mp: Path, path: str) -> list[dict[str, object]]:
    answer = controlsocket.request(str(mp), {"op": "log", "path": path.encode()})
    return list(answer["versions"]) if answer["ok"] else []


def content_of(mp: Path, path: str, rev: int) -> bytes:
    data = ask(mp, {"op": "content", "path": path.encode(), "rev": rev})["data"]
    assert isinstance(data, bytes), data
    return data


def settle(mounts: list[Path], path: str) -> None:
    """Wait until every mount sees ``path`` as the others do: a mount's kernel may hold a
    name, its absence, or the inode a rename on another mount replaced, until the watch
    says otherwise, milliseconds later (a path operation meanwhile would act on the old
    inode)."""
    def seen(mp: Path) -> int:
        try:
            return os.lstat(mp / path.lstrip("/")).st_ino
        except FileNotFoundError:
            return 0

    deadline = time.monotonic() + 10
    while len({seen(mp) for mp in mounts}) > 1:
        assert time.monotonic() < deadline, f"the mounts disagree on {path}"
        time.sleep(0.01)


def run_model(mounts: list[Path], seed: int, steps: int) -> None:
    rng = random.Random(seed)
    model = Model()
    for mp in mounts[:1]:
        (mp / "etc" / "sub").mkdir(parents=True)
    for step in range(steps):
        mp = mounts[step % len(mounts)]
        path = rng.choice(PATHS)
        real = mp / path.lstrip("/")
        cur = model.current(path)
        settle(mounts, path)
        op = rng.choice(["write", "deploy", "chmod", "move", "rm", "restore", "restore"])
        if op == "write" or cur is None and op in ("chmod", "move", "rm"):
            data = f"{path} step {step}\n".encode() * rng.randint(1, 50)
            with open(real, "wb") as f:
                f.write(data)
            mode = cur.mode if cur else 0o644
            model.add(path, Expected("write" if cur else "create", data, mode))
        elif op == "deploy":
            data = f"deployed {path} at {step}\n".encode() * rng.randint(1, 50)
            tmp = real.parent / f".tmp-{step}"
            tmp.write_bytes(data)
            os.rename(tmp, real)
            model.add(path, Expected("rename", data, 0o644))
        elif op == "chmod":
            assert cur is not None
            mode = rng.choice([0o600, 0o640, 0o644, 0o755])
            os.chmod(real, mode)
            model.add(path, Expected("attr", cur.content, mode))
        elif op == "move":
            assert cur is not None
            dest = rng.choice([p for p in PATHS if p != path])
            settle(mounts, dest)
            os.rename(real, mp / dest.lstrip("/"))
            model.add(dest, Expected("rename", cur.content, cur.mode))
            model.add(path, Expected("away", None))
        elif op == "rm":
            assert cur is not None
            os.unlink(real)
            model.add(path, Expected("delete", None))
        else:  # restore an earlier version, chosen from the live log
            log = log_of(mp, path)
            if not log:
                continue
            pick = rng.randrange(len(log))
            chosen = model.versions[path][pick]
            res = kvfs("restore", str(real), "--rev", str(log[pick]["revision"]))
            assert any(w in res.stdout for w in ("restored", "removed", "already absent")), \
                res.stdout
            if chosen.content is None:
                if cur is not None:
                    model.add(path, Expected("delete", None))
                assert not os.path.lexists(real)
            else:
                model.add(path, Expected("restore", chosen.content, chosen.mode))
                assert real.read_bytes() == chosen.content, f"step {step}: restore of {path}"
                assert real.stat().st_mode & 0o7777 == chosen.mode
    for path, expected in model.versions.items():
        for mp in mounts:
            log = log_of(mp, path)
            got = [(v["kind"], v["type"] != "-", v["mode"] if v["type"] != "-" else 0,
                    v["size"] if v["type"] != "-" else 0) for v in log]
            want = [(e.kind, e.content is not None, e.mode,
                     len(e.content) if e.content is not None else 0) for e in expected]
            assert got == want, f"seed {seed}: log of {path} on {mp}"
        for v, e in zip(log, expected, strict=True):
            if e.content is not None:
                assert content_of(mounts[0], path, int(v["revision"])) == e.content  # type: ignore[call-overload]
    print(f"seed {seed}: {steps} steps, "
          f"{sum(len(v) for v in model.versions.values())} versions checked")


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Mount]:
    store = tmp_path / "store"
    kvfs("format", str(store), "hist", "--history-versions", "1000")
    m = Mount(str(store), tmp_path / "mnt")
    try:
        yield m
    finally:
        m.cleanup()


def test_model_embedded(embedded: Mount) -> None:
    run_model([embedded.mountpoint], SEED, STEPS)


def test_model_etcd_two_hosts(hosts: tuple[Mount, Mount]) -> None:
    run_model([m.mountpoint for m in hosts], SEED + 1, STEPS)


def digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return out


def newest_revision(mp: Path, path: str) -> int:
    return int(log_of(mp, path)[-1]["revision"])  # type: ignore[call-overload]


def test_directory_restore_to_a_revision_and_a_time(embedded: Mount) -> None:
    mp = embedded.mountpoint
    tree = mp / "nginx"
    (tree / "sites").mkdir(parents=True)
    for name in ("nginx.conf", "mime.types", "sites/default"):
        (tree / name).write_text(f"{name} v1\n")
    before = digest(tree)
    rev = newest_revision(mp, "/nginx/sites/default")
    time.sleep(0.05)
    at_time = time.time()
    time.sleep(0.05)
    (tree / "nginx.conf").write_text("nginx.conf v2\n")
    os.unlink(tree / "mime.types")
    (tree / "sites" / "new").write_text("made later\n")
    os.chmod(tree / "sites" / "default", 0o600)
    assert digest(tree) != before

    out = kvfs("restore", str(tree), "--at", str(rev)).stdout
    assert digest(tree) == before, out
    assert (tree / "sites" / "default").stat().st_mode & 0o777 == 0o644
    assert "removed /nginx/sites/new" in out

    (tree / "nginx.conf").write_text("nginx.conf v3\n")
    kvfs("restore", str(tree), "--at", f"@{at_time}")
    assert digest(tree) == before
    # Restores are changes too, and in the history.
    kinds = [v["kind"] for v in log_of(mp, "/nginx/nginx.conf")]
    assert kinds == ["create", "write", "restore", "write", "restore"]
    assert kvfs("restore", str(tree), "--at", f"@{at_time}").stdout.startswith(
        "/nginx: nothing to restore")


def test_deployed_trees_keep_their_history(embedded: Mount, tmp_path: Path) -> None:
    mp = embedded.mountpoint
    revs = []
    for gen in (1, 2, 3):
        src = tmp_path / f"src{gen}"
        (src / "conf.d").mkdir(parents=True)
        (src / "nginx.conf").write_text(f"generation {gen}\n")
        if gen != 2:
            (src / "conf.d" / "extra.conf").write_text(f"extra {gen}\n")
        kvfs("deploy", str(src), str(mp / "nginx"))
        revs.append(newest_revision(mp, "/nginx/nginx.conf"))
    log = log_of(mp, "/nginx/nginx.conf")
    # Each deploy moves a whole tree in: its files arrive by a move of their directory.
    assert [v["kind"] for v in log] == ["move", "move", "move"]
    extra = [v["kind"] for v in log_of(mp, "/nginx/conf.d/extra.conf")]
    assert extra == ["move", "away", "move"]
    assert content_of(mp, "/nginx/nginx.conf", revs[0]) == b"generation 1\n"
    # Nothing of the staging area is kept.
    assert not log_of(mp, "/.kvfs-deploy")
    kvfs("restore", str(mp / "nginx"), "--at", str(revs[0]))
    assert (mp / "nginx" / "nginx.conf").read_text() == "generation 1\n"
    assert (mp / "nginx" / "conf.d" / "extra.conf").read_text() == "extra 1\n"
    diff = kvfs("diff", str(mp / "nginx" / "nginx.conf"), str(revs[0]), str(revs[2])).stdout
    assert "-generation 1" in diff and "+generation 3" in diff


def test_versions_outlive_the_blocks_of_removed_files(embedded: Mount) -> None:
    mp = embedded.mountpoint
    data = os.urandom(3 << 20)  # several blocks, so not inline
    (mp / "big").write_bytes(data)
    rev = newest_revision(mp, "/big")
    os.unlink(mp / "big")
    (mp / "other").write_bytes(b"x")
    # The removed file's data is queued; the cleaner runs every 2 s: give it time to act.
    time.sleep(5)
    assert content_of(mp, "/big", rev) == data
    kvfs("restore", str(mp / "big"), "--rev", str(rev))
    assert (mp / "big").read_bytes() == data


def test_cli_log_and_diff_output(embedded: Mount) -> None:
    mp = embedded.mountpoint
    f = mp / "site.conf"
    f.write_text("listen 80;\nroot /srv;\n")
    f.write_text("listen 8080;\nroot /srv;\n")
    out = kvfs("log", str(f)).stdout.splitlines()
    assert out[0].split()[:3] == ["REV", "TIME", "HOST"]
    assert [line.split()[5] for line in out[1:]] == ["create", "write"]
    as_json = json.loads(kvfs("log", "--json", str(f)).stdout)
    assert as_json["path"] == "/site.conf" and len(as_json["versions"]) == 2
    diff = kvfs("diff", str(f)).stdout
    assert "-listen 80;" in diff and "+listen 8080;" in diff
    first = as_json["versions"][0]["revision"]
    f.write_text("listen 443;\n")
    now = kvfs("diff", str(f), str(first)).stdout
    assert "+listen 443;" in now and "(now)" in now
    # A removed file keeps its log, and a path inside a removed directory too.
    (mp / "d").mkdir()
    (mp / "d" / "x").write_text("x\n")
    os.unlink(mp / "d" / "x")
    os.rmdir(mp / "d")
    kinds = [line.split()[5] for line in kvfs("log", str(mp / "d" / "x")).stdout.splitlines()[1:]]
    assert kinds == ["create", "delete"]
    # The whole volume, named by its mountpoint, back to the first version.
    restored = kvfs("restore", str(mp), "--at", str(first)).stdout
    assert f.read_text() == "listen 80;\nroot /srv;\n", restored
    assert not (mp / "d").exists() or not (mp / "d" / "x").exists()


def test_history_off(tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = kvfs("format", str(store), "nohist", "--history-days", "0").stdout
    assert "history off" in out
    m = Mount(str(store), tmp_path / "mnt")
    try:
        (m.mountpoint / "f").write_text("x\n")
        res = kvfs("log", str(m.mountpoint / "f"), check=False)
        assert res.returncode == 1 and "keeps no history" in res.stderr
    finally:
        m.unmount()
    out = kvfs("format", str(store), "nohist", "--force", "--history", "/etc",
               "--history-days", "2").stdout
    assert "history of /etc kept 2 days" in out


def assert_one_line_error(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0, res
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_bad_input(embedded: Mount, tmp_path: Path) -> None:
    mp = embedded.mountpoint
    f = mp / "f.conf"
    f.write_text("one\n")
    f.write_text("two\n")
    before = digest(mp)
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    assert_one_line_error(kvfs("log", str(outside), check=False), "not inside a kvfs mount")
    assert_one_line_error(kvfs("log", str(mp / "never"), check=False), "no recorded versions")
    assert_one_line_error(kvfs("restore", str(f), "--rev", "999999", check=False),
                          "no version at revision 999999")
    assert_one_line_error(kvfs("restore", str(f), "--rev", "abc", check=False),
                          "invalid revision")
    assert_one_line_error(kvfs("restore", str(f), "--at", "yesterday-ish", check=False),
                          "invalid time")
    assert_one_line_error(kvfs("restore", str(mp / "never"), "--at", "1", check=False),
                          "no recorded versions")
    assert_one_line_error(kvfs("diff", str(f), "1", "2", "3", check=False), "at most two")
    assert_one_line_error(kvfs("diff", str(f), "0", check=False), "invalid revision")
    assert_one_line_error(kvfs("diff", str(f), "999999", check=False), "no version")
    assert_one_line_error(kvfs("format", str(tmp_path / "s2"), "v", "--history", "etc",
                               check=False), "not an absolute path")
    assert_one_line_error(kvfs("format", str(tmp_path / "s3"), "v", "--history-days", "-1",
                               check=False), "invalid --history-days")
    assert digest(mp) == before


def test_retention_keeps_recent_versions_and_the_newest_n() -> None:
    day = 86400 * 10**9
    now = 100 * day

    async def go() -> list[list[int]]:
        kv = MemoryEngine()
        for path, ages in ((b"/a", [30, 9, 3, 2, 1]), (b"/b", [20, 10]), (b"/c", [0])):
            for seq, age in enumerate(ages):
                t = now - age * day
                await kv.commit([], [Put(keys.history(path, t, seq),
                                         Version("write", t, "h", 0).encode())])
        removed = await expire(kv, HistorySettings((b"/",), 7, 2), now)
        assert removed == 3 + 2 + 0
        out = []
        for path in (b"/a", b"/b", b"/c"):
            out.append([(now - v.time) // day for v in await versions_of(kv, path)])
        assert await expire(kv, HistorySettings((b"/",), 0, 2), now) == 3  # off: all go
        return out

    assert trio.run(go) == [[2, 1], [], [0]]


def test_settings_cover_paths() -> None:
    s = HistorySettings((b"/etc", b"/srv/www"))
    assert s.covers(b"/etc/nginx/a") and s.covers(b"/srv/www/x")
    assert not s.covers(b"/etcx") and not s.covers(b"/srv/other")
    assert not HistorySettings().covers(b"/.kvfs-deploy/x/y")
    assert not HistorySettings().covers(b"/d/.kvfs-restore-0123")
    assert not HistorySettings(days=0).covers(b"/a")



async def test_retained_blocks_follow_the_retention_in_force(fs: FileSystem) -> None:
    """Freed slices keep their blocks while the history keeps them, and go once the
    retention in force no longer covers them: turning history off frees them at once."""
    recorder = Recorder(fs.meta, HistorySettings(), "host")
    fs.keep_history(recorder)
    ino = await mkfile(fs, ROOT, b"f", os.urandom(3 << 20))
    versions = await versions_of(fs.meta.kv, b"/f")
    assert [v.kind for v in versions] == ["create"]
    await fs.unlink(ROOT, b"f")
    await fs.cleaner.run_once()  # the file's data is queued, retained
    retained = await fs.meta.kv.range(keys.RETAINED_PREFIX, prefix_end(keys.RETAINED_PREFIX))
    assert retained.kvs and not await fs.meta.kv.get(keys.attr(ino))
    assert await read_content(fs.slices, versions[0]) != b""
    recorder.apply(HistorySettings(days=0))
    await fs.cleaner.run_once()
    retained = await fs.meta.kv.range(keys.RETAINED_PREFIX, prefix_end(keys.RETAINED_PREFIX))
    assert not retained.kvs
    with pytest.raises(BlockNotFound):
        await read_content(fs.slices, versions[0])
    assert [v.kind for v in await versions_of(fs.meta.kv, b"/f")] == ["create", "delete"]


def test_editor_and_shell_save_patterns(embedded: Mount, tmp_path: Path) -> None:
    """The plain workflows keep working and each leaves one readable version: an editor
    writing in place (vim's backupcopy=yes), an editor renaming the old file to a backup
    and writing a new one (backupcopy=no), cp over the file, and mv of a temporary file."""
    mp = embedded.mountpoint
    f = mp / "site.conf"
    f.write_text("v1\n")
    with open(f, "r+") as fh:  # in place
        fh.truncate(0)
        fh.write("v2\n")
    os.rename(f, mp / "site.conf~")  # backup, then a new file
    (mp / "site.conf").write_text("v3\n")
    os.unlink(mp / "site.conf~")
    src = tmp_path / "new.conf"
    src.write_text("v4\n")
    subprocess.run(["cp", str(src), str(f)], check=True)
    tmp = mp / ".site.conf.tmp"
    tmp.write_text("v5\n")
    subprocess.run(["mv", str(tmp), str(f)], check=True)
    assert f.read_text() == "v5\n"
    log = log_of(mp, "/site.conf")
    kinds = [v["kind"] for v in log]
    assert kinds == ["create", "write", "away", "create", "write", "rename"], kinds
    contents = [content_of(mp, "/site.conf", int(v["revision"]))  # type: ignore[call-overload]
                for v in log if v["kind"] != "away"]
    assert contents == [b"v1\n", b"v2\n", b"v3\n", b"v4\n", b"v5\n"]


def test_cp_a_and_changes_through_a_handle_leave_one_version(embedded: Mount,
                                                            tmp_path: Path) -> None:
    """``cp -a`` creates, writes, then sets times and mode through its descriptor: one
    version, with the content and the final mode.  A file opened, written and fchmod'ed
    is one more version -- each change through the handle brings the same one up to date."""
    mp = embedded.mountpoint
    src = tmp_path / "app.conf"
    src.write_text("listen 80;\n")
    os.chmod(src, 0o640)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    subprocess.run(["cp", "-a", str(src), str(mp / "app.conf")], check=True)
    st = os.stat(mp / "app.conf")
    assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o640, 1_000_000_000)
    log = log_of(mp, "/app.conf")
    assert [v["kind"] for v in log] == ["create"], log
    assert content_of(mp, "/app.conf", int(log[0]["revision"])) == b"listen 80;\n"  # type: ignore[call-overload]

    with open(mp / "app.conf", "r+") as fh:
        fh.write("listen 81;\n")
        fh.flush()
        os.fchmod(fh.fileno(), 0o600)
        os.utime(fh.fileno(), (2_000_000_000, 2_000_000_000))
    log = log_of(mp, "/app.conf")
    assert [v["kind"] for v in log] == ["create", "write"], log
    assert content_of(mp, "/app.conf", int(log[-1]["revision"])) == b"listen 81;\n"  # type: ignore[call-overload]
