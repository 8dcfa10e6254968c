"""Expected outage conditions are logged as one line; unexpected errors keep a traceback.

The cleaner is driven against an engine that fails every scan: an outage of the engine or
the store (as its own error, or wrapped by a store) gives one warning line per round, while
an exception nobody expects still gets its traceback.  A FUSE request that meets a store
outage is logged the same way.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator

import pyfuse3
import pytest
import trio
import trio.testing
from fsapi import open_test_fs

from kvfs.chunk.cleanup import Cleaner
from kvfs.fuse.metrics import FuseStats
from kvfs.fuse.ops import _errors
from kvfs.kv.api import EngineUnavailable, NoSpace, RangeResult
from kvfs.kv.local import MemoryEngine
from kvfs.objstore.api import ObjectStoreError, ObjectStoreFull
from kvfs.outage import is_outage
from kvfs.vfs.fs import FileSystem


class FailingEngine(MemoryEngine):
    """An engine whose every range scan raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        raise self.error


def _wrapped(cause: Exception) -> ObjectStoreError:
    """A store error around an engine error, as KVBlobStore raises it."""
    err = ObjectStoreError(f"delete of block 'chunks/0/0/1_0_1' failed: {cause}")
    err.__cause__ = cause
    return err


OUTAGES = {
    "unreachable": EngineUnavailable("etcd at 127.0.0.1:2379: unreachable for 30 s"),
    "full": NoSpace("etcd is out of space (NOSPACE alarm)"),
    "store-full": ObjectStoreFull("put of block 'x' failed: No space left on device"),
    "store-unreachable": _wrapped(EngineUnavailable("etcd at 127.0.0.1:2379: unreachable")),
}


@pytest.fixture
async def fs() -> AsyncIterator[FileSystem]:
    async with open_test_fs("kv") as f:
        yield f


async def _one_round(fs: FileSystem, error: Exception,
                     caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Run the cleaner's loop until its first round has failed; its kvfs.cleanup records."""
    cleaner = Cleaner(fs.meta, fs.slices, interval=3600)
    cleaner.kv = FailingEngine(error)
    with caplog.at_level(logging.INFO, logger="kvfs.cleanup"):
        async with trio.open_nursery() as nursery:
            await nursery.start(cleaner.run)
            # The failed round is logged before the loop waits for its next round.
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    return [r for r in caplog.records if r.name == "kvfs.cleanup"]


@pytest.mark.parametrize("kind", sorted(OUTAGES))
async def test_cleaner_logs_an_outage_as_one_line(fs: FileSystem, kind: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    error = OUTAGES[kind]
    records = await _one_round(fs, error, caplog)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, f"cleanup round failed (retrying later): {error}")]
    assert records[0].exc_info is None
    assert "Traceback" not in caplog.text


async def test_cleaner_keeps_the_traceback_of_a_bug(fs: FileSystem,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    records = await _one_round(fs, KeyError("surprise"), caplog)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.ERROR, "cleanup round failed (retrying later)")]
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError
    assert "Traceback" in caplog.text


def test_what_counts_as_an_outage() -> None:
    assert all(is_outage(e) for e in OUTAGES.values())
    assert not is_outage(ObjectStoreError("get of block 'x' failed: Input/output error"))
    assert not is_outage(_wrapped(KeyError("x")))
    assert not is_outage(KeyError("x"))
    assert not is_outage(None)


async def test_request_that_meets_a_store_outage_logs_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    error = OUTAGES["store-unreachable"]

    class Handlers:
        stats = FuseStats()  # where _errors records each request

        @_errors
        async def read(self) -> None:
            raise error

    with caplog.at_level(logging.INFO, logger="kvfs.fuse"), \
            pytest.raises(pyfuse3.FUSEError) as info:
        await Handlers().read()
    assert info.value.errno == errno.EIO
    assert Handlers.stats.errors == {("read", errno.EIO): 1}
    records = [r for r in caplog.records if r.name == "kvfs.fuse"]
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in records] == [
        (logging.ERROR, f"read failed: {error}", None)]
