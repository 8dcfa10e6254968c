"""The embedded store: a one-member Raft cluster inside the mount's own process.

One Raft everywhere: an embedded volume directory ``DIR`` holds ``DIR/raft/``, an ordinary
Raft member data directory (:mod:`kvfs.raftkv.disk`, with its value files under
``values/``, :mod:`kvfs.raftkv.values`) of member ``default`` in a cluster whose token is
made at format (``embedded-<12 hex digits>``), the volume's keys under ``default/``.  The
mount runs the member's loop in its own process with no peers: the member is the only
voter, so it leads at once, commits each write with one sync and serves reads without a
ReadIndex round.  The same directory
can later be served to other hosts by ``kvfs raft serve --data-dir DIR`` and grown with
``kvfs raft member add``, and mounted as ``raft://HOSTS/default`` (docs/raft.md, "Growing
an embedded volume").

Volumes of the earlier embedded store (``wal-*.log``, ``snap-*.snap`` and ``values/``
directly in ``DIR``, :mod:`kvfs.kv.embedded`) are converted when first opened:

1. the old store is opened (recovered and locked) as before;
2. ``DIR/raft.new/`` is built: a member bootstrapped as the only voter, whose first
   snapshot (at index 1) holds the old state -- keys (now under ``default/``), revisions,
   leases, watch history -- with each large value's file hard-linked into
   ``raft.new/values/`` (no copy);
3. ``raft.new`` is renamed to ``raft`` -- the commit point -- and ``DIR`` synced;
4. the old store is closed and its files removed.

A crash before 3 leaves the old store as it was (``raft.new`` is discarded on the next
open); after 3, the next open finds ``raft/`` and finishes removing the old files.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import secrets
import shutil
from collections.abc import Iterable

import trio

from kvfs.durable import fsync_dir, make_dirs
from kvfs.kv.api import KVError
from kvfs.kv.state import Entry as KVEntry
from kvfs.kv.state import Event, KVState
from kvfs.kv.valuefiles import ValueRef
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import (
    ConfChange,
    Config,
    ConfState,
    EntryKind,
    NodeId,
    Snapshot,
    SnapshotMeta,
    confchange,
)
from kvfs.raftkv.disk import RaftDisk
from kvfs.raftkv.engine import MemberEngine
from kvfs.raftkv.members import Member, MemberTable, bootstrap_entries, member_id
from kvfs.raftkv.node import ENTRY_WEIGHT, RaftNode
from kvfs.raftkv.statemachine import ReplicatedKV
from kvfs.raftkv.values import LARGE_VALUE_BYTES, VALUES_DIR, MemberValues

log = logging.getLogger(__name__)

RAFT_DIR = "raft"
EMBEDDED_MEMBER = "default"
# The embedded volume's namespace in the store: served later, it is raft://HOSTS/default.
VOLUME_PREFIX = "default"
_KEY_PREFIX = VOLUME_PREFIX.encode() + b"/"
_CONVERTING = RAFT_DIR + ".new"
_LEGACY_PREFIXES = ("wal-", "snap-")
# The default snapshot trigger (open_embedded).
_SNAPSHOT_EVERY = 10_000
_SNAPSHOT_SCALE = 0.5


class EmbeddedMember(MemberEngine):
    """The KV seam over the one-member cluster of an embedded volume; ``aclose`` stops
    the member, takes a snapshot if the log since the last one is large (so the next open
    need not read it back into memory), and closes (unlocks) its data directory."""

    disk: RaftDisk

    async def aclose(self) -> None:
        await super().aclose()
        try:
            if self.stopped:
                await self.node.snapshot_at_close()
        except (KVError, OSError) as exc:
            # The log still holds everything: the next open replays it.
            log.warning("%s: no snapshot at close: %s", self.describe(), exc)
        finally:
            await trio.to_thread.run_sync(self.disk.close)


def raft_dir(path: str) -> str:
    return os.path.join(path, RAFT_DIR)


def holds_volume(path: str) -> bool:
    """Whether ``path`` holds an embedded store, of this layout or the earlier one."""
    if os.path.exists(os.path.join(raft_dir(path), "IDENTITY")):
        return True
    return _legacy_files(path) != []


def _legacy_files(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(_LEGACY_PREFIXES))


async def open_embedded(path: str, *, create: bool = False,
                        snapshot_every: int | None = None, snapshot_bytes: int = 64 << 20,
                        segment_bytes: int = 16 << 20,
                        large_value_bytes: int = LARGE_VALUE_BYTES) -> EmbeddedMember:
    """Open the embedded store in ``path`` (made when ``create``; converted from the
    earlier layout if that is what ``path`` holds) and start its member.

    The keyword arguments tune snapshots, log segments, and the size above which a value
    goes to a file of its own; tests shrink them to make everything happen often.  A
    snapshot is taken once ``snapshot_bytes`` of entry data were applied since the last
    one, and otherwise: given ``snapshot_every``, every that many entries; by default,
    after at least 10,000 entries once the log since the last snapshot weighs half as
    much as that snapshot (:attr:`RaftNode.snapshot_scale`), so a store holding much
    does not spend more per write on snapshots than an empty one.  The member's
    snapshots leave out the watch history: only its own restarts read them."""
    scale = _SNAPSHOT_SCALE if snapshot_every is None else 0.0
    every = _SNAPSHOT_EVERY if snapshot_every is None else snapshot_every
    # The log on disk reaches back to the previous snapshot (the fallback if the newest is
    # damaged): every entry between two snapshots, however many the trigger lets by.
    keep_entries = every if not scale else 2 * (every + snapshot_bytes // ENTRY_WEIGHT)
    path = os.path.abspath(path)
    await trio.to_thread.run_sync(_discard_interrupted_conversion, path)
    if not os.path.exists(os.path.join(raft_dir(path), "IDENTITY")):
        if _legacy_files(path):
            await convert_legacy(path)
        elif not create:
            raise KVError(f"{path}: no kvfs volume here (run `kvfs format` first)")
        else:
            await trio.to_thread.run_sync(_create, path)
    disk = await trio.to_thread.run_sync(functools.partial(
        RaftDisk.open, raft_dir(path), keep_entries=keep_entries,
        segment_bytes=segment_bytes, keep_bytes=2 * snapshot_bytes,
        # No followers: nothing at or before the snapshot is needed in memory.  A commit
        # index need not be written at once: the lone member commits its log again when it
        # next leads (RaftDisk, "Writing"), so each commit costs one save, not two.
        hold_entries=0, hold_bytes=0, hold_commit=True))
    try:
        await trio.to_thread.run_sync(_remove_legacy, path)
        values = await trio.to_thread.run_sync(MemberValues, disk.directory,
                                               large_value_bytes)
        kv = ReplicatedKV(values=values)
        voters = _committed_voters(disk)
        if voters != {disk.member_id}:
            raise KVError(f"{disk.directory} is a member of a cluster of {len(voters)} "
                          "voters now: mount it through raft:// (kvfs raft serve)")
        node = RaftNode(Config(disk.member_id), disk, kv, WatchHub(kv.load_value),
                        rng=random.Random(), snapshot_every=every,
                        snapshot_bytes=snapshot_bytes, snapshot_scale=scale,
                        snapshot_history=False, dormant=True,
                        write_held_commit=disk.write_held_commit, inline_sync=True)
        engine = await EmbeddedMember.start(node, name=f"embedded:{path}",
                                            prefix=_KEY_PREFIX)
    except BaseException:
        disk.close()
        raise
    assert isinstance(engine, EmbeddedMember)
    engine.disk = disk
    return engine


def _committed_voters(disk: RaftDisk) -> frozenset[NodeId]:
    """The voters of the configuration the disk's committed entries leave."""
    hard_state, conf = disk.storage.initial_state()
    first = disk.first_index()
    if hard_state.commit >= first:
        for entry in disk.entries(first, hard_state.commit + 1):
            if entry.kind is EntryKind.CONF_CHANGE:
                conf = confchange.apply(conf, ConfChange.decode(entry.data))
    return conf.voters


def _one_member(token: str) -> tuple[NodeId, MemberTable]:
    node = member_id(EMBEDDED_MEMBER, token)
    table = MemberTable()
    table.members[node] = Member(node, EMBEDDED_MEMBER, "", "", False)
    return node, table


def _create(path: str) -> None:
    """Make ``path/raft`` a new one-member cluster's member, bootstrapped."""
    make_dirs(path)
    token = f"embedded-{secrets.token_hex(6)}"
    node, table = _one_member(token)
    disk = RaftDisk.create(raft_dir(path), token, node)
    try:
        entries, hard_state = bootstrap_entries(table)
        disk.save(hard_state, entries, None, True)
    finally:
        disk.close()


def _discard_interrupted_conversion(path: str) -> None:
    converting = os.path.join(path, _CONVERTING)
    if os.path.exists(converting):
        log.warning("%s: discarding an interrupted conversion to the Raft layout", path)
        shutil.rmtree(converting)


def _remove_legacy(path: str) -> None:
    """Remove the earlier layout's files once ``path/raft`` holds the volume."""
    names = _legacy_files(path)
    if not names:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(path, VALUES_DIR), ignore_errors=True)
    fsync_dir(path)


async def convert_legacy(path: str) -> None:
    """Convert the earlier embedded store in ``path`` to the Raft layout (module doc)."""
    from kvfs.kv.embedded import EmbeddedEngine

    log.warning("%s: converting the embedded store to the Raft layout", path)
    old = await EmbeddedEngine.open(path)
    try:
        await trio.to_thread.run_sync(_build_converted, path, old.state)
        os.rename(os.path.join(path, _CONVERTING), raft_dir(path))
        await trio.to_thread.run_sync(fsync_dir, path)
    finally:
        await old.aclose()
    await trio.to_thread.run_sync(_remove_legacy, path)
    log.warning("%s: converted; the volume is now a one-member Raft cluster in %s", path,
                raft_dir(path))


def _build_converted(path: str, state: KVState) -> None:
    target = os.path.join(path, _CONVERTING)
    token = f"embedded-{secrets.token_hex(6)}"
    node, table = _one_member(token)
    disk = RaftDisk.create(target, token, node)
    try:
        entries, hard_state = bootstrap_entries(table)
        disk.save(hard_state, entries, None, True)
        values = MemberValues(target)
        linked: dict[str, ValueRef] = {}

        def held(value: object) -> object:
            """The old store's value as the new one holds it: a ref's file is linked."""
            if not isinstance(value, ValueRef):
                return value
            new = linked.get(value.name)
            if new is None:
                new = ValueRef(f"{1:016x}-s{len(linked)}", value.size, value.digest)
                os.link(os.path.join(path, VALUES_DIR, value.name),
                        values.store.path(new.name))
                linked[value.name] = new
            return new

        kv = ReplicatedKV(values=values)
        kv.apply_conf_change(1, entries[0].data)  # the member table, as bootstrap makes it
        items: Iterable[tuple[bytes, KVEntry]] = (
            (_KEY_PREFIX + key, KVEntry(held(e.value), e.mod_revision, e.create_revision,
                                        e.lease))
            for key, e in state.snapshot_items())
        kv.state.restore(state.revision, state.compacted, state.next_lease,
                         {lid: lease.ttl for lid, lease in state.leases.items()}, iter(items),
                         history=[Event(_KEY_PREFIX + ev.key,
                                        None if ev.value is None else held(ev.value),
                                        ev.mod_revision) for ev in state.history],
                         history_start=state.history_start)
        fsync_dir(values.store.directory)
        meta = SnapshotMeta(1, 1, ConfState(voters=frozenset({node})))
        disk.save_snapshot(Snapshot(meta, kv.snapshot()))
    finally:
        disk.close()
