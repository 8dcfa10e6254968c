"""Durable directory operations shared by the embedded store and the local block store.

A new file or directory survives a power cut only once its entry is synced in its parent
directory; a file's own fsync does not do that.  These helpers block: call them from a
worker thread.
"""

from __future__ import annotations

import os


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
