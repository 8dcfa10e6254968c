"""Versions due for files changed through open handles, recorded with the commit that
makes them true where possible.

A file gets one version per change a user would name: ``echo x > f`` is one version, not
"created empty" then "written".  So:

* a file created through a handle gets its ``create`` version in the create's own
  transaction (:meth:`PendingVersions.on_create`), and the key of that version is kept;
* the close that commits written data (:meth:`flush_record`) writes the version of the
  file as that commit leaves it, in that commit -- under the kept key when the file was
  created by this handle (the same version, now with its content), else as a new one;
* a change without data that no close committed (an ``O_TRUNC``, an ``fchmod``) is
  recorded when the handle is released (:meth:`release`), in a transaction of its own.

Invariant: ``_due[ino]`` exists exactly while ``ino`` has a change no version shows yet,
or was created by a handle whose ``create`` version may still take its content.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvfs.history.recorder import Recorder
from kvfs.history.records import CREATE, WRITE
from kvfs.kv.txn import Txn
from kvfs.meta.records import Attr, now_ns


@dataclass(slots=True)
class _Due:
    kind: str
    uid: int
    changed: bool  # something no version shows yet
    wrote: bool  # ... and it includes written data
    created_as: tuple[bytes, int, int] | None = None  # (path, time, seq) of its create
    generation: int = 0  # counts changes, so a version knows whether it shows the last


class PendingVersions:
    """One mount's versions due (module docstring)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._due: dict[int, _Due] = {}

    async def on_create(self, path: bytes | None, uid: int, *, handle: bool = True
                        ) -> Callable[[Txn, int, Attr], Awaitable[None]] | None:
        """The callback that records a new file's ``create`` version inside the create's
        transaction (None when ``path`` keeps no history).  ``handle``: the create opens
        the file (open(2) with O_CREAT), so its first written data joins that version."""
        rec = self.recorder
        if path is None or not rec.settings.covers(path):
            return None
        seq, at = await rec.meta.gc_ids.next(), now_ns()

        async def record(t: Txn, ino: int, a: Attr) -> None:
            await rec.put_version(t, ino, a, CREATE, uid, [path], at, seq)
            if handle:
                t.on_commit(lambda: self._due.__setitem__(
                    ino, _Due(CREATE, uid, False, False, (path, at, seq))))

        return record

    def changed(self, ino: int, kind: str, uid: int, *, wrote: bool = False) -> None:
        """``ino`` changed through an open handle."""
        if not self.recorder.enabled:
            return
        due = self._due.get(ino)
        if due is None:
            self._due[ino] = _Due(kind, uid, True, wrote)
        else:
            due.uid, due.changed, due.wrote = uid, True, due.wrote or wrote
            due.generation += 1

    async def flush_record(self, ino: int
                           ) -> tuple[Callable[[Txn, Attr], Awaitable[None]], _Due, int] | None:
        """For a close with written data: the callback recording the version inside the
        commit of that data, and the record it settles; None when no version is due."""
        due = self._due.get(ino)
        rec = self.recorder
        if due is None or not due.wrote or not rec.enabled:
            return None
        attr = await rec.meta.getattr(ino)
        paths = [p for p in await rec.paths_of(ino, attr) if rec.settings.covers(p)]
        targets: list[tuple[bytes, int, int]] = []
        at = now_ns()
        for p in paths:
            if due.created_as is not None and due.created_as[0] == p:
                targets.append(due.created_as)  # the create's version, now with content
            else:
                targets.append((p, at, await rec.meta.gc_ids.next()))
        kind = CREATE if due.created_as is not None else due.kind

        async def record(t: Txn, a: Attr) -> None:
            for path, when, seq in targets:
                await rec.put_version(t, ino, a, kind, due.uid, [path], when, seq)

        return record, due, due.generation

    def settled(self, ino: int, due: _Due, generation: int) -> None:
        """The version of ``due`` as of ``generation`` committed; a change made meanwhile
        stays due."""
        if self._due.get(ino) is due and due.generation == generation:
            del self._due[ino]

    async def release(self, ino: int) -> None:
        """The handle of ``ino`` is released: record what no version shows yet."""
        due = self._due.pop(ino, None)
        if due is None or not due.changed:
            return
        if due.created_as is not None:  # still its create: that version, brought up to date
            path, at, seq = due.created_as
            await self.recorder.record_file(ino, CREATE, due.uid, paths=[path], at=at, seq=seq)
        else:
            await self.recorder.record_file(ino, due.kind or WRITE, due.uid)

    async def release_all(self) -> None:
        for ino in list(self._due):
            await self.release(ino)
