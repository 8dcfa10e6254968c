"""The Raft store's space quota (``kvfs raft serve --quota-bytes``).

Unit level, on :class:`~kvfs.raftkv.statemachine.ReplicatedKV`: the size it keeps is the
keys and values held after any mix of commands, a commit that would take it beyond its
entry's quota is refused with a result every member computes alike, deletes and shrinking
commits still go through, a refused command's retry stays refused, and a snapshot restores
the same size.

End to end: a real ``kvfs raft serve`` member with a tiny quota takes writes through
``raft://`` until ``NoSpace``, then a delete succeeds; a kvfs mount of a volume on it gets
ENOSPC from a write, and deleting a file there works.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mounting import Mount, kvfs
from test_raft_metrics import one_member

from kvfs.kv.api import Delete, NoSpace, Put, prefix_end
from kvfs.raftkv.statemachine import ReplicatedKV, encode_command
from kvfs.volume import open_engine


def put(key: bytes, value: bytes, lease: int = 0) -> tuple[object, ...]:
    return ("txn", [], [(key, value, lease)], [])


def delete(key: bytes, end: bytes | None = None) -> tuple[object, ...]:
    return ("txn", [], [], [(key, end)])


class Member:
    """One ReplicatedKV fed entries the way a node feeds them."""

    def __init__(self) -> None:
        self.kv = ReplicatedKV()
        self.index = 0
        self.seq = 0

    def run(self, command: tuple[object, ...], quota: int = 0, *, client: int = 7,
            seq: int | None = None):  # type: ignore[no-untyped-def]
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.index += 1
        return self.kv.apply(self.index, encode_command(client, seq, command, quota))


def held(kv: ReplicatedKV) -> int:
    return sum(len(k) + len(e.value) for k, e in kv.state.snapshot_items())


def test_size_is_the_keys_and_values_held_after_any_commands() -> None:
    rng = random.Random(5)
    m = Member()
    lease = m.run(("lease_grant", 60.0)).result.lease_id
    keys = [b"k%02d" % i for i in range(30)]
    for _ in range(2000):
        roll = rng.random()
        key = rng.choice(keys)
        if roll < 0.5:
            puts = [(rng.choice(keys), b"v" * rng.randrange(0, 50),
                     lease if rng.random() < 0.2 else 0) for _ in range(rng.randrange(1, 4))]
            deletes = [(rng.choice(keys), None)] if rng.random() < 0.3 else []
            compares = [(key, rng.choice([0, m.kv.state.revision]))] if rng.random() < 0.2 else []
            m.run(("txn", compares, puts, deletes))
        elif roll < 0.75:
            m.run(delete(key))
        elif roll < 0.85:
            end = rng.choice(keys)
            m.run(delete(min(key, end), max(key, end)))
        elif roll < 0.9:
            m.run(("lease_revoke", lease))
            lease = m.run(("lease_grant", 60.0)).result.lease_id
        else:
            m.run(delete(b"k", prefix_end(b"k")))
        assert m.kv.size_bytes == held(m.kv)


def test_a_commit_beyond_the_quota_is_refused_and_deletes_still_work() -> None:
    quota = 100
    m = Member()
    for i in range(8):
        applied = m.run(put(b"key%d" % i, b"v" * 6), quota)  # 10 bytes each
        assert applied.refusal is None and applied.result.succeeded
    assert m.kv.size_bytes == 80
    revision = m.kv.state.revision
    refused = m.run(put(b"big", b"x" * 30), quota)
    assert refused.refusal is not None and "quota" in refused.refusal
    assert not refused.result.succeeded and refused.events == []
    assert m.kv.state.revision == revision and m.kv.size_bytes == 80
    assert m.kv.state.get(b"big") is None
    # A failing compare does not matter: the quota refuses first, on every member alike.
    assert m.run(("txn", [(b"nope", 5)], [(b"big", b"x" * 30, 0)], []), quota).refusal
    # Up to the quota exactly is allowed.
    assert m.run(put(b"key8", b"v" * 16), quota).refusal is None
    assert m.kv.size_bytes == 100
    # Growth of one byte is not; keeping the size or shrinking is.
    assert m.run(put(b"key8", b"v" * 17), quota).refusal
    assert m.run(put(b"key8", b"w" * 16), quota).refusal is None
    assert m.run(put(b"key8", b"w" * 2), quota).refusal is None
    # A delete and a put together that free space in sum go through.
    assert m.run(("txn", [], [(b"new", b"x" * 8, 0)], [(b"key0", None), (b"key1", None)]),
                 quota).refusal is None
    assert m.kv.size_bytes == 86 - 20 + 11 == held(m.kv)
    # Deletes are never refused, even above the quota (a lower quota after a restart).
    assert m.run(delete(b"key2"), quota=10).refusal is None
    assert m.kv.size_bytes == held(m.kv) == 67
    # Without a quota in the entry there is no limit.
    assert m.run(put(b"huge", b"x" * 1000)).refusal is None


def test_a_refused_commit_stays_refused_when_retried() -> None:
    m = Member()
    assert m.run(put(b"a", b"x" * 40), 50, seq=1).refusal is None
    first = m.run(put(b"b", b"x" * 40), 50, seq=2)
    assert first.refusal is not None and first.fresh
    m.run(delete(b"a"), 50, client=8, seq=1)  # space is freed by someone else
    retry = m.run(put(b"b", b"x" * 40), 50, seq=2)  # the same (client, seq) again
    assert not retry.fresh and retry.refusal == first.refusal
    assert m.kv.state.get(b"b") is None
    # The refusal survives a snapshot, too.
    other = ReplicatedKV()
    other.restore(m.kv.applied_index, m.kv.snapshot())
    again = other.apply(m.kv.applied_index + 1, encode_command(7, 2, put(b"b", b"x"), 50))
    assert again is not None and again.refusal == first.refusal


def test_size_restored_from_a_snapshot_equals_the_size_before() -> None:
    m = Member()
    for i in range(50):
        m.run(put(b"key%03d" % i, os.urandom(i)))
    m.run(delete(b"key010", b"key020"))
    snapshot = m.kv.snapshot()
    restored = ReplicatedKV()
    restored.restore(m.kv.applied_index, snapshot)
    assert restored.size_bytes == m.kv.size_bytes == held(m.kv) > 0
    # Both go on alike, refusals included.
    index = m.kv.applied_index + 1
    for kv in (m.kv, restored):
        a = kv.apply(index, encode_command(9, 1, put(b"z", b"x" * 10), kv.size_bytes + 5))
        assert a is not None and a.refusal is not None
    assert restored.snapshot() == m.kv.snapshot()


# -- end to end ------------------------------------------------------------------------------


@contextmanager
def member(tmp_path: Path, quota: int) -> Iterator[str]:
    """One ``kvfs raft serve`` member with ``--quota-bytes quota``; yields its raft:// base."""
    member, argv = one_member(tmp_path, "--quota-bytes", str(quota), "--listen-metrics", "off")
    with member:
        member.launch("m1", argv)
        yield f"raft://{member.endpoint('m1')}"


async def test_writes_through_raft_url_until_no_space_then_a_delete(tmp_path: Path) -> None:
    with member(tmp_path, quota=20_000) as base:
        kv = await open_engine(f"{base}/q?timeout=20")
        try:
            n = 0
            with pytest.raises(NoSpace, match="quota"):
                while n < 100:
                    await kv.commit([], [Put(b"k%04d" % n, b"x" * 1000)])
                    n += 1
            assert 15 <= n < 20, n
            assert await kv.get(b"k%04d" % n) is None  # nothing of the refused write
            # Overwriting with the same size keeps the size: allowed at the quota.
            assert (await kv.commit([], [Put(b"k0001", b"y" * 1000)])).succeeded
            assert (await kv.commit([], [], [Delete(b"k0000")])).succeeded
            assert (await kv.commit([], [Put(b"k%04d" % n, b"x" * 1000)])).succeeded
            with pytest.raises(NoSpace):
                await kv.commit([], [Put(b"k%04d" % (n + 1), b"x" * 1000)])
            # A range delete empties it; then writes go on.
            assert (await kv.commit([], [], [Delete(b"k", prefix_end(b"k"))])).succeeded
            assert (await kv.commit([], [Put(b"again", b"x" * 10_000)])).succeeded
        finally:
            await kv.aclose()


@pytest.mark.mount
def test_a_mount_on_a_full_member_gets_enospc_and_can_delete(tmp_path: Path) -> None:
    with member(tmp_path, quota=3 << 20) as base:
        url = f"{base}/vol?timeout=20"
        # Without a history or a trash, which would keep the deleted files' blocks
        # (docs/history.md, docs/trash.md).
        kvfs("format", url, "vol", "--history-days", "0", "--trash-days", "0")
        mnt = tmp_path / "mnt"
        mount = Mount(url, mnt, "orphan_grace=1")
        try:
            (mnt / "small").write_bytes(os.urandom(1 << 20))
            with pytest.raises(OSError) as refused:
                with open(mnt / "big", "wb") as f:
                    for _ in range(8):
                        f.write(os.urandom(1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
            assert refused.value.errno == errno.ENOSPC, refused.value
            # Space can be freed: deleting works on a full store...
            os.unlink(mnt / "small")
            if (mnt / "big").exists():
                os.unlink(mnt / "big")
            assert os.listdir(mnt) == []
            # ...and once the deleted files' blocks are gone (after orphan_grace), a write
            # fits again.
            deadline = time.monotonic() + 60
            while True:
                try:
                    (mnt / "later").write_bytes(os.urandom(1 << 20))
                    break
                except OSError as e:
                    assert e.errno == errno.ENOSPC and time.monotonic() < deadline, e
                    time.sleep(0.5)
            assert (mnt / "later").stat().st_size == 1 << 20
            mount.unmount()
        except BaseException:
            mount.cleanup()
            raise
