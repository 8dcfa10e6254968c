"""Shared fixtures.

Filesystem-API fixtures (tests/fsapi.py has the helpers):

* ``fs`` -- a fresh volume on a MemoryEngine, blocks stored in the engine, wrapped in a
  :class:`~kvfs.vfs.fs.FileSystem`;
* ``fs_localdir`` -- the same with blocks in a LocalDirStore under ``tmp_path``;
* ``data_fs`` -- parametrized over both, for data-path tests.

Each of them, on teardown, flushes all buffered writes and runs the fsck (before and after a
cleaner round); any problem fails the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fsapi import assert_consistent, open_test_fs

from kvfs.vfs.fs import FileSystem


@pytest.fixture
async def fs() -> AsyncIterator[FileSystem]:
    async with open_test_fs("kv") as f:
        yield f
        await assert_consistent(f)


@pytest.fixture
async def fs_localdir(tmp_path: Path) -> AsyncIterator[FileSystem]:
    async with open_test_fs("file", tmp_path / "bucket") as f:
        yield f
        await assert_consistent(f)


@pytest.fixture(params=["kv", "localdir"])
async def data_fs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FileSystem]:
    if request.param == "kv":
        ctx = open_test_fs("kv")
    else:
        ctx = open_test_fs("file", tmp_path / "bucket")
    async with ctx as f:
        yield f
        await assert_consistent(f)
