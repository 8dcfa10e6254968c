"""An object store in a local directory: one file per block.

Layout: the block ``chunks/0/1/1234_0_4194304`` is the file ``<root>/chunks/0/1/1234_0_4194304``.

Invariants:
  * ``put`` is atomic and durable: data goes to a temporary file in the block's directory,
    is fsync'd, renamed over the final name, and the directory is fsync'd.  Directories
    created on the way, the root and its missing parents included, are fsync'd in their
    parent, so a block that ``put`` acknowledged survives a crash or a power cut; a crash
    mid-put leaves at most a stray ``.tmp-*`` file, which :meth:`LocalDirStore.list` never
    reports.
  * Names are validated: no absolute paths, empty, ``.`` or ``..`` components, and no
    component starting with ``.`` (reserved for temporary files), so a name can never
    escape the root.
  * All blocking I/O runs in worker threads through ``trio.to_thread.run_sync``, at most
    :attr:`LocalDirStore.limiter` many at a time.
  * Empty directories are left in place by ``delete`` (removing them would race with a
    concurrent ``put`` into the same directory).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import AsyncIterator

import trio

from kvfs.durable import fsync_dir, make_dirs, replacing
from kvfs.objstore.api import BlockNotFound, ObjectStore, ObjectStoreError, ObjectStoreFull

_TMP_PREFIX = ".tmp-"
_NOSPACE = (errno.ENOSPC, errno.EDQUOT)


def _check_name(name: str) -> list[str]:
    parts = name.split("/")
    if not name or "\x00" in name or any(not p or p.startswith(".") for p in parts):
        raise ObjectStoreError(f"invalid block name {name!r}")
    return parts


def _os_error(op: str, name: str, exc: OSError) -> ObjectStoreError:
    cls = ObjectStoreFull if exc.errno in _NOSPACE else ObjectStoreError
    err = cls(f"{op} of block {name!r} failed: {exc}")
    err.__cause__ = exc
    return err


class LocalDirStore(ObjectStore):
    """Blocks as files under ``root`` (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *,
                 limiter: trio.CapacityLimiter | None = None) -> None:
        """Use (and create if needed) the directory ``root``.

        ``limiter`` bounds the worker threads doing this store's I/O; pass one to share it
        with other components, or get a private one allowing 16 threads.
        """
        self.root = os.path.abspath(os.fspath(root))
        make_dirs(self.root)
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(16)
        self._synced_dirs: set[str] = {self.root}

    def describe(self) -> str:
        return f"dir:{self.root}"

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *_check_name(name))

    # -- blocking helpers (worker threads) ----------------------------------------------

    def _ensure_dir(self, dirpath: str) -> None:
        """Make sure ``dirpath`` exists and its entry is durable in its parent.

        Each directory's parent is fsync'd once per process even if the directory already
        existed: it may have been created by a concurrent put that has not fsync'd yet, or
        by a process that crashed before doing so.
        """
        if dirpath in self._synced_dirs:
            return
        parent = os.path.dirname(dirpath)
        self._ensure_dir(parent)
        try:
            os.mkdir(dirpath)
        except FileExistsError:
            if not os.path.isdir(dirpath):
                raise
        fsync_dir(parent)
        self._synced_dirs.add(dirpath)

    def _put_sync(self, path: str, data: bytes) -> None:
        dirpath = os.path.dirname(path)
        self._ensure_dir(dirpath)
        tmp = os.path.join(dirpath, f"{_TMP_PREFIX}{os.path.basename(path)}.{secrets.token_hex(6)}")
        with replacing(path, tmp=tmp) as f:
            f.write(data)

    @staticmethod
    def _get_sync(path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    @staticmethod
    def _delete_sync(path: str) -> None:
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass

    @staticmethod
    def _scan_sync(path: str) -> tuple[list[str], list[str]]:
        """(files, subdirectories) directly in ``path``; empty if it is not a directory."""
        files: list[str] = []
        dirs: list[str] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append(entry.name)
                    elif entry.is_file(follow_symlinks=False):
                        files.append(entry.name)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return files, dirs

    # -- ObjectStore ---------------------------------------------------------------------

    async def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            await trio.to_thread.run_sync(self._put_sync, path, data, limiter=self.limiter)
        except OSError as exc:
            raise _os_error("put", name, exc) from exc

    async def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            data = await trio.to_thread.run_sync(self._get_sync, path, limiter=self.limiter)
        except OSError as exc:
            raise _os_error("get", name, exc) from exc
        if data is None:
            raise BlockNotFound(name)
        return data

    async def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            await trio.to_thread.run_sync(self._delete_sync, path, limiter=self.limiter)
        except OSError as exc:
            raise _os_error("delete", name, exc) from exc

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        # Start the walk at the deepest directory the prefix fully names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base and any(not p or p.startswith(".") for p in base.split("/")):
            return
        stack = [base]
        while stack:
            rel = stack.pop()
            path = os.path.join(self.root, *rel.split("/")) if rel else self.root
            try:
                files, dirs = await trio.to_thread.run_sync(self._scan_sync, path,
                                                          limiter=self.limiter)
            except OSError as exc:
                raise _os_error("list", rel or prefix, exc) from exc
            for f in sorted(files):
                name = f"{rel}/{f}" if rel else f
                if name.startswith(prefix):
                    yield name
            for d in sorted(dirs, reverse=True):
                sub = f"{rel}/{d}" if rel else d
                # Descend only where names can still match the prefix.
                if sub.startswith(prefix) or prefix.startswith(sub + "/"):
                    stack.append(sub)

