"""``kvfs umount MOUNTPOINT``: unmount a kvfs mount; its daemon flushes and exits.

MOUNTPOINT is looked up in the mount table as given (made absolute) first, so unmounting a
mount whose daemon hangs never touches it; only a path not found that way is resolved
through symlinks, as the kernel records mountpoints by their canonical path.
"""

from __future__ import annotations

import argparse
import os
import subprocess

from kvfs.fuse import mounttab
from kvfs.fuse.mount import MountError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("umount", help="unmount a volume", description="Unmount a kvfs mount.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")
    return p


def kvfs_mount_at(path: str) -> str | None:
    """The canonical mountpoint of the kvfs mount at ``path``, or None if there is none."""
    mp = os.path.abspath(path)
    entry = mounttab.find(mp)
    if entry is None:
        mp = os.path.realpath(path)
        entry = mounttab.find(mp)
    return mp if entry is not None and entry.is_kvfs else None


def run(args: argparse.Namespace) -> int:
    mp = kvfs_mount_at(args.mountpoint)
    if mp is None:
        raise MountError(f"{os.path.abspath(args.mountpoint)} is not a kvfs mount")
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [mp]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        detail = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise MountError(f"cannot unmount {mp}: {detail}")
    return 0
