"""Atomic deploys: replace a directory of a kvfs volume with a local tree in one rename.

``kvfs deploy SRC_DIR MOUNTPOINT/PATH`` works only through the mount, so it is the same on
every engine (etcd, the Raft store, an embedded store):

1. **Validate** everything first (:func:`plan`): SRC_DIR is a directory holding only
   directories, regular files and symlinks; PATH is inside a kvfs mount, is not the
   volume's root, its parent exists and, if PATH exists, it is a directory (not a symlink).
   Bad input raises :class:`~kvfs.volume.VolumeError` before anything is created.
2. **Stage** (:func:`stage`): copy SRC_DIR into ``MOUNTPOINT/.kvfs-deploy/NAME-RANDOM``.
   The staging area is a hidden directory (mode 0700) at the volume's root, not beside PATH:
   the rename stays within one volume (so it is one transaction), and a ``kvfs watch`` of any
   subtree -- ``/etc/nginx``, or ``/etc`` -- never sees the staging churn, since staging is
   outside it.  The copy keeps modes, owners (when run as root), times, symlinks and
   extended attributes (where the source filesystem has them; hard links become separate
   files).  Every file is fsynced before it is closed, so the whole staged tree is
   committed before the swap.
3. **Check** (optional, :func:`run_check`): a shell command sees the staged tree at
   ``$KVFS_DEPLOY_PATH`` (and in place of ``{}``); a non-zero exit, or running past the
   timeout (its whole process group is then killed), rejects the deploy: the staged tree is
   removed and PATH is untouched (:class:`CheckFailed`).
4. **Swap** (:func:`swap`): one ``renameat2`` -- ``RENAME_EXCHANGE`` when PATH exists,
   ``RENAME_NOREPLACE`` when it does not.  kvfs commits a rename as one transaction, so a
   reader on any host sees the whole old tree or the whole new one, never a mix, and PATH
   never goes missing.
5. **Remove the old tree**, now at the staging name (unless kept).  On a shared engine
   another host's kernel may for a moment still resolve PATH to the old directory (its
   cache is invalidated by a watch, normally within milliseconds, at the latest after
   ``entry_timeout``, 1 s by default); removing the old files under it then would make a
   reader there find them missing.  So on shared engines the removal waits a grace period
   (:data:`OLD_TREE_GRACE` seconds unless told otherwise) after the swap; on an embedded
   store (one mount) it starts at once.

Invariants: until the swap nothing at PATH changes; a failed or interrupted deploy before
the swap leaves no staged tree behind (a killed one may -- any ``.kvfs-deploy`` entry not
being deployed is safe to remove); after the swap the old tree is the only thing left to
clean up.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvfs.errors import VolumeError
from kvfs.history.records import STAGING_NAME

STAGING_DIR = STAGING_NAME  # one name, shared with the history that leaves it out
OLD_TREE_GRACE = 2.0  # seconds: over the default entry_timeout (1 s) other mounts cache names
COPY_BUFFER = 1 << 20

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class StageProgress(Protocol):
    """Told how far the copy into staging is (a progress bar, for the CLI)."""

    def copied(self, files: int, nbytes: int) -> None:
        """``files`` files and symlinks, ``nbytes`` bytes copied so far."""

    def staged(self) -> None:
        """The copy is complete (or failed): nothing more will be told."""


class CheckFailed(Exception):
    """The deploy's check rejected the staged tree; nothing changed at PATH."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated deploy: ``target`` is PATH through the mount (canonical), ``exists``
    whether it existed when validated, ``files``/``nbytes`` what SRC holds."""

    src: str
    target: str
    mountpoint: str
    shared: bool
    exists: bool
    files: int
    nbytes: int

    @property
    def staging_root(self) -> str:
        return os.path.join(self.mountpoint, STAGING_DIR)


def _scan(src: str) -> tuple[int, int]:
    """(regular files and symlinks, bytes) under ``src``; VolumeError for anything that is
    not a directory, regular file or symlink (it could not be deployed as it is)."""
    files = nbytes = 0
    for dirpath, dirnames, filenames in os.walk(src, onerror=_raise):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                files += 1
                nbytes += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                files += 1
            elif not stat.S_ISDIR(st.st_mode):
                raise VolumeError(f"{path}: a special file; only directories, regular "
                                  f"files and symlinks can be deployed")
    return files, nbytes


def _raise(e: OSError) -> None:
    raise e


def plan(src: str, target: str, locate: Callable[[str], tuple[str, str]],
         shared: Callable[[str], bool]) -> Plan:
    """Validate a deploy of ``src`` to ``target`` (see the module docstring); VolumeError
    names the first problem.  ``locate`` maps an existing path to ``(mountpoint, path
    within the volume)`` of its kvfs mount, or raises VolumeError (as
    :func:`kvfs.cli.watch.locate` does); ``shared`` tells whether a mountpoint's engine is
    shared with other hosts."""
    if not os.path.isdir(src):
        what = "not a directory" if os.path.exists(src) else "no such directory"
        raise VolumeError(f"{src}: {what}")
    target = os.path.abspath(target)
    parent, name = os.path.split(target)
    if not name or name in (".", ".."):
        raise VolumeError(f"{target}: not a directory name to deploy to")
    if not os.path.isdir(parent):
        raise VolumeError(f"{parent}: no such directory (the parent of {name} must exist)")
    if os.path.ismount(target):
        raise VolumeError(f"{target}: a mountpoint; deploy to a directory inside it")
    mp, vpath = locate(parent)
    target = os.path.join(os.path.realpath(parent), name)
    if vpath == "/" and name == STAGING_DIR or f"{vpath}/".startswith(f"/{STAGING_DIR}/"):
        raise VolumeError(f"{target}: inside the deploy staging area")
    exists = os.path.lexists(target)
    if exists:
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode):
            raise VolumeError(f"{target}: a symlink; deploy to the directory itself")
        if not stat.S_ISDIR(st.st_mode):
            raise VolumeError(f"{target}: not a directory")
    files, nbytes = _scan(src)
    return Plan(os.path.abspath(src), target, mp, shared(mp), exists, files, nbytes)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    """Owner (as root), then mode, xattrs and times: chown first, since it clears the
    set-user-ID bits, and times last, since the other changes touch them."""
    if os.geteuid() == 0:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    shutil.copystat(src, dst, follow_symlinks=False)


def _copy_file(src: str, dst: str) -> None:
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb", closefd=True) as fout:
            shutil.copyfileobj(fin, fout, COPY_BUFFER)
            fout.flush()
            os.fsync(fout.fileno())  # committed before the swap, whatever close does


def _copy_tree(src: str, dst: str, copied: Callable[[int], None]) -> None:
    """Copy the contents of directory ``src`` into the existing directory ``dst``, then
    give ``dst`` the attributes of ``src``; ``copied(size)`` after each file or symlink."""
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        s, d = entry.path, os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            _copy_tree(s, d, copied)
            continue
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
            size = 0
        else:
            _copy_file(s, d)
            size = st.st_size
        _copy_meta(s, d, st)
        copied(size)
    _copy_meta(src, dst, os.lstat(src))


def stage(p: Plan, progress: StageProgress | None = None) -> str:
    """Copy SRC into a new staging directory; return its path.  On any failure (or
    interruption) the staging directory is removed before the exception propagates."""
    files = nbytes = 0

    def copied(size: int) -> None:
        nonlocal files, nbytes
        files += 1
        nbytes += size
        if progress is not None:
            progress.copied(files, nbytes)

    try:
        os.mkdir(p.staging_root, 0o700)
    except FileExistsError:
        if not os.path.isdir(p.staging_root) or os.path.islink(p.staging_root):
            raise VolumeError(f"{p.staging_root}: exists and is not a directory") from None
    staged = tempfile.mkdtemp(prefix=os.path.basename(p.target) + "-", dir=p.staging_root)
    try:
        _copy_tree(p.src, staged, copied)
    except BaseException:
        remove(staged)
        raise
    finally:
        if progress is not None:
            progress.staged()
    return staged


def remove(path: str) -> None:
    """Remove a staged or old tree."""
    shutil.rmtree(path)


def run_check(cmd: str, staged: str, timeout: float) -> None:
    """Run ``cmd`` with ``/bin/sh -c``, ``{}`` replaced by the staged path (quoted) and
    ``KVFS_DEPLOY_PATH`` set to it; CheckFailed, carrying the last line of its stderr, if
    it exits non-zero or is still running after ``timeout`` seconds (then its whole process
    group is killed).  Its stdout goes to ours."""
    shell = cmd.replace("{}", shlex.quote(staged))
    proc = subprocess.Popen(["/bin/sh", "-c", shell], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "KVFS_DEPLOY_PATH": staged})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CheckFailed(f"check timed out after {timeout:g} s: {cmd}") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        last = next((ln.strip() for ln in reversed(err.decode(errors="replace").splitlines())
                     if ln.strip()), "")
        status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exit status {proc.returncode}")
        raise CheckFailed(f"check failed ({status})" + (f": {last}" if last else ""))
    if err:
        os.write(2, err)  # a passing check's warnings are still the operator's to see


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and everything it started
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=5)  # reap; a grandchild that left the group may hold stderr
    except subprocess.TimeoutExpired:
        proc.wait()


_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    """``renameat2(2)`` (Python has no wrapper); OSError on failure."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old, None, new)


def swap(staged: str, p: Plan) -> float:
    """Put the staged tree at PATH in one rename; the seconds the rename took.  Afterwards
    the old tree (if any) is at ``staged``.  VolumeError if PATH appeared or vanished
    since it was validated (another deploy raced this one; nothing changed)."""
    flags = RENAME_EXCHANGE if p.exists else RENAME_NOREPLACE
    t0 = time.monotonic()
    try:
        renameat2(staged, p.target, flags)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOENT, errno.ENOTEMPTY):
            what = "vanished" if p.exists else "appeared"
            raise VolumeError(f"{p.target} {what} during the deploy; nothing changed") from None
        raise
    return time.monotonic() - t0


@dataclass(frozen=True, slots=True)
class Result:
    swap_seconds: float
    old_tree: str | None  # where the old tree was kept (--keep-old), else None


def deploy(p: Plan, check: str | None, timeout: float, keep_old: bool,
           grace: float = OLD_TREE_GRACE, progress: StageProgress | None = None) -> Result:
    """Stage, check, swap and clean up (see the module docstring); ``grace`` is how long
    the old tree outlives the swap on a shared engine; ``progress`` follows the staging
    copy."""
    staged = stage(p, progress)
    try:
        if check is not None:
            run_check(check, staged, timeout)
        took = swap(staged, p)
    except BaseException:
        remove(staged)
        raise
    if not p.exists:
        return Result(took, None)
    if keep_old:
        return Result(took, staged)
    if p.shared:
        time.sleep(grace)
    remove(staged)
    return Result(took, None)
