"""Exclusive ownership of an embedded store's directory.

The holder keeps an ``fcntl.flock`` on ``<dir>/LOCK`` for as long as the store is open and
writes ``"<pid> <host>"`` into it so that a refused opener can say who holds it.  flock
locks belong to an open file description, so a second open in the same process is refused
just like one from another process; the lock vanishes with the holder (even on kill -9).
"""

from __future__ import annotations

import fcntl
import os
import socket

from kvfs.kv.api import StoreLocked


class DirLock:
    """A held lock on a store directory; :meth:`release` gives it up."""

    def __init__(self, directory: str, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str) -> DirLock:
        """Lock ``directory`` or raise :class:`StoreLocked` naming the holder (blocking)."""
        path = os.path.join(directory, "LOCK")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
            finally:
                os.close(fd)
            who = (f"pid {holder[0]} on host {holder[1]}" if len(holder) >= 2
                   else "another process")
            raise StoreLocked(
                f"store directory {directory} is in use by {who} (lock file {path})") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock
