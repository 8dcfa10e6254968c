"""Lease-bound roles come back after their lease expires.

A mount's session lease carries three roles (kvfs/meta/session.py): the session key
itself (``SE``), the holds on files it has open after their unlink (``SS``, which other
mounts' cleaners release once ``SE`` is gone), and the revision compactor's ``Ccompactor``
key.  A pause or an outage longer than the TTL expires the lease; each test here expires
it and checks that the role is back once the mount runs again.

The compactor test is end to end: a real mount, SIGSTOPped until etcd has expired its
lease, then continued; compaction must be seen to happen again in etcd.  The others drive
the session, filesystem and cleaner API directly against a real etcd, expiring the lease
by revoking it (what etcd does on expiry), so the order of events is exact.  Two more
check the holders' bookkeeping, which the fault suite found leaking: a hold written while
the file's last handle closes, and a release that meets an outage, must both end released.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio
from etcd_cluster import EtcdProcesses, Member, etcd_procs, etcd_single, unique_prefix
from mounting import Mount, fsck, kvfs

from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    EngineUnavailable,
    KVEngine,
    Put,
    prefix_end,
)
from kvfs.kv.delegating import DelegatingEngine
from kvfs.kv.local import MemoryEngine
from kvfs.meta import keys
from kvfs.meta.compactor import COMPACTOR, Compactor
from kvfs.meta.metadata import Ctx
from kvfs.meta.session import Session, list_sessions
from kvfs.vfs.fs import FileSystem
from kvfs.volume import format_volume, open_engine, open_volume

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

ROOT = keys.ROOT_INO


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``pred`` until it holds (the bound only catches a role that never returns)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def session_keys(url: str) -> dict[int, int]:
    """Session id -> lease of every live session of the volume."""

    async def go() -> dict[int, int]:
        kv = await open_engine(url)
        try:
            res = await kv.range(keys.SESSION_PREFIX, prefix_end(keys.SESSION_PREFIX))
            return {keys.read_u64(x.key, 2): x.lease for x in res.kvs}
        finally:
            await kv.aclose()

    return trio.run(go)


def compacted_past(member: Member, revision: int) -> bool:
    """True once etcd has compacted away every revision before ``revision``."""
    res = member.etcdctl("get", "--rev", str(revision - 1), "any-key", check=False)
    return res.returncode != 0 and "compacted" in res.stderr


def current_revision(member: Member) -> int:
    res = member.etcdctl("endpoint", "status", "-w", "json")
    return int(json.loads(res.stdout)[0]["Status"]["header"]["revision"])


# -- the compactor, end to end ----------------------------------------------------------------


@pytest.mark.mount
def test_compaction_resumes_after_a_mount_outlives_its_lease(etcd_procs: EtcdProcesses,
                                                            tmp_path: Path) -> None:
    # Its own member: compaction is cluster-wide and would disturb other tests' watches.
    member = etcd_procs.member("leases-compactor")
    try:
        url = f"etcd://{member.endpoint}/{unique_prefix('lcomp')}"
        kvfs("format", url, "lcomp")
        m = Mount(url, tmp_path / "m", "session_ttl=2,compact_retain=1")
        try:
            f = m.mountpoint / "f"
            f.write_bytes(b"before")
            rev = current_revision(member)
            wait_for(lambda: compacted_past(member, rev), "compaction by the lone mount")
            (sid, lease), = session_keys(url).items()

            os.kill(m.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: sid not in session_keys(url), "the paused mount's lease expiry")
            finally:
                os.kill(m.pid, signal.SIGCONT)

            f.write_bytes(b"after")  # new revisions to compact
            wait_for(lambda: session_keys(url).get(sid, lease) != lease,
                     "the session registered again on a new lease")
            rev = current_revision(member)
            wait_for(lambda: compacted_past(member, rev), "compaction after the lease expired")
            assert f.read_bytes() == b"after"
            m.unmount()
        finally:
            m.cleanup()
        log = m.log_path.read_text()
        assert f"session {sid} lease expired; registering it again" in log, log[-2000:]
        fsck(url)
    finally:
        member.kill()


async def test_compactor_claim_follows_the_sessions_current_lease(
        caplog: pytest.LogCaptureFixture) -> None:
    kv = MemoryEngine()
    session = await Session.register(kv, "/mnt", ttl=60)
    compactor = Compactor(kv, session, retain=0)
    await compactor.step(0.0)
    assert compactor.compacted > 0
    await kv.lease_revoke(session.lease)  # expiry: the role's key goes with the lease
    assert await kv.get(COMPACTOR) is None
    with caplog.at_level(logging.WARNING, logger="kvfs.compactor"):
        assert not await compactor.is_holder()
    assert "not alive" in caplog.text  # a failed claim says why
    await session.renew()  # the session notices and registers on a new lease
    rev = (await kv.commit([], [Put(b"k", b"v")])).revision
    await compactor.step(1.0)
    holder = await kv.get(COMPACTOR)
    assert holder is not None and holder.lease == session.lease
    assert compactor.compacted == rev


# -- the session ------------------------------------------------------------------------------


class FlakyCommits(DelegatingEngine):
    """Fails the next ``fail`` commits as if the engine were unreachable."""

    def __init__(self, inner: KVEngine) -> None:
        super().__init__(inner)
        self.fail = 0

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        if self.fail:
            self.fail -= 1
            raise EngineUnavailable("injected: commit lost")
        return await super().commit(compares, puts, deletes)


async def test_session_registers_again_even_if_the_first_attempt_fails(
        etcd_single: Member) -> None:
    kv = FlakyCommits(await open_engine(f"etcd://{etcd_single.endpoint}/"
                                        f"{unique_prefix('lsess')}"))
    try:
        session = await Session.register(kv, "/mnt/x", ttl=3)
        async with trio.open_nursery() as nursery:
            await nursery.start(session.keepalive)
            old = session.lease
            kv.fail = 1  # the new lease is granted, but writing SE on it fails once
            await kv.lease_revoke(old)
            with trio.fail_after(30):
                while True:
                    got = await kv.get(keys.session(session.sid))
                    if got is not None:
                        break
                    await trio.sleep(0.05)
            assert got.lease == session.lease != old
            assert [s.sid for s in await list_sessions(kv)] == [session.sid]
            nursery.cancel_scope.cancel()
        await session.close()
    finally:
        await kv.aclose()


# -- holders of unlinked, open files ----------------------------------------------------------


async def test_holds_on_open_unlinked_files_come_back_with_the_session(
        etcd_single: Member) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('lhold')}"
    kv = await open_engine(url)
    await format_volume(kv, "lhold")
    vol_a = await open_volume(url, kv=kv)
    vol_b = await open_volume(url)
    try:
        session = await Session.register(vol_a.kv, "/a", ttl=60, held=vol_a.meta.held)
        vol_a.meta.session_id = session.sid
        fs_a = FileSystem(vol_a.meta, vol_a.slices)
        # B's cleaner would delete an unheld orphan at once.
        fs_b = FileSystem(vol_b.meta, vol_b.slices, orphan_grace=0)
        vol_b.meta.session_id = session.sid + 1000
        ctx = Ctx(0, 0)
        data = os.urandom(300_000)
        fh, ino, _ = await fs_a.create(ctx, ROOT, b"f", 0o644, os.O_CREAT | os.O_WRONLY)
        await fs_a.write(fh, 0, data)
        await fs_a.fsync(fh)
        await fs_a.unlink(ROOT, b"f")  # open on A: A holds it
        hold = keys.sustained(session.sid, ino)
        assert await kv.get(hold) is not None

        await kv.lease_revoke(session.lease)  # A's lease expires...
        await fs_b.cleaner.release_dead_sessions()  # ...and B releases A's holds
        assert await kv.get(hold) is None

        await session.renew()  # A runs again: registers, and holds what it has open
        assert await kv.get(hold) is not None
        await fs_b.cleaner.run_once()  # past the grace period: held, so kept
        assert await fs_a.read(fh, 0, len(data) + 1) == data

        await fs_a.release(fh)  # the last close lets the data go
        await fs_b.cleaner.run_once()
        assert await kv.get(keys.attr(ino)) is None
        await session.close()
    finally:
        await vol_b.aclose()
        await vol_a.aclose()


async def test_a_hold_taken_while_the_last_handle_closes_is_released(
        etcd_single: Member) -> None:
    """The watch tells a mount that another mount unlinked a file it has open, and the
    mount writes its hold; if its last handle closes while that write is on the wire, the
    close must still release the hold, or the file's data stays until the mount ends."""
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('lhrace')}"
    kv = await open_engine(url)
    await format_volume(kv, "lhrace")
    vol_a = await open_volume(url, kv=kv, session_id=1)
    vol_b = await open_volume(url, session_id=2)
    try:
        fs_a = FileSystem(vol_a.meta, vol_a.slices)
        fs_b = FileSystem(vol_b.meta, vol_b.slices)
        fh, ino, _ = await fs_a.create(Ctx(0, 0), ROOT, b"f", 0o644, os.O_CREAT | os.O_WRONLY)
        await fs_b.unlink(ROOT, b"f")

        # Hold A's write of its SS key until A's last close has run.
        commit = vol_a.meta.kv.commit
        on_wire, closed = trio.Event(), trio.Event()

        async def gated(compares: Sequence[Compare], puts: Sequence[Put],
                        deletes: Sequence[Delete] = ()) -> CommitResult:
            if any(p.key.startswith(keys.SUSTAINED_PREFIX) for p in puts):
                on_wire.set()
                await closed.wait()
            return await commit(compares, puts, deletes)

        vol_a.meta.kv.commit = gated  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs_a.note_orphaned, ino)  # what A's watch does
            await on_wire.wait()
            await fs_a.release(fh)
            closed.set()
        assert not fs_a.is_open(ino)
        res = await kv.range(keys.SUSTAINED_PREFIX, prefix_end(keys.SUSTAINED_PREFIX))
        assert res.kvs == [], "A closed the file but still holds it"
        assert ino not in vol_a.meta.held
    finally:
        await vol_b.aclose()
        await vol_a.aclose()


async def test_a_hold_whose_release_failed_is_released_later(etcd_single: Member) -> None:
    """The last close of an unlinked file releases the mount's hold; if the engine is
    unreachable just then, the release must happen later, not never."""
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('lhfail')}"
    flaky = FlakyCommits(await open_engine(url))
    await format_volume(flaky, "lhfail")
    vol = await open_volume(url, kv=flaky, session_id=1)
    try:
        fs = FileSystem(vol.meta, vol.slices)
        fh, ino, _ = await fs.create(Ctx(0, 0), ROOT, b"f", 0o644, os.O_CREAT | os.O_WRONLY)
        await fs.unlink(ROOT, b"f")  # open here: this mount holds it
        assert ino in vol.meta.held
        flaky.fail = 1  # the release's commit meets an outage
        with pytest.raises(EngineUnavailable):
            await fs.release(fh)
        assert not fs.is_open(ino)
        await fs.cleaner.run_once()  # the engine is back: a cleaner round runs
        await fs.cleaner.run_once()
        res = await flaky.range(keys.SUSTAINED_PREFIX, prefix_end(keys.SUSTAINED_PREFIX))
        assert res.kvs == [], "the file is closed, but its hold is never released"
    finally:
        await vol.aclose()
