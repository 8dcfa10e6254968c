"""``kvfs diff PATH [REV] [REV]``: a unified diff between versions of a file.

With no revision: the newest version against the one before it.  With one: that version
against the file as it is now on the mount.  With two: the first against the second.  A
removed file, or a version that is a tombstone, compares as empty; binary content (a NUL
byte) is only reported as differing.  Exit status 0 whether or not they differ (as
``git diff``); 1 with ``kvfs: error: ...`` for bad input.
"""

from __future__ import annotations

import argparse
import difflib
import os
import stat
import sys

from kvfs.cli.history import ask, parse_revision, resolve
from kvfs.volume import VolumeError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("diff", help="show how versions of a file differ",
                       description="Unified diff between two versions of PATH (see kvfs log "
                                   "for revisions): none given, the newest against the one "
                                   "before; one, that version against the file now; two, "
                                   "the first against the second.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("revs", nargs="*", metavar="REV")
    return p


def _current(path: str) -> bytes:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return b""
    if stat.S_ISLNK(st.st_mode):
        return os.fsencode(os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        raise VolumeError(f"{path} is not a regular file or symlink")
    with open(path, "rb") as f:
        return f.read()


def run(args: argparse.Namespace) -> int:
    if len(args.revs) > 2:
        raise VolumeError("give at most two revisions")
    revs = [parse_revision(r) for r in args.revs]
    mountpoint, vpath = resolve(args.path)
    name = vpath.decode(errors="replace")

    def version(rev: int) -> tuple[str, bytes]:
        got = ask(mountpoint, {"op": "content", "path": vpath, "rev": rev})
        return f"{name}@{rev}", bytes(got["data"])

    if not revs:
        versions = ask(mountpoint, {"op": "log", "path": vpath})["versions"]
        if len(versions) < 2:
            old = (f"{name}@none", b"")
        else:
            old = version(versions[-2]["revision"])
        new = version(versions[-1]["revision"])
    elif len(revs) == 1:
        old, new = version(revs[0]), (f"{name} (now)", _current(args.path))
    else:
        old, new = version(revs[0]), version(revs[1])
    if old[1] == new[1]:
        return 0
    if b"\0" in old[1] or b"\0" in new[1]:
        print(f"Binary versions {old[0]} and {new[0]} differ")
        return 0
    sys.stdout.writelines(difflib.unified_diff(
        old[1].decode(errors="replace").splitlines(keepends=True),
        new[1].decode(errors="replace").splitlines(keepends=True), old[0], new[0]))
    return 0
