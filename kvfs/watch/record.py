"""Per-host watch records: which revision a host's ``kvfs watch`` last applied, and how.

Each watcher writes ``W host NUL path`` (:func:`kvfs.meta.keys.watcher`) attached to its own
lease, so the record lives exactly as long as the watcher keeps the lease alive: a watcher
that dies leaves no record once its TTL has passed, and ``kvfs status`` shows a record's age
(time since the watcher last acted) next to its outcome.

Value: a msgpack map ``{v: 1, pid, revision, applied, check, reload, time}``:
``revision`` is the engine revision the tree was quiet at when the watcher last acted,
``applied`` the revision of the last change that passed its check and reload (0: none yet),
``check`` and ``reload`` the outcomes of that last action (``ok``, ``failed: ...``,
``skipped``), ``time`` when it acted (unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from kvfs.kv.api import KVEngine, prefix_end
from kvfs.meta import keys

RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class WatchRecord:
    host: str
    path: str
    pid: int
    revision: int
    applied: int
    check: str
    reload: str
    time: float

    def key(self) -> bytes:
        return keys.watcher(self.host, self.path)

    def encode(self) -> bytes:
        return bytes(msgpack.packb({
            "v": RECORD_VERSION, "pid": self.pid, "revision": self.revision,
            "applied": self.applied, "check": self.check, "reload": self.reload,
            "time": self.time}))

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> WatchRecord:
        host, path = keys.parse_watcher(key)
        d = msgpack.unpackb(value)
        if not isinstance(d, dict) or d.get("v") != RECORD_VERSION:
            raise ValueError(f"watch record of {host}:{path} has an unknown format")
        return cls(host, path, int(d["pid"]), int(d["revision"]), int(d["applied"]),
                   str(d["check"]), str(d["reload"]), float(d["time"]))

    @property
    def result(self) -> str:
        """One word for the last action: ``ok``, ``check failed`` or ``reload failed``."""
        if not self.check.startswith("ok"):
            return "check failed"
        return "ok" if self.reload.startswith("ok") else "reload failed"


async def list_records(kv: KVEngine) -> list[WatchRecord]:
    """Every live watch record, by host then path; undecodable ones are skipped."""
    res = await kv.range(keys.WATCHER_PREFIX, prefix_end(keys.WATCHER_PREFIX))
    out = []
    for item in res.kvs:
        try:
            out.append(WatchRecord.decode(item.key, item.value))
        except (ValueError, KeyError, TypeError):
            continue
    return out
