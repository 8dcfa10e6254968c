"""Expected outage errors, and how code that survives them logs them.

An engine that cannot be reached (:class:`~kvfs.kv.api.EngineUnavailable`) or is full
(:class:`~kvfs.kv.api.NoSpace`), and an object store that is full or whose engine cannot
be reached, are conditions of the deployment, not bugs: a background round that meets one
tries again later, and a request fails with EIO or ENOSPC.  Their message says all there
is to say, and a traceback would only repeat where the call was made, every round for
as long as the outage lasts.  :func:`log_failure` therefore logs them as one line, and
keeps the traceback for every other exception, which is unexpected.

Object stores wrap the engine error behind a failed block operation (``__cause__``, see
:mod:`kvfs.objstore.kvblob`), so :func:`is_outage` looks one level into the cause.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio

from kvfs.kv.api import EngineUnavailable, NoSpace
from kvfs.objstore.api import ObjectStoreError, ObjectStoreFull

OUTAGES = (EngineUnavailable, NoSpace, ObjectStoreFull)


def is_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an expected outage (see module docstring)."""
    return isinstance(exc, OUTAGES) or (
        isinstance(exc, ObjectStoreError) and isinstance(exc.__cause__, OUTAGES))


def log_failure(logger: logging.Logger, msg: str, *args: object,
                level: int = logging.WARNING) -> None:
    """Log the exception being handled: ``msg: error`` at ``level`` on one line for an
    expected outage, else ``msg`` at ERROR with the traceback.  Call from an ``except``."""
    exc = sys.exc_info()[1]
    if is_outage(exc):
        logger.log(level, f"{msg}: %s", *args, exc)
    else:
        logger.exception(msg, *args)


@asynccontextmanager
async def side_by_side() -> AsyncIterator[trio.Nursery]:
    """A nursery for tasks that succeed or fail as one (the blocks of a write, say): when
    tasks fail, the first one's own error is raised rather than an ExceptionGroup, so a
    full store or an unreachable engine reaches the caller as the error it maps to ENOSPC
    or EIO -- as when there was one task.  Only cancellations stay grouped."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        failures = [exc for exc in exception_leaves(group) if isinstance(exc, Exception)]
        if not failures:
            raise
        raise failures[0]  # noqa: B904 - its own cause (the engine's error) is what counts


def exception_leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions inside ``group`` and its nested groups."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from exception_leaves(exc)
        else:
            yield exc
