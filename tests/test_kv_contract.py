"""Runs the KV contract (tests/kv_contract.py) against every in-process engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kv_contract import KVContract

from kvfs.kv.embedded import EmbeddedEngine
from kvfs.kv.local import MemoryEngine


class TestMemoryEngine(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[MemoryEngine]:
        engine = MemoryEngine()
        yield engine
        await engine.aclose()


class TestEmbeddedEngine(KVContract):
    @pytest.fixture
    async def kv(self, tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
        engine = await EmbeddedEngine.open(str(tmp_path / "store"))
        yield engine
        await engine.aclose()


class TestEmbeddedEngineTinySnapshots(KVContract):
    """The same contract while snapshots and segment rotation happen all the time."""

    @pytest.fixture
    async def kv(self, tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
        engine = await EmbeddedEngine.open(str(tmp_path / "store"), snapshot_every=3,
                                           segment_bytes=512, large_value_bytes=1024)
        yield engine
        await engine.aclose()
