"""Durable file and directory operations shared by the stores, the snapshot files and fstab.

A new file or directory survives a power cut only once its entry is synced in its parent
directory; a file's own fsync does not do that.  These helpers block: call them from a
worker thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """Create directory ``path`` and any missing parents, each new entry synced in its
    parent.  The parent of ``path`` is synced even if ``path`` already existed: whoever
    made it may not have synced it, and a power cut would take it with everything in it.
    """
    parent = os.path.dirname(path)
    if not os.path.isdir(path):
        if parent != path and not os.path.isdir(parent):
            make_dirs(parent)
        try:
            os.mkdir(path)
        except FileExistsError:  # created meanwhile by someone else
            if not os.path.isdir(path):
                raise
    fsync_dir(parent)


@contextlib.contextmanager
def replacing(path: str, *, tmp: str | None = None, buffering: int = -1
              ) -> Iterator[BinaryIO]:
    """Write a new ``path`` atomically and durably: the block writes to a temporary file
    (``tmp``, by default ``path + ".tmp"``), which is fsynced and renamed over ``path`` when
    the block ends, and then the directory is synced.  If the block (or the rename) fails,
    the temporary file is removed and ``path`` is as it was."""
    tmp = tmp or f"{path}.tmp"
    try:
        with open(tmp, "wb", buffering=buffering) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
