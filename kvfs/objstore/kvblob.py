"""An object store inside the KV engine: each block is one value.

The block ``name`` is stored at key ``prefix + name.encode()``.  This keeps a whole
filesystem in one place (handy for small deployments and tests), at the price of the
engine's value size limit: a block larger than ``kv.limits.max_value_bytes`` (or one whose
put would exceed ``max_request_bytes``) is refused with :class:`ObjectStoreError` before
anything is written, so callers must choose a block size below :attr:`max_block_bytes`.

Invariants: a put is one single-key commit, so it is atomic and durable when it returns;
delete is an unconditional delete of one key (idempotent); list pages through the key
range 1000 keys at a time without reading values.  Engine errors surface as
:class:`ObjectStoreError` (:class:`ObjectStoreFull` for a full engine), chained to the cause.
The engine is shared with the metadata, so ``aclose`` leaves it open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from kvfs.kv.api import Delete, KVEngine, KVError, NoSpace, Put, prefix_end
from kvfs.meta import keys
from kvfs.objstore.api import BlockNotFound, ObjectStore, ObjectStoreError, ObjectStoreFull

_LIST_PAGE = 1000
# Bytes reserved in a request for the key and etcd's per-operation overhead.
_KEY_ALLOWANCE = 256 + 16


def _kv_error(op: str, name: str, exc: KVError) -> ObjectStoreError:
    cls = ObjectStoreFull if isinstance(exc, NoSpace) else ObjectStoreError
    err = cls(f"{op} of block {name!r} failed: {exc}")
    err.__cause__ = exc
    return err


class KVBlobStore(ObjectStore):
    """Blocks stored as values of a :class:`KVEngine` (see module docstring)."""

    def __init__(self, kv: KVEngine, prefix: bytes = keys.BLOCK_PREFIX) -> None:
        self.kv = kv
        self.prefix = prefix

    def describe(self) -> str:
        return f"kv:{self.kv.describe()}"

    @property
    def max_block_bytes(self) -> int:
        lim = self.kv.limits
        return max(0, min(lim.max_value_bytes, lim.max_request_bytes - _KEY_ALLOWANCE))

    def _key(self, name: str) -> bytes:
        if not name:
            raise ObjectStoreError("invalid block name ''")
        return keys.block(name, self.prefix)

    def inline_puts(self, name: str, data: bytes, engine: KVEngine) -> list[Put] | None:
        if engine.base() is not self.kv.base():
            return None
        return [Put(self._key(name), bytes(data))]

    async def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        lim = self.kv.limits
        if len(data) > lim.max_value_bytes or len(key) + len(data) + 16 > lim.max_request_bytes:
            raise ObjectStoreError(
                f"block {name!r} is {len(data)} bytes, too large for the KV engine "
                f"{self.kv.describe()} (values up to {lim.max_value_bytes} bytes, requests up "
                f"to {lim.max_request_bytes}); use a smaller block size")
        try:
            await self.kv.commit((), [Put(key, bytes(data))])
        except KVError as exc:
            raise _kv_error("put", name, exc) from exc

    async def get(self, name: str) -> bytes:
        try:
            kv = await self.kv.get(self._key(name))
        except KVError as exc:
            raise _kv_error("get", name, exc) from exc
        if kv is None:
            raise BlockNotFound(name)
        return kv.value

    async def delete(self, name: str) -> None:
        try:
            await self.kv.commit((), (), [Delete(self._key(name))])
        except KVError as exc:
            raise _kv_error("delete", name, exc) from exc

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        start = keys.block(prefix, self.prefix)
        end = prefix_end(start)
        while True:
            try:
                res = await self.kv.range(start, end, limit=_LIST_PAGE, keys_only=True)
            except KVError as exc:
                raise _kv_error("list", prefix, exc) from exc
            for item in res.kvs:
                yield keys.block_name(item.key, self.prefix)
            if not res.more or not res.kvs:
                return
            start = res.kvs[-1].key + b"\x00"
