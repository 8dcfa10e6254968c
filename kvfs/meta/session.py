"""Mount sessions: who has the volume mounted, held alive by an engine lease.

Each mount registers ``SE sid`` = [host, pid, mountpoint, version, started] attached to a
lease it keeps alive in the background (every third of the TTL).  A mount that dies stops
renewing; when the lease expires its session key vanishes, and any live mount's cleaner
then releases the inodes that session was keeping open after unlink (``SS sid ino``).

Everything bound to the session's liveness comes back when a live mount finds its lease
expired (a pause or an outage longer than the TTL):

* the ``SE`` key is written again, same session id, on a new lease;
* ``SS`` holds of inodes this mount still has open (``held``, kept by
  :class:`~kvfs.meta.metadata.Metadata`) are written again, since other mounts' cleaners
  may have released them meanwhile -- unless the inode is gone already, which is logged;
* roles attached to the lease, such as the revision compactor's ``Ccompactor`` key, are
  claimed again by their owners, which read :attr:`Session.lease` each time rather than
  keep a copy (the old lease is dead for good).

Invariant: :attr:`Session.lease` is the lease the ``SE`` key was last written with; while
``_expired`` is set, no ``SE`` key exists for this session and the next renewal writes it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Set
from dataclasses import dataclass

import msgpack
import trio

from kvfs import __version__
from kvfs.kv.api import Delete, KVEngine, Put, prefix_end
from kvfs.kv.txn import Txn, run_txn
from kvfs.meta import keys
from kvfs.meta.ids import IdAllocator

log = logging.getLogger("kvfs.session")
SESSION_TTL = 15.0


@dataclass(frozen=True, slots=True)
class SessionInfo:
    sid: int
    host: str
    pid: int
    mountpoint: str
    version: str
    started: int


class Session:
    """This mount's session (see module docstring).

    ``held`` is the live set of inodes this mount holds open after their last unlink; the
    session only reads it, to write their ``SS`` keys again after its lease expired.
    """

    def __init__(self, kv: KVEngine, sid: int, lease: int, info: bytes, ttl: float,
                 held: Set[int] = frozenset()) -> None:
        self.kv = kv
        self.sid = sid
        self.lease = lease
        self.info = info
        self.ttl = ttl
        self.held = held
        self._expired = False  # the lease expired and SE is not written again yet
        self._holds_lost = False  # SS holds may have been released by other mounts

    @classmethod
    async def register(cls, kv: KVEngine, mountpoint: str, ttl: float = SESSION_TTL, *,
                       held: Set[int] = frozenset()) -> Session:
        sid = await IdAllocator(kv, keys.NEXT_SESSION, 1).next()
        lease = await kv.lease_grant(ttl)
        info = msgpack.packb([socket.gethostname(), os.getpid(), mountpoint, __version__,
                              int(time.time())])
        await kv.commit([], [Put(keys.session(sid), info, lease)])
        return cls(kv, sid, lease, info, ttl, held)

    async def keepalive(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
        """Renew the lease every third of the TTL, for as long as the mount lives."""
        task_status.started()
        while True:
            await trio.sleep(self.ttl / 3)
            try:
                await self.renew()
            except Exception as exc:  # noqa: BLE001 - keep trying while the engine is away
                log.warning("session keep-alive failed: %s", exc)

    async def renew(self) -> None:
        """Renew the lease once; if it expired, register again and restore the holds.

        Safe to call again after any failure: each step is repeated until it succeeds."""
        if not self._expired and not await self.kv.lease_keepalive(self.lease):
            log.error("session %d lease expired; registering it again", self.sid)
            self._expired = self._holds_lost = True
        if self._expired:
            lease = await self.kv.lease_grant(self.ttl)
            res = await self.kv.commit([], [Put(keys.session(self.sid), self.info, lease)])
            if not res.succeeded:  # the new lease is already gone (a very long stall)
                log.warning("session %d: new lease %x expired before use", self.sid, lease)
                return
            self.lease = lease
            self._expired = False
            log.info("session %d registered again (lease %x)", self.sid, lease)
        if self._holds_lost:
            await self._restore_holds()
            self._holds_lost = False

    async def _restore_holds(self) -> None:
        for ino in sorted(self.held):
            hold = keys.sustained(self.sid, ino)

            async def fn(t: Txn, ino: int = ino, hold: bytes = hold) -> bool:
                if await t.get(keys.attr(ino)) is None:  # guarded: the inode still exists
                    return False
                t.put(hold, b"")
                return True

            if not await run_txn(self.kv, fn):
                log.warning("session %d: inode %d, open here after its unlink, was deleted "
                            "while the session was expired; reads of it fail", self.sid, ino)
            elif ino not in self.held:
                # Its last handle closed while the hold was being written, and the release
                # may have deleted the key before we wrote it: delete it as the release would.
                await self.kv.commit([], [], [Delete(hold)])

    async def close(self) -> None:
        await self.kv.lease_revoke(self.lease)


async def list_sessions(kv: KVEngine) -> list[SessionInfo]:
    res = await kv.range(keys.SESSION_PREFIX, prefix_end(keys.SESSION_PREFIX))
    out = []
    for item in res.kvs:
        host, pid, mp, version, started = msgpack.unpackb(item.value)
        out.append(SessionInfo(keys.session_id(item.key), host, pid, mp, version, started))
    return out
