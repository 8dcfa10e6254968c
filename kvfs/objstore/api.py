"""The block object store seam: where file data lives, one immutable block per name.

kvfs splits every slice (one write's data) into blocks and stores each block under a name
built by :func:`block_name`.  An :class:`ObjectStore` is a flat name -> bytes map with only
what that needs:

  * ``put`` is atomic: a concurrent or later reader sees the whole block or no block, never
    a torn one.  Overwriting is allowed by the interface, but kvfs never overwrites: a
    slice id is used once, so a block name always denotes the same bytes.
  * ``get`` of a missing name raises :class:`BlockNotFound`; damaged data detected by a store
    (see :mod:`kvfs.objstore.checksum`) raises :class:`BlockCorrupt`.
  * ``delete`` is idempotent: deleting a missing block succeeds.
  * ``list`` yields names with a prefix, for garbage collection and fsck; its order is
    unspecified and it may or may not show blocks changed while it runs.

Every method is async (trio); stores do blocking I/O in worker threads.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from kvfs.kv.api import KVEngine, Put


class ObjectStoreError(Exception):
    """Base of all errors raised by an object store (maps to EIO)."""


class BlockNotFound(ObjectStoreError):
    """The named block does not exist."""

    def __init__(self, name: str) -> None:
        super().__init__(f"block {name!r} not found")
        self.name = name


class ObjectStoreFull(ObjectStoreError):
    """The store refuses a write because it is out of space (maps to ENOSPC)."""


class BlockCorrupt(ObjectStoreError):
    """The named block exists but its contents fail verification."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"block {name!r} is corrupt: {detail}")
        self.name = name
        self.detail = detail


class ObjectStore(abc.ABC):
    """A flat, atomic name -> bytes store for data blocks (see module docstring)."""

    @property
    def max_block_bytes(self) -> int | None:
        """The largest block ``put`` accepts, or None when there is no practical limit."""
        return None

    def inline_puts(self, name: str, data: bytes, engine: KVEngine) -> list[Put] | None:
        """The KV writes that store this block inside a transaction of ``engine``, or None
        when this store does not keep its blocks in that engine.  Lets small writes commit
        their data and their metadata in one round trip."""
        return None

    @abc.abstractmethod
    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` atomically (all or nothing for any reader)."""

    @abc.abstractmethod
    async def get(self, name: str) -> bytes:
        """The bytes stored under ``name``; raises :class:`BlockNotFound` if absent."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Remove ``name``; a missing block is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Names of stored blocks starting with ``prefix`` (any order)."""

    async def aclose(self) -> None:
        """Release the store's resources (the default has none to release)."""
        return None

    def describe(self) -> str:
        """A human-readable name for logs and ``kvfs status`` (no secrets)."""
        return type(self).__name__


_SLICES_PER_DIR1 = 1_000_000
_SLICES_PER_DIR2 = 1000


def block_name(slice_id: int, index: int, size: int) -> str:
    """The name of block ``index`` (``size`` bytes long) of slice ``slice_id``.

    Two directory levels keep any one directory from growing too large on a local disk.
    """
    if slice_id <= 0 or index < 0 or size < 0:
        raise ValueError(f"bad block coordinates: slice {slice_id} index {index} size {size}")
    return (f"chunks/{slice_id // _SLICES_PER_DIR1}/{slice_id // _SLICES_PER_DIR2}/"
            f"{slice_id}_{index}_{size}")


def parse_block_name(name: str) -> tuple[int, int, int]:
    """``(slice_id, index, size)`` of a name made by :func:`block_name`; ValueError otherwise."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "chunks":
        raise ValueError(f"not a block name: {name!r}")
    fields = parts[3].split("_")
    if len(fields) != 3:
        raise ValueError(f"not a block name: {name!r}")
    try:
        nums = [_parse_uint(f) for f in fields]
        d1, d2 = _parse_uint(parts[1]), _parse_uint(parts[2])
    except ValueError:
        raise ValueError(f"not a block name: {name!r}") from None
    slice_id, index, size = nums
    if slice_id == 0 or block_name(slice_id, index, size) != name or (d1, d2) != (
            slice_id // _SLICES_PER_DIR1, slice_id // _SLICES_PER_DIR2):
        raise ValueError(f"not a block name: {name!r}")
    return slice_id, index, size


def _parse_uint(s: str) -> int:
    # int() would accept "+1", " 1", "1_0" and non-ASCII digits; a block name has none.
    if not s or not s.isascii() or not s.isdigit():
        raise ValueError(s)
    return int(s)
