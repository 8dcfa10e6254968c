"""End-to-end block checksums: a wrapper that makes any object store detect damaged data.

Every block is stored as ``b"KVB1" + xxh64(data) as u64 big-endian + data``.  ``get``
recomputes the hash and raises :class:`BlockCorrupt` -- and logs an error on the
``kvfs.objstore`` logger naming the block -- if the header is missing or malformed or the
hash does not match, so corruption anywhere below (disk, network, KV engine, a stray
edit) is never returned to a reader as file data.  kvfs always wraps its store in this.

Names, deletes and listings pass through unchanged.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator

import xxhash

from kvfs.kv.api import KVEngine, Put
from kvfs.objstore.api import BlockCorrupt, ObjectStore

MAGIC = b"KVB1"
_HASH = struct.Struct(">Q")
HEADER_SIZE = len(MAGIC) + _HASH.size

log = logging.getLogger("kvfs.objstore")


def seal(data: bytes) -> bytes:
    """``data`` with its checksum header prepended."""
    return MAGIC + _HASH.pack(xxhash.xxh64_intdigest(data)) + data


def unseal(name: str, raw: bytes) -> bytes:
    """The data inside a sealed block; raises :class:`BlockCorrupt` if it does not verify."""
    if len(raw) < HEADER_SIZE:
        raise BlockCorrupt(name, f"only {len(raw)} bytes, shorter than the checksum header")
    if raw[:len(MAGIC)] != MAGIC:
        raise BlockCorrupt(name, f"bad header magic {bytes(raw[:len(MAGIC)])!r}")
    (stored,) = _HASH.unpack_from(raw, len(MAGIC))
    body = memoryview(raw)[HEADER_SIZE:]
    actual = xxhash.xxh64_intdigest(body)
    if actual != stored:
        raise BlockCorrupt(
            name, f"checksum mismatch (stored {stored:016x}, computed {actual:016x}, "
                  f"{len(body)} data bytes)")
    return bytes(body)


class ChecksummedStore(ObjectStore):
    """Wraps ``inner`` so every block carries and is verified by an xxh64 checksum."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    def describe(self) -> str:
        return f"checksummed({self.inner.describe()})"

    @property
    def max_block_bytes(self) -> int | None:
        inner = self.inner.max_block_bytes
        return None if inner is None else max(0, inner - HEADER_SIZE)

    def inline_puts(self, name: str, data: bytes, engine: KVEngine) -> list[Put] | None:
        return self.inner.inline_puts(name, seal(data), engine)

    async def put(self, name: str, data: bytes) -> None:
        await self.inner.put(name, seal(data))

    async def get(self, name: str) -> bytes:
        raw = await self.inner.get(name)
        try:
            return unseal(name, raw)
        except BlockCorrupt as exc:
            log.error("corrupt block %s in %s: %s", name, self.inner.describe(), exc.detail)
            raise

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for name in self.inner.list(prefix):
            yield name

    async def aclose(self) -> None:
        await self.inner.aclose()
