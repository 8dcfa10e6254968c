"""The one error type that carries a POSIX errno from metadata and data code up to FUSE."""

from __future__ import annotations

import errno
import os


class FSError(Exception):
    """A filesystem operation failed with ``errno``; the FUSE layer returns exactly that."""

    def __init__(self, err: int, detail: str = "") -> None:
        super().__init__(f"{errno.errorcode.get(err, err)}: {detail or os.strerror(err)}")
        self.errno = err


class VolumeError(Exception):
    """A user-facing problem with a volume, its URL or a path given to a command; the
    message is one line.  (Here rather than in kvfs.volume so that light commands need not
    import the whole stack to raise it.)"""
