"""Mount sessions: who has the volume mounted, held alive by an engine lease.

Each mount registers ``SE sid`` = [host, pid, mountpoint, version, started] attached to a
lease it keeps alive in the background.  A mount that dies stops renewing; when the lease
expires its session key vanishes, and any live mount's cleaner then releases the inodes
that session was keeping open after unlink (``SS sid ino``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import msgpack
import trio

from kvfs import __version__
from kvfs.kv.api import KVEngine, Put, prefix_end
from kvfs.meta import keys
from kvfs.meta.ids import IdAllocator

log = logging.getLogger("kvfs.session")
SESSION_TTL = 15.0
NEXT_SESSION = b"Cnextsession"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    sid: int
    host: str
    pid: int
    mountpoint: str
    version: str
    started: int


class Session:
    """This mount's session (see module docstring)."""

    def __init__(self, kv: KVEngine, sid: int, lease: int, info: bytes, ttl: float) -> None:
        self.kv = kv
        self.sid = sid
        self.lease = lease
        self.info = info
        self.ttl = ttl

    @classmethod
    async def register(cls, kv: KVEngine, mountpoint: str, ttl: float = SESSION_TTL
                       ) -> Session:
        sid = await IdAllocator(kv, NEXT_SESSION, 1).next()
        lease = await kv.lease_grant(ttl)
        info = msgpack.packb([socket.gethostname(), os.getpid(), mountpoint, __version__,
                              int(time.time())])
        await kv.commit([], [Put(keys.session(sid), info, lease)])
        return cls(kv, sid, lease, info, ttl)

    async def keepalive(self, *, interval: float = SESSION_TTL / 3,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the lease; if it expired (a long outage), register the same session again
        so its holds on unlinked-but-open files count as live once more."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                if not await self.kv.lease_keepalive(self.lease):
                    log.error("session %d lease expired; registering it again", self.sid)
                    self.lease = await self.kv.lease_grant(self.ttl)
                    await self.kv.commit([], [Put(keys.session(self.sid), self.info,
                                                  self.lease)])
            except Exception as exc:  # noqa: BLE001 - keep trying while the engine is away
                log.warning("session keep-alive failed: %s", exc)

    async def close(self) -> None:
        await self.kv.lease_revoke(self.lease)


async def list_sessions(kv: KVEngine) -> list[SessionInfo]:
    res = await kv.range(keys.SESSION_PREFIX, prefix_end(keys.SESSION_PREFIX))
    out = []
    for item in res.kvs:
        host, pid, mp, version, started = msgpack.unpackb(item.value)
        out.append(SessionInfo(keys.read_u64(item.key, 2), host, pid, mp, version, started))
    return out
