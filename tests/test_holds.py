"""Holds of unlinked-but-open files (``SS sid ino``) against a session that comes back,
through the filesystem API (pure logic on the in-memory engine).

A cleaner that found a session dead releases its holds one transaction at a time; if the
session registers again in between (and restores its holds), the release must not undo
that, or a file still open on that mount loses its data after the grace period.
"""

from __future__ import annotations

import os

from fsapi import ROOT, USER

from kvfs.kv.api import Delete, Put
from kvfs.meta import keys
from kvfs.vfs.fs import FileSystem


async def test_release_of_a_dead_sessions_hold_spares_a_session_back_alive(fs: FileSystem
                                                                          ) -> None:
    fh, ino, _ = await fs.create(USER, ROOT, b"f", 0o644, os.O_CREAT | os.O_WRONLY)
    await fs.release(fh)
    other = 77
    hold = keys.sustained(other, ino)
    # Session 77 holds the file and has just registered again.
    await fs.meta.kv.commit([], [Put(hold, b""), Put(keys.session(other), b"info")])
    await fs.meta.release_orphan(ino, other)  # a cleaner that saw it dead a moment ago
    assert await fs.meta.kv.get(hold) is not None
    # Once it is really gone, its hold goes.
    await fs.meta.kv.commit([], [], [Delete(keys.session(other))])
    await fs.meta.release_orphan(ino, other)
    assert await fs.meta.kv.get(hold) is None
