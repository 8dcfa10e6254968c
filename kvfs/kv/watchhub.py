"""Live watches over one state machine: catch-up from history, then events as they apply.

Shared by every engine whose state machine runs in this process -- the memory and embedded
engines, and each member of the Raft store -- so watches behave the same on all of them.

The hub holds no state of its own beyond its watchers.  An engine calls :meth:`notify`
with the events of each command *once that command may be observed* (durable and, for the
Raft store, committed and applied); a watcher registered with a catch-up list taken from the
same state, with no await in between, therefore sees every event exactly once, in revision
order.

Invariant: a watcher's pending events are in increasing ``mod_revision`` order, grouped by
revision, with no gaps after its start revision.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from kvfs.kv.api import WatchBatch, WatchEvent
from kvfs.kv.state import Event, in_range


class _Watcher:
    def __init__(self, start: bytes, end: bytes) -> None:
        self.start = start
        self.end = end
        self.pending: deque[Event] = deque()
        self.wakeup = trio.Event()
        self.error: BaseException | None = None


class WatchHub:
    def __init__(self, load_value: Callable[[Any], Awaitable[bytes]]) -> None:
        """``load_value`` turns a value as the state machine holds it into bytes; a value
        freed since the event (FileNotFoundError) is delivered as empty."""
        self._load_value = load_value
        self._watchers: set[_Watcher] = set()
        self._closed = False

    def notify(self, events: list[Event]) -> None:
        if not events:
            return
        for w in self._watchers:
            matched = [e for e in events if in_range(e.key, w.start, w.end)]
            if matched:
                w.pending.extend(matched)
                w.wakeup.set()

    async def watch(self, start: bytes, end: bytes,
                    catch_up: list[Event]) -> AsyncIterator[WatchBatch]:
        """Deliver ``catch_up`` and then every notified event for ``[start, end)``.

        The caller computes ``catch_up`` from the state and calls this with no checkpoint
        in between, so nothing applied meanwhile is missed (registration happens before the
        first await).
        """
        w = _Watcher(start, end)
        w.pending.extend(catch_up)
        self._watchers.add(w)
        try:
            while not self._closed:
                if not w.pending:
                    if w.error is not None:
                        raise w.error
                    w.wakeup = trio.Event()
                    await w.wakeup.wait()
                    continue
                events = list(w.pending)
                w.pending.clear()
                out = [WatchEvent(e.key, None if e.value is None else
                                  await self._load_or_empty(e.value), e.mod_revision)
                       for e in events]
                yield WatchBatch(events[-1].mod_revision, out)
        finally:
            self._watchers.discard(w)

    async def _load_or_empty(self, stored: Any) -> bytes:
        # A watcher may lag behind a later delete that already freed a large value.
        try:
            return await self._load_value(stored)
        except FileNotFoundError:
            return b""

    def abort_all(self, error: BaseException) -> None:
        """End every current watch with ``error`` (its events can no longer be delivered
        without a gap: a Raft member jumped ahead by installing a snapshot)."""
        for w in self._watchers:
            w.error = error
            w.wakeup.set()

    def close(self) -> None:
        """End every watch (their iterators return)."""
        self._closed = True
        for w in self._watchers:
            w.wakeup.set()
