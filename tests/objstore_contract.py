"""The behaviour every :class:`~kvfs.objstore.api.ObjectStore` must show, as a reusable suite.

Use it for a new backend by providing a factory and subclassing the contract::

    from objstore_contract import ObjectStoreContract, contract_fixture

    @contextlib.asynccontextmanager
    async def etcd_store(tmp_path):
        engine = await connect_etcd(...)
        try:
            yield KVBlobStore(engine)
        finally:
            await engine.aclose()

    store_pair = contract_fixture({"etcd": etcd_store})

    class TestEtcdObjectStore(ObjectStoreContract):
        pass

:func:`contract_fixture` runs every test on each backend both bare and wrapped in
:class:`~kvfs.objstore.checksum.ChecksummedStore`; :class:`ChecksumContract`, with the
``checked_pair`` fixture from :func:`checksum_fixture`, corrupts the bare store underneath
a wrapped one and expects every corruption to be caught.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from kvfs.objstore.api import BlockCorrupt, BlockNotFound, ObjectStore, block_name
from kvfs.objstore.checksum import ChecksummedStore

StoreFactory = Callable[[Path], AbstractAsyncContextManager[ObjectStore]]


@dataclass
class StorePair:
    """The store under test and, when it is a :class:`ChecksummedStore`, the bare one below."""

    store: ObjectStore
    inner: ObjectStore | None


def contract_fixture(factories: Mapping[str, StoreFactory]) -> Any:
    """A ``store_pair`` fixture over every factory, bare and checksummed.

    Assign the result to a module-level name ``store_pair`` in the test module.
    """
    params = [(name, wrapped) for name in factories for wrapped in (False, True)]
    ids = [f"{name}+checksum" if wrapped else name for name, wrapped in params]

    @pytest.fixture(params=params, ids=ids)
    async def store_pair(request: pytest.FixtureRequest,
                         tmp_path: Path) -> AsyncIterator[StorePair]:
        name, wrapped = request.param
        async with factories[name](tmp_path) as inner:
            if wrapped:
                store = ChecksummedStore(inner)
                yield StorePair(store, inner)
                await store.aclose()
            else:
                yield StorePair(inner, None)

    return store_pair


def checksum_fixture(factories: Mapping[str, StoreFactory]) -> Any:
    """A ``checked_pair`` fixture: every factory wrapped in :class:`ChecksummedStore`,
    with the bare store underneath exposed so tests can corrupt it."""

    @pytest.fixture(params=list(factories), ids=[f"{n}+checksum" for n in factories])
    async def checked_pair(request: pytest.FixtureRequest,
                           tmp_path: Path) -> AsyncIterator[StorePair]:
        async with factories[request.param](tmp_path) as inner:
            store = ChecksummedStore(inner)
            yield StorePair(store, inner)
            await store.aclose()

    return checked_pair


async def collect(store: ObjectStore, prefix: str = "") -> list[str]:
    return sorted([name async for name in store.list(prefix)])


def data_of(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(n))


class ObjectStoreContract:
    """Tests every object store passes; needs a ``store_pair`` fixture (see module doc)."""

    # -- round trips ---------------------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, 4096, 1024 * 1024])
    async def test_round_trip(self, store_pair: StorePair, size: int) -> None:
        store = store_pair.store
        name = block_name(1234, 0, size)
        data = os.urandom(size)
        await store.put(name, data)
        got = await store.get(name)
        assert type(got) is bytes
        assert got == data

    async def test_blocks_are_independent(self, store_pair: StorePair) -> None:
        store = store_pair.store
        names = [block_name(7, i, 100) for i in range(5)]
        for i, name in enumerate(names):
            await store.put(name, data_of(100, i))
        for i, name in enumerate(names):
            assert await store.get(name) == data_of(100, i)

    async def test_overwrite_replaces(self, store_pair: StorePair) -> None:
        store = store_pair.store
        name = block_name(5, 0, 3)
        await store.put(name, b"abc")
        await store.put(name, b"xyz")
        assert await store.get(name) == b"xyz"

    # -- missing blocks and deletes ------------------------------------------------------

    async def test_get_missing_raises_block_not_found(self, store_pair: StorePair) -> None:
        name = block_name(99, 0, 10)
        with pytest.raises(BlockNotFound) as info:
            await store_pair.store.get(name)
        assert info.value.name == name
        assert name in str(info.value)

    async def test_delete_is_idempotent(self, store_pair: StorePair) -> None:
        store = store_pair.store
        name = block_name(42, 1, 4)
        await store.delete(name)  # never existed
        await store.put(name, b"data")
        await store.delete(name)
        with pytest.raises(BlockNotFound):
            await store.get(name)
        await store.delete(name)  # already gone
        assert await collect(store) == []

    async def test_delete_leaves_other_blocks(self, store_pair: StorePair) -> None:
        store = store_pair.store
        a, b = block_name(1, 0, 1), block_name(1, 1, 1)
        await store.put(a, b"a")
        await store.put(b, b"b")
        await store.delete(a)
        assert await store.get(b) == b"b"
        assert await collect(store) == [b]

    # -- listing -------------------------------------------------------------------------

    async def test_list_by_prefix(self, store_pair: StorePair) -> None:
        store = store_pair.store
        assert await collect(store) == []
        ids = [1, 2, 999, 1000, 1234, 1_000_001, 12]
        names = sorted(block_name(i, j, 8) for i in ids for j in range(2))
        for name in names:
            await store.put(name, b"12345678")
        assert await collect(store) == names
        assert await collect(store, "chunks/") == names
        assert await collect(store, "chunks/0/0/") == sorted(
            n for n in names if n.startswith("chunks/0/0/"))
        assert await collect(store, "chunks/0/1/") == [block_name(1000, 0, 8),
                                                       block_name(1000, 1, 8),
                                                       block_name(1234, 0, 8),
                                                       block_name(1234, 1, 8)]
        assert await collect(store, "chunks/1/") == [block_name(1_000_001, 0, 8),
                                                     block_name(1_000_001, 1, 8)]
        # A prefix may end inside a path component.
        assert await collect(store, "chunks/0/0/1_") == [block_name(1, 0, 8),
                                                         block_name(1, 1, 8)]
        assert await collect(store, "chunks/0/0/1") == sorted(
            [block_name(1, j, 8) for j in range(2)] + [block_name(12, j, 8) for j in range(2)])
        assert await collect(store, "chunks/0/0/99") == [block_name(999, 0, 8),
                                                         block_name(999, 1, 8)]
        assert await collect(store, "chunks/0/1") == sorted(
            n for n in names if n.startswith("chunks/0/1"))
        assert await collect(store, "chunks/7/") == []
        assert await collect(store, "other") == []

    # -- concurrency ---------------------------------------------------------------------

    async def test_concurrent_puts(self, store_pair: StorePair) -> None:
        store = store_pair.store
        blocks = {block_name(100 + i, i % 3, 1000 + i): data_of(1000 + i, i) for i in range(40)}

        async with trio.open_nursery() as nursery:
            for name, data in blocks.items():
                nursery.start_soon(store.put, name, data)
        for name, data in blocks.items():
            assert await store.get(name) == data
        assert await collect(store) == sorted(blocks)

    async def test_readers_see_all_or_nothing(self, store_pair: StorePair) -> None:
        store = store_pair.store
        name = block_name(77, 0, 256 * 1024)
        data = data_of(256 * 1024, 3)
        seen: list[bytes | None] = []

        async def reader() -> None:
            for _ in range(20):
                try:
                    seen.append(await store.get(name))
                except BlockNotFound:
                    seen.append(None)
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(reader)
            nursery.start_soon(store.put, name, data)
        assert all(s is None or s == data for s in seen)
        assert await store.get(name) == data

    async def test_max_block_bytes_fits(self, store_pair: StorePair) -> None:
        limit = store_pair.store.max_block_bytes
        if limit is None:
            limit = 4 << 20  # unlimited stores must take at least a default 4 MiB block
        name = block_name(10, 0, limit)
        data = data_of(limit)
        await store_pair.store.put(name, data)
        assert await store_pair.store.get(name) == data


class ChecksumContract:
    """Corruption below a :class:`ChecksummedStore` is always detected (``checked_pair``)."""

    @staticmethod
    def _inner(pair: StorePair) -> ObjectStore:
        assert pair.inner is not None
        return pair.inner

    @pytest.mark.parametrize("where", [0, 5, 11, 12, 20, -1])
    async def test_flipped_byte_is_block_corrupt(self, checked_pair: StorePair, where: int,
                                                 caplog: pytest.LogCaptureFixture) -> None:
        inner = self._inner(checked_pair)
        name = block_name(31337, 2, 64)
        await checked_pair.store.put(name, data_of(64))
        raw = bytearray(await inner.get(name))
        assert len(raw) > 64  # the header is stored below
        raw[where] ^= 0x01
        await inner.put(name, bytes(raw))
        with caplog.at_level(logging.ERROR, logger="kvfs.objstore"):
            with pytest.raises(BlockCorrupt) as info:
                await checked_pair.store.get(name)
        assert info.value.name == name
        assert name in str(info.value)
        assert any(r.levelno == logging.ERROR and name in r.getMessage()
                   for r in caplog.records)

    @pytest.mark.parametrize("raw", [b"", b"KVB", b"KVB1\x00\x00", b"garbage-garbage"])
    async def test_malformed_block_is_block_corrupt(self, checked_pair: StorePair,
                                                    raw: bytes) -> None:
        inner = self._inner(checked_pair)
        name = block_name(8, 0, len(raw))
        await inner.put(name, raw)
        with pytest.raises(BlockCorrupt):
            await checked_pair.store.get(name)

    async def test_empty_block_is_checksummed(self, checked_pair: StorePair) -> None:
        inner = self._inner(checked_pair)
        name = block_name(9, 0, 0)
        await checked_pair.store.put(name, b"")
        assert len(await inner.get(name)) == 12
        assert await checked_pair.store.get(name) == b""
