"""The object store contract on the built-in stores, plus store-specific checks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from objstore_contract import (
    ChecksumContract,
    ObjectStoreContract,
    checksum_fixture,
    collect,
    contract_fixture,
)

from kvfs.kv.api import Limits, Put
from kvfs.kv.local import MemoryEngine
from kvfs.objstore.api import (
    BlockNotFound,
    ObjectStore,
    ObjectStoreError,
    block_name,
    parse_block_name,
)
from kvfs.objstore.checksum import HEADER_SIZE, ChecksummedStore
from kvfs.objstore.kvblob import KVBlobStore
from kvfs.objstore.localdir import LocalDirStore


@contextlib.asynccontextmanager
async def localdir_store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    store = LocalDirStore(tmp_path / "blocks")
    try:
        yield store
    finally:
        await store.aclose()


@contextlib.asynccontextmanager
async def kvblob_store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    engine = MemoryEngine()
    store = KVBlobStore(engine)
    try:
        yield store
    finally:
        await store.aclose()
        await engine.aclose()


store_pair = contract_fixture({"localdir": localdir_store, "kvblob": kvblob_store})


checked_pair = checksum_fixture({"localdir": localdir_store, "kvblob": kvblob_store})


class TestObjectStoreContract(ObjectStoreContract):
    pass


class TestChecksumContract(ChecksumContract):
    pass


# -- block names -----------------------------------------------------------------------


def test_block_name_layout() -> None:
    assert block_name(1234, 0, 4194304) == "chunks/0/1/1234_0_4194304"
    assert block_name(1, 2, 3) == "chunks/0/0/1_2_3"
    assert block_name(1_234_567_890, 15, 0) == "chunks/1234/1234567/1234567890_15_0"


@pytest.mark.parametrize("args", [(1, 0, 0), (1234, 0, 4194304), (10**12, 99, 123)])
def test_parse_block_name_round_trip(args: tuple[int, int, int]) -> None:
    assert parse_block_name(block_name(*args)) == args


@pytest.mark.parametrize("name", [
    "", "chunks", "chunks/0/0/1_2", "chunks/0/0/1_2_3_4", "chunks/0/1/1_2_3",
    "chunks/0/0/x_2_3", "chunks/0/0/+1_2_3", "chunks/0/0/1_-2_3", "chunk/0/0/1_2_3",
    "chunks/00/0/1_2_3", "chunks/0/0/01_2_3", "chunks/0/0/0_0_0", "/chunks/0/0/1_2_3",
    "chunks/0/0/1_2_3/", "chunks/0/0/1 _2_3", "chunks/0/0/\u0661_2_3",
])
def test_parse_block_name_rejects_junk(name: str) -> None:
    with pytest.raises(ValueError):
        parse_block_name(name)


@pytest.mark.parametrize("args", [(0, 0, 0), (-1, 0, 0), (1, -1, 0), (1, 0, -1)])
def test_block_name_rejects_bad_coordinates(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        block_name(*args)


# -- LocalDirStore ---------------------------------------------------------------------


async def test_localdir_persists_and_hides_temp_files(tmp_path: Path) -> None:
    name = block_name(1234, 0, 5)
    store = LocalDirStore(tmp_path)
    await store.put(name, b"hello")
    assert (tmp_path / name).read_bytes() == b"hello"
    # A crash mid-put leaves a temporary file; it is never listed.
    (tmp_path / "chunks/0/1/.tmp-1234_1_5.abc").write_bytes(b"junk")
    reopened = LocalDirStore(tmp_path)
    assert await reopened.get(name) == b"hello"
    assert await collect(reopened) == [name]
    assert [p.name for p in (tmp_path / "chunks/0/1").iterdir() if p.name.startswith(".tmp-")
            ] == [".tmp-1234_1_5.abc"]


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "chunks/../../x", "a//b",
                                  "chunks/.tmp-x", "a/./b", "a/b/"])
async def test_localdir_rejects_unsafe_names(tmp_path: Path, name: str) -> None:
    store = LocalDirStore(tmp_path / "root")
    with pytest.raises(ObjectStoreError):
        await store.put(name, b"x")
    with pytest.raises(ObjectStoreError):
        await store.get(name)
    assert not (tmp_path / "x").exists()


async def test_localdir_directory_name_is_not_a_block(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path)
    await store.put(block_name(1, 0, 1), b"x")
    with pytest.raises(BlockNotFound):
        await store.get("chunks/0")
    await store.delete("chunks/0/0/1_0_1/sub")  # through a file: still just "missing"


async def test_localdir_put_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path)
    name = block_name(3, 0, 1)
    os.makedirs(tmp_path / name)  # the final name is a directory: rename must fail
    with pytest.raises(ObjectStoreError):
        await store.put(name, b"x")
    assert [p.name for p in (tmp_path / "chunks/0/0").iterdir()] == ["3_0_1"]


# -- KVBlobStore -----------------------------------------------------------------------


async def test_kvblob_refuses_oversized_block() -> None:
    engine = MemoryEngine(Limits(max_value_bytes=1000, max_request_bytes=4096))
    store = KVBlobStore(engine)
    assert store.max_block_bytes == 1000
    await store.put(block_name(1, 0, 1000), bytes(1000))
    with pytest.raises(ObjectStoreError, match="too large"):
        await store.put(block_name(1, 1, 1001), bytes(1001))
    assert await collect(store) == [block_name(1, 0, 1000)]
    wrapped = ChecksummedStore(store)
    assert wrapped.max_block_bytes == 1000 - HEADER_SIZE
    with pytest.raises(ObjectStoreError, match="too large"):
        await wrapped.put(block_name(2, 0, 990), bytes(990))


async def test_kvblob_keys_and_paged_list() -> None:
    engine = MemoryEngine()
    store = KVBlobStore(engine, prefix=b"blk:")
    names = sorted(block_name(i, 0, 1) for i in range(1, 2502))
    for name in names:
        await store.put(name, b"z")
    kv = await engine.get(b"blk:" + names[0].encode())
    assert kv is not None and kv.value == b"z"
    assert await collect(store) == names
    assert await collect(store, "chunks/0/1/") == sorted(n for n in names
                                                          if n.startswith("chunks/0/1/"))


async def test_kvblob_ignores_keys_outside_prefix() -> None:
    engine = MemoryEngine()
    await engine.commit((), [Put(b"A-meta", b"1"), Put(b"C-meta", b"2")])
    store = KVBlobStore(engine)
    await store.put(block_name(1, 0, 1), b"x")
    assert await collect(store) == [block_name(1, 0, 1)]


def test_describe() -> None:
    assert "memory" in KVBlobStore(MemoryEngine()).describe()
    assert ChecksummedStore(KVBlobStore(MemoryEngine())).describe().startswith("checksummed(")
