"""Runs the KV contract (tests/kv_contract.py) against every in-process engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kv_contract import KVContract

from kvfs.kv.embedded import EmbeddedEngine
from kvfs.kv.local import MemoryEngine
from kvfs.raftkv.embedded import EmbeddedMember, open_embedded


class TestMemoryEngine(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[MemoryEngine]:
        engine = MemoryEngine()
        yield engine
        await engine.aclose()


class TestEmbeddedStore(KVContract):
    """The embedded store: a one-member Raft cluster in this process."""

    @pytest.fixture
    async def kv(self, tmp_path: Path) -> AsyncIterator[EmbeddedMember]:
        engine = await open_embedded(str(tmp_path / "store"), create=True)
        yield engine
        await engine.aclose()


class TestEmbeddedStoreTinySnapshots(KVContract):
    """The same contract while snapshots, segment rotation and the freeing of value files
    happen all the time."""

    @pytest.fixture
    async def kv(self, tmp_path: Path) -> AsyncIterator[EmbeddedMember]:
        engine = await open_embedded(str(tmp_path / "store"), create=True, snapshot_every=3,
                                     snapshot_bytes=4096, segment_bytes=512,
                                     large_value_bytes=1024)
        yield engine
        await engine.aclose()


class TestLegacyEmbeddedEngine(KVContract):
    """The earlier embedded store, still the reader of volumes converted on first open."""

    @pytest.fixture
    async def kv(self, tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
        engine = await EmbeddedEngine.open(str(tmp_path / "store"))
        yield engine
        await engine.aclose()


class TestLegacyEmbeddedEngineTinySnapshots(KVContract):
    """The same contract while snapshots and segment rotation happen all the time."""

    @pytest.fixture
    async def kv(self, tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
        engine = await EmbeddedEngine.open(str(tmp_path / "store"), snapshot_every=3,
                                           segment_bytes=512, large_value_bytes=1024)
        yield engine
        await engine.aclose()
