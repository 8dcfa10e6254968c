"""The object-store contract on KVBlobStore over a real etcd (blocks as etcd values)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from objstore_contract import (
    ChecksumContract,
    ObjectStoreContract,
    checksum_fixture,
    contract_fixture,
)

from kvfs.kv.etcd import EtcdEngine
from kvfs.objstore.api import ObjectStore
from kvfs.objstore.kvblob import KVBlobStore

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

_member: Member | None = None


@pytest.fixture(autouse=True)
def _etcd_member(etcd_single: Member) -> None:
    global _member
    _member = etcd_single


@contextlib.asynccontextmanager
async def etcd_store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    assert _member is not None
    engine = await EtcdEngine.open(f"etcd://{_member.endpoint}/{unique_prefix('blk')}")
    store = KVBlobStore(engine)
    try:
        yield store
    finally:
        await store.aclose()
        await engine.aclose()


store_pair = contract_fixture({"etcd": etcd_store})
checked_pair = checksum_fixture({"etcd": etcd_store})


class TestEtcdObjectStore(ObjectStoreContract):
    pass


class TestEtcdChecksum(ChecksumContract):
    pass


async def test_max_block_fits_etcd_request_limit(etcd_single: Member) -> None:
    engine = await EtcdEngine.open(f"etcd://{etcd_single.endpoint}/{unique_prefix('blk')}")
    try:
        store = KVBlobStore(engine)
        assert store.max_block_bytes is not None
        assert 1024 * 1024 + 4096 <= store.max_block_bytes < 1536 * 1024
    finally:
        await engine.aclose()
