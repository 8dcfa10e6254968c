"""kvfs.raftkv.disk: a Raft member's durable state, on real files.

Round trips through close and reopen; a torn tail cut at every byte of the last batch; damage
refused with the file and offset named; snapshots, compaction and the fallback to an older
snapshot; the torn-write cases around snapshots; locking and identity; the sync discipline
(one fdatasync per save, unsynced records kept in order); a seeded model check against
MemoryStorage; a one-member RawNode driven across restarts and crashes mid-write; and the
same node on powerfs (``tests/powerfs.py``), whose power is cut at random syncs: what was
not synced is lost, and nothing acknowledged may be.  ``KVFS_RAFT_POWER_CUTS`` sets the
number of cuts (default 4), ``KVFS_POWER_SEED`` replays one run.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import kvfs.kv.wal as wal_module
from kvfs.kv.api import StoreCorrupt, StoreLocked
from kvfs.kv.wal import HEADER, frame, list_segments, scan
from kvfs.raft import (
    Config,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogCompacted,
    MemoryStorage,
    NodeId,
    RawNode,
    Snapshot,
    SnapshotMeta,
)
from kvfs.raftkv.disk import IDENTITY, RaftDisk, RaftDiskError

POWER_CUTS = int(os.environ.get("KVFS_RAFT_POWER_CUTS", "4"))
POWER_SEED = int(os.environ.get("KVFS_POWER_SEED", str(random.randrange(1 << 32))))

TOKEN = "cluster-7f3a"
CONF = ConfState(frozenset({NodeId(1)}))


def E(term: int, index: int, data: bytes | None = None) -> Entry:
    return Entry(term, index, EntryKind.NORMAL, data if data is not None else b"e%d" % index)


def run(first: int, last: int, term: int) -> list[Entry]:
    return [E(term, i) for i in range(first, last + 1)]


def snap(index: int, term: int, data: bytes | None = None) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONF),
                    data if data is not None else b"state@%d" % index)


def state(disk: RaftDisk) -> tuple[object, ...]:
    """Everything the core can read, for comparisons."""
    first, last = disk.first_index(), disk.last_index()
    return (disk.hard_state, disk.initial_state(), disk.snapshot(), first, last,
            disk.term(first - 1), disk.entries(first, last + 1))


def wal_bytes(directory: Path) -> list[tuple[str, bytes]]:
    return [(path, Path(path).read_bytes()) for _, path in list_segments(str(directory))]


def last_segment(directory: Path) -> Path:
    return Path(list_segments(str(directory))[-1][1])


def record_ends(path: Path) -> list[int]:
    """The offset after each record of a log file."""
    payloads, _ = scan(path.read_bytes(), str(path), allow_torn=False)
    ends, off = [], 0
    for p in payloads:
        off += HEADER.size + len(p)
        ends.append(off)
    return ends


def decoded(path: Path) -> list[list[object]]:
    payloads, _ = scan(path.read_bytes(), str(path), allow_torn=False)
    return [msgpack.unpackb(p, raw=False) for p in payloads]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "member"


def create(path: Path, *, keep_entries: int = 5000, segment_bytes: int = 16 << 20
           ) -> RaftDisk:
    return RaftDisk.create(str(path), TOKEN, 1, keep_entries=keep_entries,
                           segment_bytes=segment_bytes)


def reopen(disk: RaftDisk, *, keep_entries: int = 5000, segment_bytes: int = 16 << 20
           ) -> RaftDisk:
    disk.close()
    return RaftDisk.open(disk.directory, keep_entries=keep_entries,
                         segment_bytes=segment_bytes)


# -- round trips -----------------------------------------------------------------------------

def test_hard_state_and_entries_survive_reopen(member: Path) -> None:
    disk = create(member)
    assert (disk.first_index(), disk.last_index(), disk.hard_state) == (1, 0, HardState())
    disk.save(HardState(1, NodeId(1), 0), run(1, 3, 1), None, True)
    disk.save(HardState(2, NodeId(1), 3), run(4, 6, 2), None, True)
    disk.save(HardState(2, NodeId(1), 5), [], None, False)
    before = state(disk)
    assert disk.entries(1, 7) == run(1, 3, 1) + run(4, 6, 2)
    disk = reopen(disk)
    assert state(disk) == before
    assert disk.hard_state == HardState(2, NodeId(1), 5)
    disk.close()


def test_a_conflicting_suffix_replaces_the_persisted_one(member: Path) -> None:
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 2), run(1, 6, 1), None, True)
    disk.save(HardState(2, NodeId(0), 2), [E(2, 4, b"new4"), E(2, 5, b"new5")], None, True)
    expected = run(1, 3, 1) + [E(2, 4, b"new4"), E(2, 5, b"new5")]
    assert disk.last_index() == 5 and disk.entries(1, 6) == expected
    disk = reopen(disk)
    assert disk.last_index() == 5 and disk.entries(1, 6) == expected
    # And again, across a segment boundary: the replacement lands in a newer segment.
    disk = reopen(disk, segment_bytes=1)
    disk.save(None, [E(3, 3, b"newer3")], None, True)
    disk = reopen(disk, segment_bytes=1)
    assert disk.entries(1, 4) == run(1, 2, 1) + [E(3, 3, b"newer3")]
    assert disk.last_index() == 3
    disk.close()


def test_saves_the_core_cannot_make_are_refused_before_writing(member: Path) -> None:
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 2), run(1, 3, 1), None, True)
    before = (state(disk), wal_bytes(member))
    with pytest.raises(ValueError, match="gap"):
        disk.save(None, run(5, 6, 1), None, True)
    with pytest.raises(ValueError, match="beyond"):
        disk.save(HardState(1, NodeId(1), 5), run(4, 4, 1), None, True)
    with pytest.raises(ValueError, match="beyond"):
        # a conflicting suffix shortens the log below the commit it comes with
        disk.save(HardState(2, NodeId(1), 3), [E(2, 2)], None, True)
    with pytest.raises(ValueError, match="contiguous"):
        disk.save(None, [E(1, 4), E(1, 6)], None, True)
    assert (state(disk), wal_bytes(member)) == before
    disk.close()


def test_bootstrap_writes_the_first_configuration_once(member: Path) -> None:
    disk = create(member)
    disk.bootstrap([NodeId(3), NodeId(1), NodeId(2)])
    assert disk.hard_state == HardState(1, NodeId(0), 3)
    assert [e.kind for e in disk.entries(1, 4)] == [EntryKind.CONF_CHANGE] * 3
    with pytest.raises(ValueError, match="empty"):
        disk.bootstrap([NodeId(1)])
    disk.close()


# -- torn tails and damage -------------------------------------------------------------------

def test_a_torn_tail_at_every_offset_of_the_last_batch(member: Path, tmp_path: Path) -> None:
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 1), run(1, 2, 1), None, True)
    first_state = state(disk)
    seg = last_segment(member)
    start = seg.stat().st_size
    disk.save(HardState(1, NodeId(1), 4), [E(1, 3, b"x" * 40), E(1, 4)], None, True)
    full_state = state(disk)
    disk.close()
    ends = record_ends(seg)
    entries_end = ends[-2]  # the batch is [ENTRIES, HARD_STATE]
    assert ends[-1] == seg.stat().st_size and entries_end > start
    torn_hard_state = HardState(1, NodeId(1), 1)
    torn_entries = (torn_hard_state, (torn_hard_state, ConfState())) + full_state[2:]

    for cut in range(start, ends[-1] + 1):
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(member, copy)
        os.truncate(copy / seg.name, cut)
        reopened = RaftDisk.open(str(copy))
        got = state(reopened)
        if cut < entries_end:
            assert got == first_state, cut
        elif cut < ends[-1]:
            assert got == torn_entries, cut  # entries without the hard state after them
        else:
            assert got == full_state
        # The tail is gone for good: what is appended next replays after the good records.
        last = reopened.last_index()
        reopened.save(HardState(2, NodeId(1), last), [E(2, last + 1, b"after")], None, True)
        after = state(reopened)
        reopened = reopen(reopened)
        assert state(reopened) == after, cut
        reopened.close()
        shutil.rmtree(copy)


def test_a_zero_filled_tail_is_torn_not_corrupt(member: Path, caplog: pytest.LogCaptureFixture
                                                ) -> None:
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 2), run(1, 2, 1), None, True)
    before = state(disk)
    disk.close()
    with open(last_segment(member), "ab") as f:
        f.write(bytes(300))
    with caplog.at_level(logging.WARNING):
        disk = RaftDisk.open(str(member))
    assert state(disk) == before
    assert "torn tail" in caplog.text
    disk.close()


def _three_batches(member: Path, **options: int) -> None:
    disk = create(member, **options)
    disk.save(HardState(1, NodeId(1), 1), run(1, 2, 1), None, True)
    disk.save(HardState(1, NodeId(1), 3), run(3, 4, 1), None, True)
    disk.save(HardState(1, NodeId(1), 5), run(5, 6, 1), None, True)
    disk.close()


def test_damage_before_the_tail_is_refused_naming_file_and_offset(member: Path) -> None:
    _three_batches(member)
    seg = last_segment(member)
    ends = record_ends(seg)
    flip(seg, ends[1] + HEADER.size + 2)  # inside the second batch's entries record
    with pytest.raises(StoreCorrupt) as err:
        RaftDisk.open(str(member))
    message = str(err.value)
    assert str(seg) in message and f"offset {ends[1]}" in message and "\n" not in message
    # Refused, not repaired: the file is as it was, and the directory is not left locked.
    with pytest.raises(StoreCorrupt):
        RaftDisk.open(str(member))


def test_damage_at_the_end_of_an_older_segment_is_refused(member: Path) -> None:
    _three_batches(member, segment_bytes=1)  # one batch per segment
    segments = list_segments(str(member))
    assert len(segments) == 3
    older = Path(segments[1][1])
    os.truncate(older, older.stat().st_size - 3)  # torn, but not the last segment
    with pytest.raises(StoreCorrupt, match=f"{older}.*offset"):
        RaftDisk.open(str(member))


def test_a_missing_segment_is_refused(member: Path) -> None:
    _three_batches(member, segment_bytes=1)
    os.unlink(list_segments(str(member))[1][1])
    with pytest.raises(StoreCorrupt, match="missing"):
        RaftDisk.open(str(member))


def test_an_undecodable_record_is_refused_even_at_the_end(member: Path) -> None:
    _three_batches(member)
    seg = last_segment(member)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(frame(msgpack.packb([9, "what"])))  # intact framing, unknown kind
    with pytest.raises(StoreCorrupt, match=f"{seg} is corrupt at offset {size}: undecodable"):
        RaftDisk.open(str(member))


def test_entries_that_do_not_follow_the_log_are_refused(member: Path) -> None:
    _three_batches(member)
    seg = last_segment(member)
    size = seg.stat().st_size
    with open(seg, "ab") as f:  # entry 7 claiming to follow term 9 at index 6 (it is 1)
        f.write(frame(msgpack.packb([1, 7, 9, [[9, 0, b"x"]]])))
    with pytest.raises(StoreCorrupt, match=f"offset {size}: .*term 9.*has term 1 at index 6"):
        RaftDisk.open(str(member))


def test_a_persisted_commit_beyond_the_log_is_refused_not_asserted(member: Path) -> None:
    _three_batches(member)
    with open(last_segment(member), "ab") as f:
        f.write(frame(msgpack.packb([2, 1, 1, 9])))  # HARD_STATE commit 9, log ends at 6
    with pytest.raises(StoreCorrupt, match="commit index 9"):
        RaftDisk.open(str(member))


# -- sync discipline -------------------------------------------------------------------------

@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every fdatasync of a log segment (its file name), every fsync (``fsync``) and
    directory fsync by the log (``dir``), in order."""
    calls: list[str] = []
    real_datasync, real_fsync, real_fsync_dir = (wal_module._datasync, os.fsync,
                                                 wal_module.fsync_dir)

    def datasync(fd: int) -> None:
        calls.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_datasync(fd)

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):  # directories: counted as "dir" by the log
            calls.append("fsync")
        real_fsync(fd)

    def fsync_dir(path: str) -> None:
        calls.append("dir")
        real_fsync_dir(path)

    monkeypatch.setattr(wal_module, "_datasync", datasync)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(wal_module, "fsync_dir", fsync_dir)
    return calls


def test_one_fdatasync_per_save(member: Path, syncs: list[str]) -> None:
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 0), run(1, 1, 1), None, True)  # creates the segment
    syncs.clear()
    for i in range(2, 6):
        disk.save(HardState(1, NodeId(1), i - 1), run(i, i, 1), None, True)
        assert syncs == [last_segment(member).name], i  # one fdatasync, nothing else
        syncs.clear()
    disk.close()


def test_unsynced_records_stay_in_order_and_are_synced_later(member: Path, syncs: list[str]
                                                             ) -> None:
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 0), run(1, 3, 1), None, True)
    syncs.clear()
    disk.save(HardState(1, NodeId(1), 2), [], None, False)  # commit alone: written lazily
    assert syncs == []
    disk.save(HardState(1, NodeId(1), 3), run(4, 4, 1), None, True)
    assert syncs == [last_segment(member).name]  # covers the lazy record too
    assert [r[0] for r in decoded(last_segment(member))] == [1, 2, 2, 1, 2]
    assert decoded(last_segment(member))[2] == [2, 1, 1, 2]
    syncs.clear()
    disk.save(HardState(1, NodeId(1), 4), [], None, False)
    disk.close()  # close makes the lazy record durable
    assert syncs == [last_segment(member).name]
    disk = RaftDisk.open(str(member))
    assert disk.hard_state == HardState(1, NodeId(1), 4)
    disk.close()


def test_a_rotation_syncs_the_older_segment_first(member: Path, syncs: list[str]) -> None:
    disk = create(member, segment_bytes=1)  # every batch starts a new segment
    disk.save(HardState(1, NodeId(1), 0), run(1, 2, 1), None, True)
    syncs.clear()
    disk.save(HardState(1, NodeId(1), 1), [], None, False)
    lazy = last_segment(member).name
    assert syncs == []
    disk.save(HardState(1, NodeId(1), 2), run(3, 3, 1), None, True)
    newest = last_segment(member).name
    assert newest != lazy
    # The lazy segment is synced (and its directory entry) before the next one is written.
    assert syncs == [lazy, "dir", newest, "dir"]
    disk.close()


def test_a_failed_write_stops_the_disk(member: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 1), run(1, 1, 1), None, True)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_datasync", broken)
    with pytest.raises(OSError):
        disk.save(HardState(1, NodeId(1), 2), run(2, 2, 1), None, True)
    assert disk.last_index() == 1  # the mirror only follows durable writes
    monkeypatch.undo()
    with pytest.raises(RaftDiskError, match="earlier write failed"):
        disk.save(None, run(2, 2, 1), None, True)
    disk.close()
    disk = RaftDisk.open(str(member))
    assert disk.last_index() in (1, 2)  # the failed batch may or may not have landed
    disk.close()


# -- snapshots and compaction ----------------------------------------------------------------

def _fill(disk: RaftDisk, last: int, term: int = 1, batch: int = 3) -> None:
    i = disk.last_index() + 1
    while i <= last:
        j = min(i + batch - 1, last)
        disk.save(HardState(term, NodeId(1), j), run(i, j, term), None, True)
        i = j + 1


def snapshot_files(member: Path) -> list[str]:
    return sorted(n for n in os.listdir(member) if n.endswith(".snap"))


def test_snapshot_compaction_and_reopen(member: Path) -> None:
    disk = create(member, keep_entries=5, segment_bytes=200)
    _fill(disk, 60)
    segments_before = list_segments(str(member))
    disk.save_snapshot(snap(50, 1))
    assert disk.snapshot() == snap(50, 1)
    assert disk.first_index() == 46 and disk.last_index() == 60 and disk.term(45) == 1
    with pytest.raises(LogCompacted):
        disk.entries(45, 50)
    segments_after = list_segments(str(member))
    assert len(segments_after) < len(segments_before)
    assert segments_after[0][0] > segments_before[0][0]  # oldest first, whole segments
    before = state(disk)
    disk = reopen(disk, keep_entries=5, segment_bytes=200)
    assert disk.snapshot() == snap(50, 1)
    assert disk.initial_state() == (HardState(1, NodeId(1), 60), CONF)
    assert disk.first_index() <= 46 and disk.last_index() == 60
    assert disk.entries(46, 61) == before[-1]
    assert disk.term(disk.first_index() - 1) == 1
    # More snapshots: only the newest two files stay.
    _fill(disk, 70)
    disk.save_snapshot(snap(65, 1))
    disk.save_snapshot(snap(68, 1))
    assert snapshot_files(member) == [f"snap-{65:016x}-{1:016x}.snap",
                                      f"snap-{68:016x}-{1:016x}.snap"]
    disk = reopen(disk)
    assert disk.snapshot() == snap(68, 1) and disk.last_index() == 70
    disk.close()


def test_save_snapshot_checks_what_it_is_given(member: Path) -> None:
    disk = create(member)
    _fill(disk, 10)
    with pytest.raises(ValueError, match="beyond"):
        disk.save_snapshot(snap(11, 1))
    with pytest.raises(ValueError, match="term"):
        disk.save_snapshot(snap(8, 2))
    disk.save_snapshot(snap(8, 1))
    disk.save_snapshot(snap(5, 1, b"older"))  # not newer: ignored
    assert disk.snapshot() == snap(8, 1) and snapshot_files(member) == [
        f"snap-{8:016x}-{1:016x}.snap"]
    with pytest.raises(ValueError, match="beyond the snapshot"):
        disk.compact(9)
    disk.compact(8)
    assert disk.first_index() == 9
    disk.close()


def test_an_installed_snapshot_replaces_the_log(member: Path) -> None:
    disk = create(member, segment_bytes=150)
    # 1..30, committed up to 5: a deposed leader's entries after that, beyond the snapshot.
    for i in range(1, 31, 3):
        disk.save(HardState(1, NodeId(1), min(i + 2, 5)), run(i, i + 2, 1), None, True)
    assert len(list_segments(str(member))) > 2
    leader = snap(20, 3, b"leader's state")
    disk.save(HardState(3, NodeId(0), 20), [], leader, True)
    assert disk.snapshot() == leader
    assert (disk.first_index(), disk.last_index(), disk.term(20)) == (21, 20, 3)
    # Everything logged before the install is void, so those segments went.
    assert len(list_segments(str(member))) == 1
    disk.save(HardState(3, NodeId(0), 22), run(21, 23, 3), None, True)
    before = state(disk)
    disk = reopen(disk, segment_bytes=150)
    assert state(disk) == before
    # A snapshot and entries in one save: entries at or below the snapshot are dropped.
    disk.save(HardState(4, NodeId(0), 30), run(29, 31, 4), snap(30, 4), True)
    assert (disk.first_index(), disk.last_index(), disk.entries(31, 32)) == (31, 31,
                                                                             [E(4, 31)])
    before = state(disk)
    disk = reopen(disk)
    assert state(disk) == before
    disk.close()


def test_an_install_torn_after_its_snapshot_file(member: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The snapshot file is durable, the INSTALL record (and the rest of the batch) is
    not: the log on disk is the one the snapshot replaced, with another term at its index
    (entries 6..12 of a deposed leader, never committed)."""
    disk = create(member)
    disk.save(HardState(1, NodeId(1), 5), run(1, 12, 1), None, True)
    seg, size = last_segment(member), last_segment(member).stat().st_size
    disk.save(HardState(2, NodeId(0), 8), [], snap(8, 2), True)
    disk.close()
    os.truncate(seg, size)
    with caplog.at_level(logging.WARNING):
        disk = RaftDisk.open(str(member))
    assert "replaced" in caplog.text
    assert disk.snapshot() == snap(8, 2)
    assert (disk.first_index(), disk.last_index()) == (9, 8)  # stale 9..12 discarded
    assert disk.hard_state == HardState(1, NodeId(1), 5)
    # The discard was made durable: entries appended now replay onto the snapshot, not
    # onto the stale log.
    disk.save(HardState(2, NodeId(0), 10), run(9, 10, 2), None, True)
    disk = reopen(disk)
    assert (disk.first_index(), disk.last_index()) == (9, 10)
    assert disk.entries(9, 11) == run(9, 10, 2)
    disk.close()


def test_a_snapshot_torn_before_its_record(member: Path) -> None:
    """save_snapshot's file is durable, its SNAPSHOT record is not."""
    disk = create(member, keep_entries=0)
    _fill(disk, 12)
    seg, size = last_segment(member), last_segment(member).stat().st_size
    disk.save_snapshot(snap(9, 1))
    disk.close()
    os.truncate(seg, size)
    disk = RaftDisk.open(str(member), keep_entries=0)
    assert disk.snapshot() == snap(9, 1)
    assert disk.last_index() == 12 and disk.entries(10, 13) == run(10, 12, 1)
    disk.close()


def test_a_damaged_newest_snapshot_falls_back_while_the_log_covers_it(
        member: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = create(member, keep_entries=100, segment_bytes=150)
    _fill(disk, 50)
    disk.save_snapshot(snap(20, 1))
    disk.save_snapshot(snap(40, 1))
    disk.close()
    newest = member / f"snap-{40:016x}-{1:016x}.snap"
    flip(newest, newest.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        disk = RaftDisk.open(str(member))
    assert "damaged" in caplog.text and str(newest) in caplog.text
    assert disk.snapshot() == snap(20, 1)
    assert disk.first_index() <= 21 and disk.entries(21, 51) == run(21, 50, 1)
    assert not newest.exists() and Path(f"{newest}.damaged").exists()
    disk = reopen(disk)
    assert disk.snapshot() == snap(20, 1) and disk.last_index() == 50
    disk.close()


def test_a_damaged_newest_snapshot_without_the_log_behind_it_is_refused(member: Path) -> None:
    disk = create(member, keep_entries=0, segment_bytes=100)
    _fill(disk, 50)
    disk.save_snapshot(snap(20, 1))
    disk.save_snapshot(snap(40, 1))
    disk.close()
    newest = member / f"snap-{40:016x}-{1:016x}.snap"
    os.truncate(newest, newest.stat().st_size - 5)  # incomplete: invalid
    with pytest.raises(StoreCorrupt, match=f"missing.*{newest} is damaged"):
        RaftDisk.open(str(member))
    assert newest.exists()  # nothing renamed on a refused open


def test_a_lost_newest_snapshot_is_refused_even_without_entries(member: Path) -> None:
    """The log records that a snapshot at 40 exists; with it gone and everything before 40
    compacted, only the old snapshot is left and must not be taken as the state."""
    disk = create(member, keep_entries=0, segment_bytes=1)
    _fill(disk, 40)
    disk.save_snapshot(snap(20, 1))
    disk.save_snapshot(snap(40, 1))
    # The persisted commit would give the loss away too; lower it so that only the
    # snapshot record does.
    disk.save(HardState(1, NodeId(1), 20), [], None, True)
    disk.close()
    os.unlink(member / f"snap-{40:016x}-{1:016x}.snap")
    with pytest.raises(StoreCorrupt, match="records a snapshot at index 40"):
        RaftDisk.open(str(member))


# -- identity and locking --------------------------------------------------------------------

def test_identity_is_written_once_and_exposed(member: Path) -> None:
    disk = RaftDisk.create(str(member), TOKEN, 3)
    assert (disk.cluster_token, disk.member_id) == (TOKEN, 3)
    disk.close()
    disk = RaftDisk.open(str(member), cluster_token=TOKEN, member_id=3)
    assert (disk.cluster_token, disk.member_id) == (TOKEN, 3)
    disk.close()
    with pytest.raises(RaftDiskError, match="belongs to cluster"):
        RaftDisk.open(str(member), cluster_token="another")
    with pytest.raises(RaftDiskError, match="belongs to member 3"):
        RaftDisk.open(str(member), member_id=4)
    with pytest.raises(RaftDiskError, match="not empty"):
        RaftDisk.create(str(member), TOKEN, 3)


@pytest.mark.parametrize("setup", ["missing", "empty", "other files", "foreign identity",
                                   "newer format"])
def test_open_refuses_what_is_not_a_raft_data_directory(tmp_path: Path, setup: str) -> None:
    path = tmp_path / "d"
    if setup != "missing":
        path.mkdir()
    if setup == "other files":
        (path / "wal-0000000000000001.log").write_bytes(b"")
    if setup == "foreign identity":
        (path / IDENTITY).write_bytes(frame(msgpack.packb({"magic": "something else"})))
    if setup == "newer format":
        (path / IDENTITY).write_bytes(frame(msgpack.packb(
            {"magic": "kvfs-raft-member", "format": 2, "cluster_token": TOKEN,
             "member_id": 1})))
    with pytest.raises(RaftDiskError) as err:
        RaftDisk.open(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    if setup == "newer format":
        assert "format version 2" in str(err.value)
    # Refused without leaving the directory locked or changed (beyond a LOCK file).
    if path.exists():
        assert set(os.listdir(path)) - {"LOCK"} == {
            "missing": set(), "empty": set(), "other files": {"wal-0000000000000001.log"},
            "foreign identity": {IDENTITY}, "newer format": {IDENTITY}}[setup]


def test_a_damaged_identity_is_corruption(member: Path) -> None:
    create(member).close()
    flip(member / IDENTITY, HEADER.size + 3)
    with pytest.raises(StoreCorrupt, match=f"{member / IDENTITY}.*offset 0"):
        RaftDisk.open(str(member))


def test_create_refuses_a_non_empty_directory_but_finishes_an_interrupted_create(
        tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "data").write_bytes(b"x")
    with pytest.raises(RaftDiskError, match="not empty"):
        RaftDisk.create(str(busy), TOKEN, 1)
    assert os.listdir(busy) == ["data"]  # not even a lock file left behind
    half = tmp_path / "half"
    half.mkdir()
    (half / "LOCK").write_bytes(b"")
    (half / (IDENTITY + ".tmp")).write_bytes(b"partial")
    with pytest.raises(RaftDiskError, match="no IDENTITY"):
        RaftDisk.open(str(half))
    disk = RaftDisk.create(str(half), TOKEN, 2)
    assert disk.member_id == 2 and sorted(os.listdir(half)) == ["IDENTITY", "LOCK"]
    disk.close()


def test_one_process_at_a_time(member: Path) -> None:
    disk = create(member)
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        RaftDisk.open(str(member))
    disk.close()
    disk.close()  # idempotent
    with pytest.raises(RaftDiskError, match="closed"):
        disk.save(None, run(1, 1, 1), None, True)
    with RaftDisk.open(str(member)) as again:
        assert again.member_id == 1


# -- a seeded model check against MemoryStorage ----------------------------------------------

def _model_run(root: Path, seed: int) -> None:
    """Random saves of the kinds the core makes (appends that may replace uncommitted
    entries, lazy commit updates, installed snapshots), the host's snapshots and
    compactions, and reopens; the disk must read like a MemoryStorage given the same."""
    rng = random.Random(seed)
    options = {"keep_entries": rng.choice([0, 2, 5]),
               "segment_bytes": rng.choice([1, 120, 400, 1 << 20])}
    disk = create(root / f"m{seed}", **options)
    ref = MemoryStorage()
    term, commit, reopened = 1, 0, False
    for step in range(150):
        op = rng.random()
        last = ref.last_index()
        if op < 0.55:
            if rng.random() < 0.2:
                term += 1
            lo = rng.randint(max(commit + 1, ref.first_index()), last + 1)
            entries = [E(term, i, b"%d-%d" % (seed, step)) for i in
                       range(lo, lo + rng.randint(1, 4))]
            commit = rng.randint(commit, entries[-1].index)
            hs = HardState(term, NodeId(1), commit)
            disk.save(hs, entries, None, True)
            ref.append(entries)
            ref.set_hard_state(hs)
        elif op < 0.7:
            commit = rng.randint(commit, last)
            hs = HardState(term, NodeId(1), commit)
            disk.save(hs, [], None, False)
            ref.set_hard_state(hs)
        elif op < 0.78:
            term += 1
            index = max(commit, ref.snapshot().meta.index) + rng.randint(1, 6)
            commit = index
            installed = Snapshot(SnapshotMeta(index, term, CONF), b"installed %d" % step)
            hs = HardState(term, NodeId(0), commit)
            disk.save(hs, [], installed, True)
            ref.apply_snapshot(installed)
            ref.set_hard_state(hs)
        elif op < 0.9:
            if commit > ref.snapshot().meta.index:
                index = rng.randint(ref.snapshot().meta.index + 1, commit)
                taken = Snapshot(SnapshotMeta(index, ref.term(index), CONF),
                                 b"taken %d" % step)
                disk.save_snapshot(taken)
                ref.create_snapshot(index, CONF, taken.data)
                if index - options["keep_entries"] >= ref.first_index():
                    ref.compact(index - options["keep_entries"])
        else:
            disk = reopen(disk, **options)
            reopened = True
        where = f"seed {seed} step {step}"
        assert disk.hard_state == ref.hard_state, where
        assert disk.snapshot() == ref.snapshot(), where
        assert disk.last_index() == ref.last_index(), where
        first = ref.first_index()
        if reopened:  # a reopened disk may hold more entries behind the snapshot
            assert disk.first_index() <= first, where
        else:
            assert disk.first_index() == first, where
        assert disk.initial_state() == ref.initial_state(), where
        assert disk.entries(first, ref.last_index() + 1) == ref.entries(
            first, ref.last_index() + 1), where
        assert disk.term(first - 1) == ref.term(first - 1), where
    disk.close()


def test_model_check_against_memory_storage(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # This checks the logic, not durability (the other tests do): no real syncs, so that
    # many seeds fit in a few seconds.
    monkeypatch.setattr(wal_module, "_datasync", lambda fd: None)
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    for seed in range(40):
        _model_run(tmp_path, seed)


# -- a one-member Raft node across restarts --------------------------------------------------

class Host:
    """A minimal host: a 1-member RawNode on a RaftDisk, its state machine the list of
    applied proposals (snapshotted as a msgpack list)."""

    def __init__(self, path: Path, *, snapshot_every: int = 7) -> None:
        self.disk = RaftDisk.open(str(path), keep_entries=3, segment_bytes=256)
        snapshot = self.disk.snapshot()
        self.applied: list[bytes] = (msgpack.unpackb(snapshot.data)
                                     if snapshot.meta.index else [])
        self.applied_index = snapshot.meta.index
        self.snapshot_every = snapshot_every
        self.node = RawNode(Config(NodeId(1)), self.disk, random.Random(5))

    def handle(self) -> None:
        while self.node.has_ready():
            rd = self.node.ready()
            self.disk.save_ready(rd)
            for entry in rd.committed_entries:
                assert entry.index == self.applied_index + 1
                if entry.kind is EntryKind.NORMAL and entry.data:
                    self.applied.append(entry.data)
                self.applied_index = entry.index
            self.node.advance(rd)
            if self.applied_index - self.disk.snapshot().meta.index >= self.snapshot_every:
                index = self.applied_index
                self.disk.save_snapshot(Snapshot(
                    SnapshotMeta(index, self.disk.term(index), self.node.status().conf_state),
                    msgpack.packb(self.applied)))

    def lead(self) -> None:
        self.handle()  # apply the committed configuration first: no campaign before that
        self.node.campaign()
        self.handle()
        assert self.node.status().soft_state.leader == 1


def test_a_one_member_node_keeps_what_it_acknowledged_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "node"
    disk = RaftDisk.create(str(path), TOKEN, 1)
    disk.bootstrap([NodeId(1)])
    disk.close()
    rng = random.Random(11)
    acknowledged: list[bytes] = []
    for life in range(8):
        host = Host(path)
        # The restarted state machine (snapshot + committed entries handed out again)
        # holds everything acknowledged, in order, and nothing else but the proposals a
        # crash interrupted.
        host.lead()
        assert host.applied[:len(acknowledged)] == acknowledged, life
        acknowledged = list(host.applied)
        term = host.node.status().hard_state.term
        assert term == life + 2  # each life campaigns once, in a new term
        for n in range(rng.randint(5, 25)):
            data = b"life %d proposal %d" % (life, n)
            host.node.propose(data)
            if rng.random() < 0.5:
                host.handle()
                assert host.applied[-1] == data
                acknowledged.append(data)
        host.handle()
        acknowledged = list(host.applied)
        assert host.disk.hard_state.commit == host.applied_index
        if life % 2:
            host.disk.close()
            continue
        # Crash in the middle of persisting the next batch: a random prefix of its bytes
        # reaches the disk, nothing of it was acknowledged.
        for n in range(rng.randint(1, 4)):
            host.node.propose(b"life %d unacknowledged %d" % (life, n))

        rd = host.node.ready()
        assert rd.entries and rd.must_sync
        seg = last_segment(path)
        start = seg.stat().st_size
        host.disk.save_ready(rd)
        if last_segment(path) != seg:  # the batch went to a new segment
            seg, start = last_segment(path), 0
        os.truncate(seg, rng.randint(start, seg.stat().st_size))
        host.disk.close()  # and the RawNode is dropped without advance()
    host = Host(path)
    host.lead()
    assert host.applied[:len(acknowledged)] == acknowledged
    assert host.disk.snapshot().meta.index > 0 and len(acknowledged) > 40
    host.disk.close()


# -- power cuts ------------------------------------------------------------------------------

# Runs a Host on the member at argv[1] and proposes batches until the power goes: prints
# "B data..." before proposing a batch and "A" once all of it is applied (acknowledged).
POWER_WRITER = r"""
import os, random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_raft_disk import Host

def say(*words):  # one write per line: we get killed
    os.write(1, (" ".join(words) + "\n").encode())

path, seed, cycle = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
try:
    host = Host(path, snapshot_every=rng.choice([3, 7, 20]))
    host.lead()
    n = 0
    while True:
        batch = ["c%d-%d" % (cycle, n + i) for i in range(rng.randint(1, 6))]
        n += len(batch)
        say("B", *batch)
        for data in batch:
            host.node.propose(data.encode())
        host.handle()
        say("A")
except BaseException as exc:
    print("stopped:", repr(exc)[:200], file=sys.stderr)
"""


@pytest.mark.mount
def test_power_cuts_lose_nothing_acknowledged(tmp_path: Path) -> None:
    from powerfs import PowerFS

    rng = random.Random(f"{POWER_SEED}-raft-disk")
    print(f"power-cut seed {POWER_SEED}; replay with KVFS_POWER_SEED={POWER_SEED}")
    with PowerFS(tmp_path / "backing", tmp_path / "power") as power:
        path = power.mountpoint / "member"
        disk = RaftDisk.create(str(path), TOKEN, 1)
        disk.bootstrap([NodeId(1)])
        disk.close()
        durable: list[bytes] = []
        for cycle in range(POWER_CUTS):
            out = tmp_path / "writer.out"
            with open(out, "wb") as f, open(tmp_path / "writer.err", "ab") as err:
                writer = subprocess.Popen(
                    [sys.executable, "-c", POWER_WRITER, str(path),
                     str(rng.randrange(1 << 32)), str(cycle), os.path.dirname(__file__)],
                    stdout=f, stderr=err)
            # Cut as one of the next syncs arrives (where the most is pending), strict or
            # torn; sometimes at once, after a while.
            torn = rng.randrange(1 << 32) if rng.random() < 0.5 else None
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.5, 1.5))
                power.cut(torn)
            else:
                power.cut(torn, at_sync=rng.randint(1, 60))
            deadline = time.monotonic() + 60
            while power.is_on():
                assert writer.poll() is None, (tmp_path / "writer.err").read_text()
                assert time.monotonic() < deadline, "the writer stopped syncing"
                time.sleep(0.02)
            writer.kill()
            writer.wait(60)
            acked, in_flight = list(durable), []
            for line in out.read_text().splitlines():
                words = line.split()
                if words[0] == "B":
                    in_flight = [w.encode() for w in words[1:]]
                else:
                    acked += in_flight
                    in_flight = []
            power.restart()
            host = Host(path)
            host.lead()
            found = host.applied
            host.disk.close()
            where = f"cut {cycle + 1} (seed {POWER_SEED})"
            assert found[:len(acked)] == acked, where
            assert found[len(acked):] == in_flight[:len(found) - len(acked)], where
            print(f"{where}: {len(found)} entries applied, {len(acked)} acknowledged")
            durable = found
        assert len(durable) > POWER_CUTS, "hardly anything was ever acknowledged"
