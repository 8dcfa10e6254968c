"""``kvfs umount MOUNTPOINT``: unmount a kvfs mount; its daemon flushes and exits."""

from __future__ import annotations

import argparse
import os
import subprocess

from kvfs.fuse.mount import MountError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("umount", help="unmount a volume", description="Unmount a kvfs mount.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")
    return p


def is_kvfs_mount(mp: str) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1] == mp and fields[2].startswith("fuse.kvfs"):
                return True
    return False


def run(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    if not is_kvfs_mount(mp):
        raise MountError(f"{mp} is not a kvfs mount")
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [mp]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        detail = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise MountError(f"cannot unmount {mp}: {detail}")
    return 0
