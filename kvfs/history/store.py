"""Reading and expiring versions: what ``kvfs log``, ``diff`` and the cleaner need.

Retention (:func:`expire`): a version is removed once it is older than the volume's
``days``, or once ``versions`` newer versions of its path exist -- whichever comes first.
The newest version of a path goes by age alone.  With history off (``days`` 0) every version
is removed.  Removal is paged and batched, so a volume with many versions never needs one
big read or transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from kvfs.chunk.layout import CHUNK_SIZE, decode_slices, read_plan
from kvfs.chunk.slices import SliceStore
from kvfs.errors import FSError
from kvfs.history.records import HistorySettings, Version
from kvfs.kv.api import Delete, KeyValue, KVEngine, prefix_end
from kvfs.meta import keys

_PAGE = 1000
_DELETES_PER_COMMIT = 64


async def _pages(kv: KVEngine, start: bytes, end: bytes, *,
                 keys_only: bool = False) -> AsyncIterator[list[KeyValue]]:
    while True:
        res = await kv.range(start, end, limit=_PAGE, keys_only=keys_only)
        if res.kvs:
            yield res.kvs
        if not res.more:
            return
        start = res.kvs[-1].key + b"\0"


async def versions_of(kv: KVEngine, path: bytes) -> list[Version]:
    """Every kept version of ``path``, oldest first (by revision)."""
    prefix = keys.history_versions(path)
    out = [Version.decode(item.value, item.mod_revision)
           async for page in _pages(kv, prefix, prefix_end(prefix)) for item in page]
    return sorted(out, key=lambda v: v.revision)


async def versions_under(kv: KVEngine, dir_path: bytes) -> dict[bytes, list[Version]]:
    """The kept versions of every path below directory ``dir_path``, oldest first."""
    prefix = keys.history_tree(dir_path)
    out: dict[bytes, list[Version]] = {}
    async for page in _pages(kv, prefix, prefix_end(prefix)):
        for item in page:
            path, _, _ = keys.parse_history(item.key)
            out.setdefault(path, []).append(Version.decode(item.value, item.mod_revision))
    for vs in out.values():
        vs.sort(key=lambda v: v.revision)
    return out


async def read_content(slices: SliceStore, v: Version) -> bytes:
    """The bytes of a regular file's version; EIO-like FSError if they were not kept."""
    if v.chunks is None:
        raise FSError(5, "the content of this version was not kept")
    out = bytearray(v.size)
    for index, raw in v.chunks:
        base = index * CHUNK_SIZE
        if base >= v.size:
            continue
        length = min(CHUNK_SIZE, v.size - base)
        pos = base
        for seg in read_plan(decode_slices(raw), 0, length):
            n = seg.end - seg.start
            if seg.slice_id:
                out[pos:pos + n] = await slices.read(seg.slice_id, seg.slice_size,
                                                     seg.slice_off, n)
            pos += n
    return bytes(out)


def _expired(times: list[int], settings: HistorySettings, now_ns: int) -> int:
    """How many of a path's versions (times, oldest first) retention removes: a prefix."""
    if not settings.enabled:
        return len(times)
    cutoff = now_ns - int(settings.days * 86400 * 10**9)
    by_count = max(0, len(times) - settings.versions)
    by_age = sum(1 for t in times if t < cutoff)
    return max(by_count, by_age)


async def expire(kv: KVEngine, settings: HistorySettings, now_ns: int) -> int:
    """Remove versions past their retention (module docstring); returns how many."""
    doomed: list[bytes] = []
    removed = 0
    group: list[tuple[int, bytes]] = []  # (time, key) of the current path
    group_path: bytes | None = None

    async def flush(force: bool = False) -> None:
        nonlocal doomed, removed
        while len(doomed) >= _DELETES_PER_COMMIT or (force and doomed):
            batch, doomed = doomed[:_DELETES_PER_COMMIT], doomed[_DELETES_PER_COMMIT:]
            await kv.commit([], [], [Delete(k) for k in batch])
            removed += len(batch)

    def close_group() -> None:
        group.sort()
        doomed.extend(k for _, k in group[:_expired([t for t, _ in group], settings, now_ns)])
        group.clear()

    async for page in _pages(kv, keys.HISTORY_PREFIX, prefix_end(keys.HISTORY_PREFIX),
                             keys_only=True):
        for item in page:
            path, time_ns, _ = keys.parse_history(item.key)
            if path != group_path:
                close_group()
                group_path = path
            group.append((time_ns, item.key))
        await flush()
    close_group()
    await flush(force=True)
    return removed
