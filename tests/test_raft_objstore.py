"""The object-store contract on KVBlobStore over ``raft://`` (blocks as values of the Raft
store), with one member and with three -- the client starting at a follower, so block
writes are forwarded to the leader and reads pass a ReadIndex barrier on a follower.

The members run in this process with client servers on loopback (see test_raft_client).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from objstore_contract import (
    ChecksumContract,
    ObjectStoreContract,
    StoreFactory,
    checksum_fixture,
    contract_fixture,
)
from test_raft_client import running

from kvfs.objstore.api import ObjectStore
from kvfs.objstore.kvblob import KVBlobStore
from kvfs.volume import open_engine


def _members(size: int) -> StoreFactory:
    @contextlib.asynccontextmanager
    async def store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
        async with running(size) as cluster:
            leader = await cluster.leader()
            followers = [i for i in cluster.endpoints if i != leader]
            order = followers + [leader]  # the client starts at a follower when there is one
            engine = await open_engine(cluster.url(*order, prefix="blk"))
            blocks = KVBlobStore(engine)
            try:
                yield blocks
            finally:
                await blocks.aclose()
                await engine.aclose()

    return store


FACTORIES = {"raft-1": _members(1), "raft-3": _members(3)}
store_pair = contract_fixture(FACTORIES)
checked_pair = checksum_fixture(FACTORIES)


class TestRaftObjectStore(ObjectStoreContract):
    pass


class TestRaftChecksum(ChecksumContract):
    pass
