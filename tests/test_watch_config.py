"""``kvfs watch --config FILE``: several trees watched by one process, and bad files.

Two FUSE mounts of one etcd volume act as two hosts, as in test_watch.py: host A edits two
trees, one ``kvfs watch --config`` process on host B must act on each tree on its own (its
check and reload, once per change), and ``kvfs status`` shows one record per tree.  Bad
config files are parsed without a mount where they can be, and through the command where
the paths matter.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from etcd_cluster import etcd_procs, etcd_single
from mounting import KVFS, Mount, kvfs
from test_watch import Hooks, assert_one_line_error, hosts, lines, wait_until, watchers

from kvfs.watch import config

__all__ = ["etcd_procs", "etcd_single", "hosts"]  # fixtures used by this module

DEFAULTS = config.Defaults("host-x", 15.0, 500.0, 30.0)


def hooks_in(d: Path) -> Hooks:
    d.mkdir()
    return Hooks(d)


def runs(log: Path, n: int) -> Callable[[], bool]:
    return lambda: len(lines(log)) == n


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "watch.toml"
    p.write_text(text)
    return str(p)


def entry(path: Path | str, hooks: Hooks, extra: str = "") -> str:
    return (f'[[watch]]\npath = "{path}"\ncheck = "{hooks.check}"\n'
            f'reload = "{hooks.reload}"\n{extra}\n')


def test_two_trees_in_one_process(hosts: tuple[Mount, Mount], tmp_path: Path) -> None:
    a, b = hosts
    for tree in ("nginx", "haproxy"):
        (a.mountpoint / tree).mkdir()
        (a.mountpoint / tree / "main.conf").write_text(f"{tree} v1\n")
    hn, hh = hooks_in(tmp_path / "nginx"), hooks_in(tmp_path / "haproxy")
    cfg = write(tmp_path, 'host = "host-b"\nlease_ttl = 2\n'
                + entry(b.mountpoint / "nginx", hn, "quiet_ms = 300")
                + entry(b.mountpoint / "haproxy", hh, "quiet_ms = 300\ntimeout = 10"))
    log = tmp_path / "watch.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*KVFS, "watch", "--config", cfg], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        # Each tree is checked and reloaded once on start.
        wait_until(runs(hn.reload_log, 1), "initial reload of nginx")
        wait_until(runs(hh.reload_log, 1), "initial reload of haproxy")
        recs = watchers(a.mountpoint)
        assert sorted((r["host"], r["path"]) for r in recs) == [
            ("host-b", "/haproxy"), ("host-b", "/nginx")]

        # A change to one tree acts on that tree only.
        (a.mountpoint / "nginx" / "main.conf").write_text("nginx v2\n")
        wait_until(runs(hn.reload_log, 2), "reload of nginx after a change")
        assert "nginx v2" in lines(hn.check_log)[1]
        (a.mountpoint / "haproxy" / "main.conf").write_text("BROKEN\n")
        wait_until(runs(hh.check_log, 2), "check of the broken haproxy config")

        def failed() -> bool:
            return {str(r["path"]): r["result"] for r in watchers(a.mountpoint)} == {
                "/nginx": "ok", "/haproxy": "check failed"}

        wait_until(failed, "the failed check in haproxy's record")
        assert len(lines(hh.reload_log)) == 1 and len(lines(hn.check_log)) == 2
        print(kvfs("status", str(a.mountpoint)).stdout)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        print(log.read_text()[-3000:])
    assert watchers(a.mountpoint) == []


def test_once_with_a_config(hosts: tuple[Mount, Mount], tmp_path: Path) -> None:
    _, b = hosts
    for tree in ("x", "y"):
        (b.mountpoint / tree).mkdir()
    hx, hy = hooks_in(tmp_path / "x"), hooks_in(tmp_path / "y")
    cfg = write(tmp_path, entry(b.mountpoint / "x", hx) + entry(b.mountpoint / "y", hy))
    res = kvfs("watch", "--config", cfg, "--once", check=False)
    assert res.returncode == 0, res.stderr
    assert f"{b.mountpoint / 'x'}: revision" in res.stderr
    assert len(lines(hx.reload_log)) == 1 and len(lines(hy.reload_log)) == 1
    (b.mountpoint / "y" / "a.conf").write_text("BROKEN\n")
    res = kvfs("watch", "--config", cfg, "--once", check=False)
    assert res.returncode == 2, res.stderr
    assert len(lines(hx.reload_log)) == 2 and len(lines(hy.reload_log)) == 1


def test_bad_config_through_the_command(hosts: tuple[Mount, Mount], tmp_path: Path) -> None:
    _, b = hosts
    hooks = Hooks(tmp_path)
    good = write(tmp_path, entry(b.mountpoint, hooks))
    assert_one_line_error(
        kvfs("watch", str(b.mountpoint), "--config", good, "--once", check=False),
        "give one or the other")
    assert_one_line_error(
        kvfs("watch", "--config", good, "--check", "true", "--once", check=False),
        "give one or the other")
    assert_one_line_error(kvfs("watch", "--once", check=False), "--config FILE")
    assert_one_line_error(kvfs("watch", str(b.mountpoint), "--check", "true", "--once",
                               check=False), "--reload")
    assert_one_line_error(kvfs("watch", "--config", str(tmp_path / "none.toml"), "--once",
                               check=False), "none.toml")
    cases = {
        entry(tmp_path, hooks): "entry 1 (" + str(tmp_path) + "): ",
        entry(b.mountpoint, hooks) + entry(b.mountpoint / "missing", hooks):
            "entry 2 (" + str(b.mountpoint / "missing") + "): ",
        entry(b.mountpoint, hooks) + entry(f"{b.mountpoint}/.", hooks): "watched twice",
    }
    for text, words in cases.items():
        cfg = write(tmp_path, text)
        res = kvfs("watch", "--config", cfg, "--once", check=False)
        assert res.returncode == 1
        assert_one_line_error(res, cfg, words)
    assert not hooks.reload_log.exists() and not hooks.check_log.exists()


@pytest.mark.parametrize("text, words", [
    ('[[watch]]\npath = "/a"\ncheck = "c"\n', "entry 1 (/a): missing 'reload'"),
    ('[[watch]]\npath = "/a"\ncheck = "c"\nreload = "r"\nrelaod = "r"\n',
     "entry 1 (/a): unknown key 'relaod'"),
    ('[[watch]]\npath = "/a"\ncheck = "c"\nreload = "r"\n'
     '[[watch]]\npath = "/b"\ncheck = "c"\nreload = "r"\ntimeout = "30"\n',
     "entry 2 (/b): timeout must be a positive number"),
    ('[[watch]]\npath = "/a"\ncheck = "c"\nreload = "r"\nquiet_ms = 0\n',
     "quiet_ms must be a positive number"),
    ('[[watch]]\npath = "/a"\ncheck = "c"\nreload = "r"\ntimeout = true\n',
     "timeout must be a positive number"),
    ('[[watch]]\npath = 3\ncheck = "c"\nreload = "r"\n', "entry 1: path must be"),
    ('[[watch]]\npath = "/a"\ncheck = ""\nreload = "r"\n', "check must be a non-empty"),
    ('[[watch]]\npath = "/a"\ncheck = "c"\nreload = "r"\n'
     '[[watch]]\npath = "/a/"\ncheck = "c"\nreload = "r"\n', "watched twice"),
    ('hosts = "h"\n', "unknown key 'hosts'"),
    ('host = ""\n[[watch]]\npath = "/a"\ncheck = "c"\nreload = "r"\n', "host must be"),
    ('lease_ttl = -1\n', "lease_ttl must be a positive number"),
    ('host = "h"\n', "no [[watch]] entries"),
    ('watch = []\n', "no [[watch]] entries"),
    ('watch = "x"\n', "array of tables"),
    ('[[watch]\n', "not valid TOML"),
])
def test_bad_config_files(tmp_path: Path, text: str, words: str) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as e:
        config.load(cfg, DEFAULTS)
    msg = str(e.value)
    assert msg.startswith(f"{cfg}: ") and words in msg and "\n" not in msg, msg


def test_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'lease_ttl = 4\n[[watch]]\npath = "/a"\ncheck = "c"\n'
                          'reload = "r"\ntimeout = 7\n[[watch]]\npath = "/b"\ncheck = "c"\n'
                          'reload = "r"\nquiet_ms = 100\n')
    wf = config.load(cfg, DEFAULTS)
    assert (wf.host, wf.lease_ttl) == ("host-x", 4.0)
    assert [(e.path, e.quiet_ms, e.timeout) for e in wf.entries] == [
        ("/a", 500.0, 7.0), ("/b", 100.0, 30.0)]
    example = Path(__file__).parent.parent / "examples" / "kvfs-watch.toml"
    assert [e.path for e in config.load(str(example), DEFAULTS).entries] == [
        "/etc/nginx", "/etc/haproxy"]
