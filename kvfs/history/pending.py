"""Versions due for files changed through open handles, recorded with the commit that
makes them true.

A file gets one version per change a user would name: ``echo x > f`` is one version, not
"created empty" then "written", and ``cp -a`` (create, write, futimens, fchmod, close) is
one version too.  So every change through a handle writes its version inside its own
transaction, and all of them write the *same* version key -- the handle's version, brought
up to date each time:

* a file created through a handle gets its ``create`` version in the create's own
  transaction (:meth:`PendingVersions.on_create`), and that version's key is kept;
* a close that commits written data (:meth:`flush_record`) and an attribute change through
  a handle (:meth:`change_record`: ``fchmod``, ``futimens``, ``ftruncate``) write the file's
  version as that commit leaves it, under the kept key -- or, for the first change to a
  file this handle did not create, under a new key that is kept from then on;
* what no commit recorded (data flushed on its own before an attribute change, say) is
  recorded when the handle is released (:meth:`release`), in a transaction of its own.

Invariant: ``_due[ino]`` exists while ``ino`` has a change no version shows yet, or while a
handle's version key is kept for its next change.
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
    # (path, time, seq) of the version this handle's changes bring up to date: its create
    # version, or the version its first recorded change wrote.
    version: tuple[bytes, int, int] | None = None
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

    def has_due(self, ino: int) -> bool:
        """Whether ``ino`` has a change due, or a handle's version key kept."""
        return ino in self._due

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
        if due is None or not due.wrote or not self.recorder.enabled:
            return None
        return await self._record(ino, due)

    async def change_record(self, ino: int, kind: str, uid: int
                            ) -> tuple[Callable[[Txn, Attr], Awaitable[None]], _Due, int] | None:
        """For an attribute change through an open handle: the callback recording the
        handle's version inside that change's transaction, and the record it settles
        (pass both to :meth:`settled` once it committed); None without history."""
        if not self.recorder.enabled:
            return None
        self.changed(ino, kind, uid)
        return await self._record(ino, self._due[ino])

    async def _record(self, ino: int, due: _Due
                      ) -> tuple[Callable[[Txn, Attr], Awaitable[None]], _Due, int]:
        rec = self.recorder
        attr = await rec.meta.getattr(ino)
        paths = [p for p in await rec.paths_of(ino, attr) if rec.settings.covers(p)]
        targets: list[tuple[bytes, int, int]] = []
        at = now_ns()
        for p in paths:
            if due.version is not None and due.version[0] == p:
                targets.append(due.version)  # the handle's version, brought up to date
            else:
                targets.append((p, at, await rec.meta.gc_ids.next()))
        kind, generation = due.kind, due.generation

        def keep_key() -> None:
            due.version = targets[0]

        async def record(t: Txn, a: Attr) -> None:
            for path, when, seq in targets:
                await rec.put_version(t, ino, a, kind, due.uid, [path], when, seq)
            if due.version is None and len(targets) == 1:
                t.on_commit(keep_key)

        return record, due, generation

    def settled(self, ino: int, due: _Due, generation: int) -> None:
        """The version of ``due`` as of ``generation`` committed; a change made meanwhile
        stays due.  A kept version key stays for the handle's next change."""
        if self._due.get(ino) is not due or due.generation != generation:
            return
        if due.version is None:
            del self._due[ino]
        else:
            due.changed = due.wrote = False

    async def release(self, ino: int) -> None:
        """The handle of ``ino`` is released: record what no version shows yet."""
        due = self._due.pop(ino, None)
        if due is None or not due.changed:
            return
        if due.version is not None:  # the handle's version, brought up to date
            path, at, seq = due.version
            await self.recorder.record_file(ino, due.kind or WRITE, due.uid, paths=[path],
                                            at=at, seq=seq)
        else:
            await self.recorder.record_file(ino, due.kind or WRITE, due.uid)

    async def release_all(self) -> None:
        for ino in list(self._due):
            await self.release(ino)
