"""The Raft store's operator commands against real ``kvfs raft serve`` processes on
loopback: ``kvfs raft member list|add|promote|remove``, ``transfer-leader`` and ``snapshot
save|restore`` -- growing a cluster from one member to three, replacing a dead member with
one that catches up from a snapshot, moving leadership, restoring a saved snapshot into a
new cluster, and refusing bad requests with one line and nothing changed.  Plus the pure
parts: the membership-change context, the member table, the snapshot file format.

Every command-line call is a real ``python -m kvfs.cli.main`` process.  Members run with a
50 ms tick and 20-tick elections (a second), generous for a loaded two-core machine, and
no health and metrics port.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from raft_cluster import MemberProcesses, status, wait_leader

from kvfs.kv.api import Put
from kvfs.raft import ConfChange, ConfChangeKind, ConfState, NodeId, confchange
from kvfs.raftkv.members import ChangeContext, MembersChanged, MemberTable
from kvfs.raftkv.snapfile import (
    SnapshotFileError,
    decode_snapshot_file,
    encode_snapshot_file,
)
from kvfs.raftkv.statemachine import ReplicatedKV, encode_command

SERVE_FLAGS = ["--tick-ms", "50", "--election-ticks", "20", "--listen-metrics", "off"]


def kvfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvfs.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


def ok(*args: str) -> str:
    proc = kvfs(*args)
    assert proc.returncode == 0, f"kvfs {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def refused(*args: str, expect: str) -> str:
    """Run a command that must fail with one line on stderr naming ``expect``."""
    proc = kvfs(*args)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: error:"), proc.stderr
    assert expect in lines[0], proc.stderr
    return lines[0]


class Members(MemberProcesses):
    """Members whose cluster grows and shrinks, each started with the flags a test gives
    (those of a new cluster, or those ``member add`` printed) besides ``SERVE_FLAGS``."""

    def start(self, name: str, flags: list[str], *, snapshot_count: int = 10_000) -> None:
        """Start ``name`` and wait until it listens."""
        self.launch(name, self.serve_argv(name, *flags, *SERVE_FLAGS,
                                          "--snapshot-count", str(snapshot_count)))


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    with Members(tmp_path, "test-ops") as m:
        yield m


async def write_keys(m: Members, names: tuple[str, ...], keys: range,
                     tag: str) -> dict[bytes, bytes]:
    engine = m.engine(*names)
    written = {}
    try:
        for i in keys:
            key, value = b"k%04d" % i, f"{tag} {i}".encode()
            assert (await engine.commit([], [Put(key, value)])).succeeded
            written[key] = value
    finally:
        await engine.aclose()
    return written


async def items_of(m: Members, name: str, revision: int = 0) -> dict[bytes, bytes]:
    """Every key as ``name`` alone holds it, once it has reached ``revision``."""
    engine = m.engine(name, timeout=30)
    try:
        with trio.fail_after(60):
            while await engine.current_revision() < revision:
                await trio.sleep(0.05)
        result = await engine.range(b"", b"\x00")
        return {kv.key: kv.value for kv in result.kvs}
    finally:
        await engine.aclose()


async def caught_up(m: Members, name: str, leader: str) -> None:
    """Wait until ``name`` has applied everything ``leader`` had committed."""
    with trio.fail_after(60):
        target = (await status(m, leader) or {}).get("commit", 0)
        while True:
            s = await status(m, name)
            if s is not None and target and s["applied"] >= target:
                return
            await trio.sleep(0.1)


def member_list(m: Members, *names: str) -> dict[str, Any]:
    return json.loads(ok("raft", "member", "list", m.url(*names), "--json"))


def add_flags(out: str) -> list[str]:
    """The serve flags ``member add`` printed (its last line)."""
    flags = shlex.split(out.strip().splitlines()[-1])
    assert "--initial-cluster-state" in flags and "existing" in flags, out
    return flags


# -- growing and shrinking ---------------------------------------------------------------------


def test_grow_from_one_member_to_three_then_lose_the_first(members: Members) -> None:
    m = members
    m.add_loopback("m1", "m2", "m3")
    m.start("m1", m.new_cluster_flags("m1", ("m1",)))
    written = trio.run(write_keys, m, ("m1",), range(30), "first")

    # m2 joins as a learner, with the flags `member add` prints, and is promoted once it
    # has caught up.
    out = ok("raft", "member", "add", m.url("m1"), "m2", "--peer-url", m.peer_url("m2"),
             "--client-url", m.endpoint("m2"), "--learner")
    assert "learner" in out.splitlines()[0], out
    flags = add_flags(out)
    assert flags[flags.index("--initial-cluster") + 1] == \
        f"m1={m.peer_url('m1')},m2={m.peer_url('m2')}"
    listed = member_list(m, "m1")
    assert {(x["name"], x["learner"]) for x in listed["members"]} == {("m1", False),
                                                                      ("m2", True)}
    m.start("m2", flags)
    trio.run(caught_up, m, "m2", "m1")
    ok("raft", "member", "promote", m.url("m1"), "m2")

    # m3 joins as a voter directly; the request goes to m2, which is not the leader.
    flags = add_flags(ok("raft", "member", "add", m.url("m2"), "m3", "--peer-url",
                         m.peer_url("m3"), "--client-url", m.endpoint("m3")))
    m.start("m3", flags)
    written.update(trio.run(write_keys, m, ("m1",), range(30, 40), "second"))
    trio.run(caught_up, m, "m3", "m1")
    listed = member_list(m, "m3")
    assert sorted((x["name"], x["learner"], x["peer_url"], x["client_url"])
                  for x in listed["members"]) == [
        (n, False, m.peer_url(n), m.endpoint(n)) for n in ("m1", "m2", "m3")]
    assert [x["name"] for x in listed["members"] if x["leader"]] == ["m1"]
    table = ok("raft", "member", "list", m.url("m2"))
    assert table.splitlines()[0].split() == ["ID", "NAME", "PEER", "URL", "CLIENT", "URL",
                                             "ROLE", "LEADER"], table
    assert len(table.splitlines()) == 4, table

    # The first member dies: the two others elect a leader, keep every key, take writes.
    m.kill("m1")
    written.update(trio.run(write_keys, m, ("m2", "m3"), range(40, 50), "after m1"))
    for name in ("m2", "m3"):
        assert trio.run(items_of, m, name, 50) == written


def test_replace_a_dead_member_and_move_leadership(members: Members) -> None:
    m = members
    names = ("m1", "m2", "m3")
    m.add_loopback(*names, "m4", "m5")
    for name in names:
        m.start(name, m.new_cluster_flags(name, names), snapshot_count=10)
    written = trio.run(write_keys, m, names, range(60), "before")

    # m3 dies for good (a follower, so the leader can stay put): remove it, add m4.
    leader, _ = trio.run(wait_leader, m, names)
    dead = next(n for n in ("m3", "m2") if n != leader)
    alive = tuple(n for n in names if n != dead)
    m.kill(dead)
    ok("raft", "member", "remove", m.url(*alive), dead)
    assert {x["name"] for x in member_list(m, *alive)["members"]} == set(alive)
    written.update(trio.run(write_keys, m, alive, range(60, 80), "after removal"))
    flags = add_flags(ok("raft", "member", "add", m.url(*alive), "m4", "--peer-url",
                         m.peer_url("m4"), "--client-url", m.endpoint("m4")))
    m.start("m4", flags, snapshot_count=10)
    # The leader's log was compacted long ago (a snapshot every 10 entries): m4 can only
    # have caught up from a snapshot.
    assert trio.run(items_of, m, "m4", 80) == written
    assert "the member table now is a snapshot's" in m.log_tail("m4"), m.log_tail("m4")

    # Leadership moves to a named member -- m4, the newest -- and never to a learner.
    ok("raft", "transfer-leader", m.url(*alive), "m4")
    assert [x["name"] for x in member_list(m, "m4")["members"] if x["leader"]] == ["m4"]
    ok("raft", "member", "add", m.url("m4"), "m5", "--peer-url", m.peer_url("m5"),
       "--client-url", m.endpoint("m5"), "--learner")
    refused("raft", "transfer-leader", m.url(*alive), "m5", expect="is a learner")
    # m5 never started, so it is far behind: promoting it is refused.
    refused("raft", "member", "promote", m.url("m4"), "m5", expect="not caught up")
    written.update(trio.run(write_keys, m, ("m4",), range(80, 85), "under m4"))
    for name in (*alive, "m4"):
        assert trio.run(items_of, m, name, 85) == written


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshot_save_and_restore_into_a_new_cluster(members: Members,
                                                      tmp_path: Path) -> None:
    m = members
    m.add_loopback("s1", "r1", "r2", "r3")
    m.start("s1", m.new_cluster_flags("s1", ("s1",)))
    written = trio.run(write_keys, m, ("s1",), range(40), "saved")
    snap = tmp_path / "backup.snap"
    out = ok("raft", "snapshot", "save", m.url("s1"), str(snap))
    assert "index" in out and "xxh64" in out, out
    assert snap.exists() and not Path(f"{snap}.tmp").exists()
    m.kill("s1")

    # A damaged copy is refused, and nothing is written.
    data = snap.read_bytes()
    truncated, flipped = tmp_path / "truncated.snap", tmp_path / "flipped.snap"
    truncated.write_bytes(data[:len(data) // 2])
    flipped.write_bytes(data[:100] + bytes([data[100] ^ 0x40]) + data[101:])
    new = ("r1", "r2", "r3")
    cluster = ",".join(f"{n}={m.peer_url(n)}" for n in new)
    clients = ",".join(f"{n}={m.endpoint(n)}" for n in new)

    def restore(file: Path, name: str, *extra: str) -> list[str]:
        return ["raft", "snapshot", "restore", str(file), "--name", name,
                "--data-dir", str(tmp_path / name), "--initial-cluster", cluster,
                "--initial-cluster-clients", clients, "--initial-cluster-token", "restored",
                *extra]

    refused(*restore(truncated, "r1"), expect="truncated")
    refused(*restore(flipped, "r1"), expect="damaged")
    assert not (tmp_path / "r1").exists()

    for name in new:
        ok(*restore(snap, name))
    refused(*restore(snap, "r1"), expect="already holds a Raft member")
    m.token = "restored"
    for name in new:
        m.start(name, m.new_cluster_flags(name, new))
    # The new cluster holds the snapshot's keys and its own members, and takes writes.
    listed = member_list(m, *new)
    assert sorted(x["name"] for x in listed["members"]) == list(new)
    assert listed["cluster_token"] == "restored"
    written.update(trio.run(write_keys, m, new, range(40, 45), "restored"))
    for name in new:
        assert trio.run(items_of, m, name, 45) == written


# -- refusals ----------------------------------------------------------------------------------


def test_bad_requests_are_refused_with_one_line(members: Members, tmp_path: Path) -> None:
    m = members
    m.add_loopback("m1", "m2", "other")
    m.start("m1", m.new_cluster_flags("m1", ("m1",)))
    url = m.url("m1")
    refused("raft", "member", "remove", url, "nobody", expect="no member named 'nobody'")
    refused("raft", "member", "promote", url, "nobody", expect="no member named")
    refused("raft", "transfer-leader", url, "nobody", expect="no member named")
    refused("raft", "member", "remove", url, "m1", expect="only voter")
    refused("raft", "member", "add", url, "m1", "--peer-url", m.peer_url("m2"),
            "--client-url", m.endpoint("m2"), expect="already exists")
    refused("raft", "member", "add", url, "m2", "--peer-url", m.peer_url("m1"),
            "--client-url", m.endpoint("m2"), expect="already member m1's")
    refused("raft", "member", "add", url, "m2", "--peer-url", "ftp://x",
            "--client-url", m.endpoint("m2"), expect="must look like")
    refused("raft", "member", "add", url, "m2", "--peer-url",
            f"https://127.0.0.1:{m.addresses['m2'].peer_port}", "--client-url", m.endpoint("m2"),
            expect="peer URLs are http")
    refused("raft", "member", "promote", url, "m1", expect="already a voter")
    refused("raft", "member", "list", "raft://nowhere", expect="raft")
    # Nothing changed.
    assert [x["name"] for x in member_list(m, "m1")["members"]] == ["m1"]

    # An unreachable cluster fails after the URL's timeout, not before and not never.
    started = time.monotonic()
    refused("raft", "member", "list", m.url("other", timeout=2), expect="unavailable")
    print(f"member list of an unreachable cluster gave up after "
          f"{time.monotonic() - started:.1f} s (timeout=2)")

    # A member whose peer URL disagrees with the member table is refused at start.
    m.stop_all()
    moved = m.new_cluster_flags("m1", ("m1",))
    moved[moved.index("--initial-cluster") + 1] = f"m1={m.peer_url('other')}"
    moved[moved.index("--listen-peer") + 1] = m.peer_url("other")
    proc = kvfs("raft", "serve", "--data-dir", str(tmp_path / "m1"), *moved, *SERVE_FLAGS,
                timeout=60)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "member table says m1's peer URL is" in proc.stderr, proc.stderr

    # Restore refuses a directory in use and bad flags, writing nothing.
    snap = tmp_path / "s.snap"
    snap.write_bytes(encode_snapshot_file(3, ReplicatedKV().snapshot())[0])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    base = ["raft", "snapshot", "restore", str(snap), "--initial-cluster",
            f"r1={m.peer_url('m2')}", "--initial-cluster-token", "t"]
    refused(*base, "--name", "r1", "--data-dir", str(tmp_path / "busy"), expect="not empty")
    refused(*base, "--name", "r9", "--data-dir", str(tmp_path / "r9"),
            expect="does not name this member")
    refused("raft", "snapshot", "restore", str(tmp_path / "missing.snap"), "--name", "r1",
            "--data-dir", str(tmp_path / "r1"), "--initial-cluster",
            f"r1={m.peer_url('m2')}", "--initial-cluster-token", "t", expect="cannot read")
    assert not (tmp_path / "r9").exists() and not (tmp_path / "r1").exists()


# -- the pure parts ----------------------------------------------------------------------------


def test_a_conf_change_context_round_trips_and_an_empty_one_encodes_as_before() -> None:
    plain = ConfChange(ConfChangeKind.REMOVE, NodeId(7))
    assert plain.encode() == bytes([2]) + (7).to_bytes(8, "big")
    assert ConfChange.decode(plain.encode()) == plain
    context = ChangeContext("m2", "http://h:1", "h:2", 5, 6)
    change = ConfChange(ConfChangeKind.ADD_LEARNER, NodeId(9), context.encode())
    decoded = ConfChange.decode(change.encode())
    assert decoded == change and ChangeContext.decode(decoded.context) == context
    assert ChangeContext.decode(b"\xc1 not msgpack") == ChangeContext()
    assert ChangeContext.decode(b"\x93\x01\x02\x03") == ChangeContext()
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x00")


def test_the_member_table_mirrors_the_cores_configuration() -> None:
    table, conf = MemberTable(), ConfState()
    changes = [(ConfChangeKind.ADD_VOTER, 1), (ConfChangeKind.ADD_LEARNER, 2),
               (ConfChangeKind.ADD_LEARNER, 2), (ConfChangeKind.ADD_VOTER, 2),
               (ConfChangeKind.REMOVE, 3), (ConfChangeKind.ADD_LEARNER, 1),
               (ConfChangeKind.REMOVE, 1), (ConfChangeKind.REMOVE, 2)]
    for kind, node in changes:
        change = ConfChange(kind, NodeId(node))
        changed = table.apply(change, ChangeContext(name=f"n{node}"))
        after = confchange.apply(conf, change)
        assert changed == (after != conf)
        conf = after
        assert table.conf_state() == conf
    assert [m.name for m in table] == ["n2"]  # the promotion kept the name


def test_the_member_table_is_in_the_snapshot_and_changes_answer_retries() -> None:
    kv = ReplicatedKV()
    seen: list[MembersChanged] = []
    kv.member_listeners.append(seen.append)
    add = ConfChange(ConfChangeKind.ADD_VOTER, NodeId(5),
                     ChangeContext("m5", "http://h:1", "h:2", 11, 1).encode())
    first = kv.apply_conf_change(1, add.encode())
    assert first.fresh and first.result is not None and first.result.succeeded
    again = kv.apply_conf_change(2, add.encode())  # a retry committed twice
    assert not again.fresh and again.result == first.result
    kv.apply(3, encode_command(11, 2, ("txn", [], [(b"k", b"v", 0)], [])))
    copy = ReplicatedKV()
    copy.member_listeners.append(seen.append)
    copy.restore(3, kv.snapshot())
    assert copy.members == kv.members and copy.members.find("m5") is not None
    assert copy.members.find(f"{5:x}") == copy.members.find("m5")
    assert [(c.removed, c.replaced) for c in seen] == [(None, False), (None, True)]


def test_snapshot_files_refuse_every_damage() -> None:
    data, digest = encode_snapshot_file(42, b"payload" * 100)
    snap = decode_snapshot_file(data, "f")
    assert (snap.index, snap.payload, snap.hash) == (42, b"payload" * 100, digest)
    for bad, why in [(data[:-1], "truncated"), (data + b"x", "too long"),
                     (b"x" + data[1:], "not a kvfs Raft snapshot"), (data[:20], "truncated"),
                     (data[:60] + bytes([data[60] ^ 1]) + data[61:], "damaged")]:
        with pytest.raises(SnapshotFileError, match=why):
            decode_snapshot_file(bad, "f")
