"""The watch loop: follow the volume's changes, wait for quiet, check, then reload.

A :class:`Watcher` watches the volume's inode keys (``A``) in its metadata engine from the
revision it started at, so it sees every change made on any host -- inotify would see only
this host's.  Every batch of events marks a *candidate*: the watcher waits until no event
has arrived for the quiet window, then takes a digest of the watched tree as this host's
mount shows it.  If events arrived while it read, the tree was not quiet after all and it
waits again; if the digest equals the one it last acted on, nothing under the path changed
(the events were elsewhere in the volume) and it does nothing.  Otherwise it acts on the
revision it saw quiet: runs the check, and only if that exits 0 the reload (retried with
exponential backoff), then writes its record (:mod:`kvfs.watch.record`).

Invariants: the watcher never acts inside a quiet window (so never on a tree a deploy is
still writing); it acts at most once per distinct tree (digest), so a change is neither
missed -- every change raises a candidate -- nor applied twice; a failed or hung check never
runs the reload; commands run one at a time, each in its own process group, which a
timeout kills whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import stat
import time
from dataclasses import dataclass

import trio

from kvfs.deploy import STAGING_DIR
from kvfs.kv.api import Compacted, KVEngine, KVError, Put, prefix_end
from kvfs.meta import keys
from kvfs.watch.record import WatchRecord

log = logging.getLogger("kvfs.watch")

RELOAD_RETRIES = 3
RETRY_DELAY = 0.5  # seconds before the first reload retry; doubled for each further one
WATCH_RETRY = 1.0  # seconds between attempts to re-open a broken engine watch


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """What to watch and what to run: ``root`` is the watched path through the mount,
    ``path`` the same path within the volume (``/`` is the volume's root)."""

    root: str
    path: str
    check: str
    reload: str
    host: str
    quiet: float = 0.5
    timeout: float = 30.0
    lease_ttl: float = 15.0


def tree_digest(root: str) -> str:
    """A digest of everything under ``root``: names, types, modes, symlink targets and
    file contents (blocking; reads through the mount).  A missing root has a digest too.
    ``kvfs deploy``'s staging area (:data:`kvfs.deploy.STAGING_DIR`, only ever at the
    volume's root) is left out, so that a watch of the whole volume acts on a deploy's
    swap, not on its staging and clean-up."""
    h = hashlib.sha256()

    def visit(path: str, rel: str) -> None:
        st = os.lstat(path)
        h.update(f"{rel}\0{st.st_mode:o}\0".encode(errors="surrogateescape"))
        if stat.S_ISLNK(st.st_mode):
            h.update(os.fsencode(os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        elif stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                if not (rel == "" and name == STAGING_DIR):
                    visit(os.path.join(path, name), f"{rel}/{name}")
        h.update(b"\0")

    try:
        visit(root, "")
    except FileNotFoundError:
        h.update(b"\0missing")  # removed while read: the next event makes a new candidate
    return h.hexdigest()


async def run_command(cmd: str, timeout: float, env: dict[str, str]) -> str:
    """Run ``cmd`` with ``/bin/sh -c``; ``ok``, or ``failed: ...`` naming the exit status,
    signal or timeout.  Its output goes to the watcher's own stdout and stderr."""

    async def kill_group(proc: trio.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the shell and everything it started
        except ProcessLookupError:
            pass

    with trio.move_on_after(timeout) as scope:
        try:
            res = await trio.run_process(["/bin/sh", "-c", cmd], check=False, stdin=None,
                                         env={**os.environ, **env}, start_new_session=True,
                                         deliver_cancel=kill_group)
        except OSError as e:
            return f"failed: {e.strerror}"
    if scope.cancelled_caught:
        return f"failed: timed out after {timeout:g} s"
    if res.returncode == 0:
        return "ok"
    if res.returncode < 0:
        return f"failed: killed by signal {-res.returncode}"
    return f"failed: exit status {res.returncode}"


class Watcher:
    """One ``kvfs watch`` of one path (see module docstring).

    ``changes`` counts event batches seen, ``seen`` is the newest revision they reached and
    ``last_change`` when the last one arrived; ``digest`` is the tree last acted on."""

    def __init__(self, kv: KVEngine, cfg: WatchConfig) -> None:
        self.kv = kv
        self.cfg = cfg
        self.lease = 0
        self.changes = 0
        self.seen = 0
        self.last_change = 0.0
        self.digest: str | None = None
        self.applied = 0
        self.record: WatchRecord | None = None
        self._wake = trio.Event()

    # -- the lease and the record ------------------------------------------------------------

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(self.cfg.lease_ttl / 3)
            try:
                if not await self.kv.lease_keepalive(self.lease):
                    log.warning("watch lease expired; writing the record again on a new one")
                    self.lease = await self.kv.lease_grant(self.cfg.lease_ttl)
                    if self.record is not None:
                        await self._write(self.record)
            except KVError as e:
                log.warning("watch lease keep-alive failed: %s", e)

    async def _write(self, record: WatchRecord) -> None:
        self.record = record
        try:
            await self.kv.commit([], [Put(record.key(), record.encode(), self.lease)])
        except KVError as e:  # the keep-alive task writes it again once the engine is back
            log.warning("cannot write the watch record: %s", e)

    # -- following the engine ----------------------------------------------------------------

    def _note(self, revision: int) -> None:
        self.changes += 1
        self.seen = max(self.seen, revision)
        self.last_change = trio.current_time()
        self._wake.set()

    async def _follow(self, since: int) -> None:
        """Note every change to the volume's inodes from ``since`` on, for ever."""
        start, end = keys.INODE_PREFIX, prefix_end(keys.INODE_PREFIX)
        while True:
            try:
                async for batch in self.kv.watch(start, end, since):
                    since = batch.revision + 1
                    self._note(batch.revision)
            except Compacted:
                # Changes were lost: resume from now, and treat the gap as a change.
                since = await self.kv.current_revision() + 1
                self._note(since - 1)
            except KVError as e:
                log.warning("watch of the volume broke (%s); resuming from revision %d",
                            e, since)
                await trio.sleep(WATCH_RETRY)

    async def _quiet(self) -> None:
        """Return once no change has been seen for the quiet window."""
        while (left := self.last_change + self.cfg.quiet - trio.current_time()) > 0:
            await trio.sleep(left)

    # -- acting ------------------------------------------------------------------------------

    async def act(self, revision: int, digest: str) -> WatchRecord:
        """Check, and reload if the check passed, for the tree at ``revision``; record it."""
        env = {"KVFS_WATCH_PATH": self.cfg.root, "KVFS_WATCH_REVISION": str(revision)}
        log.info("%s changed (revision %d): running the check", self.cfg.root, revision)
        check = await run_command(self.cfg.check, self.cfg.timeout, env)
        if check != "ok":
            log.error("check %s at revision %d; not reloading", check, revision)
            reload = "skipped"
        else:
            reload = await self._reload(revision, env)
            if reload.startswith("ok"):
                self.applied = revision
                log.info("revision %d applied (check ok, reload %s)", revision, reload)
        self.digest = digest  # the same tree is not tried again, whatever the outcome
        record = WatchRecord(self.cfg.host, self.cfg.path, os.getpid(), revision, self.applied,
                             check, reload, time.time())
        await self._write(record)
        return record

    async def _reload(self, revision: int, env: dict[str, str]) -> str:
        attempts = 1 + RELOAD_RETRIES
        for attempt in range(1, attempts + 1):
            result = await run_command(self.cfg.reload, self.cfg.timeout, env)
            if result == "ok":
                return "ok" if attempt == 1 else f"ok after {attempt} attempts"
            log.error("reload %s at revision %d (attempt %d of %d)", result, revision,
                      attempt, attempts)
            if attempt < attempts:
                await trio.sleep(RETRY_DELAY * 2 ** (attempt - 1))
        return f"{result} ({attempts} attempts)"

    async def _digest(self) -> str:
        return await trio.to_thread.run_sync(tree_digest, self.cfg.root)

    # -- entry points ------------------------------------------------------------------------

    async def once(self) -> WatchRecord:
        """Act once on the current state (``--once``), and drop the record on return."""
        self.lease = await self.kv.lease_grant(self.cfg.lease_ttl)
        try:
            revision = await self.kv.current_revision()
            return await self.act(revision, await self._digest())
        finally:
            with trio.CancelScope(shield=True):
                await self.kv.lease_revoke(self.lease)

    async def run(self) -> None:
        """Act on the current state, then on every change, until cancelled."""
        self.lease = await self.kv.lease_grant(self.cfg.lease_ttl)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive)
                self.seen = await self.kv.current_revision()
                nursery.start_soon(self._follow, self.seen + 1)
                # Whatever the service runs now, nobody has checked it for this host.
                await self.act(self.seen, await self._digest())
                handled = self.changes
                while True:
                    while self.changes == handled:
                        self._wake = trio.Event()
                        await self._wake.wait()
                    await self._quiet()
                    handled, revision = self.changes, self.seen
                    digest = await self._digest()
                    if self.changes != handled:
                        continue  # it changed again while being read: not quiet yet
                    if digest == self.digest:
                        log.debug("revision %d: nothing under %s changed", revision,
                                  self.cfg.root)
                        continue
                    await self.act(revision, digest)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await self.kv.lease_revoke(self.lease)
                except KVError as e:
                    log.warning("cannot revoke the watch lease: %s", e)
