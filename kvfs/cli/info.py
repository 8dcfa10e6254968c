"""``kvfs info PATH``: what the volume holds for one path -- its inode, attributes, chunks,
slices and blocks (and where the blocks live), and how many versions its history keeps.

Asked of the mount holding PATH through its control socket (:mod:`kvfs.fuse.controlsocket`;
the mount answers with :func:`kvfs.vfs.inspect.inspect`), so it works on every engine, the
embedded store included, and needs root like the mount.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from typing import Any

from kvfs.cli.history import ask, resolve, show_time
from kvfs.mountpath import locate


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("info", help="show a path's inode, chunks, slices and blocks",
                       description="Show what the volume holds for PATH (on a kvfs mount): "
                                   "inode, attributes, chunks, slices, blocks and where they "
                                   "live, and the number of versions its history keeps.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _print(info: dict[str, Any]) -> None:
    a = info["attributes"]
    print(f"{info['path']}: inode {info['inode']}")
    print(f"  {a['type']}, mode {stat.filemode(a['mode'] | _type_bits(a['type']))} "
          f"({a['mode']:04o}), owner {a['uid']}:{a['gid']}, size {a['size']}, "
          f"{a['nlink']} link{'s' if a['nlink'] != 1 else ''}, parent inode {a['parent']}")
    print(f"  mtime {show_time(a['mtime'])}, ctime {show_time(a['ctime'])}, "
          f"atime {show_time(a['atime'])}")
    if "target" in info:
        print(f"  target: {info['target']}")
    if "chunks" in info:
        print(f"  {len(info['chunks'])} chunk(s), {info['slices']} slice(s), "
              f"{info['blocks']} block(s) of at most {info['block_size'] // 1024} KiB in "
              f"{info['block_store']}")
        for c in info["chunks"]:
            print(f"  chunk {c['index']}: {len(c['slices'])} slice record(s)")
            for s in c["slices"]:
                where = f"bytes {s['pos']}..{s['pos'] + s['len']} of the chunk"
                if not s["id"]:
                    print(f"    hole: {where}")
                    continue
                print(f"    slice {s['id']} ({s['size']} bytes): {where} from offset "
                      f"{s['off']} of the slice")
                for b in s["blocks"]:
                    print(f"      block {b}")
        if info["chunks_left_out"]:
            print(f"  ... and {info['chunks_left_out']} more chunk(s) not listed")
    h = info["history"]
    if h["versions"]:
        print(f"  history: {h['versions']} version(s), revisions {h['first']} to "
              f"{h['last']} (kvfs log)")
    else:
        print("  history: no versions kept")


def _type_bits(kind: str) -> int:
    return {"file": stat.S_IFREG, "directory": stat.S_IFDIR, "symlink": stat.S_IFLNK,
            "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK, "char device": stat.S_IFCHR,
            "block device": stat.S_IFBLK}.get(kind, 0)


def run(args: argparse.Namespace) -> int:
    if os.path.islink(args.path):
        # The symlink itself, not what it points to (locate resolves the whole path).
        head, name = os.path.split(os.path.abspath(args.path))
        mountpoint, _, rel = locate(head)
        vpath = os.fsencode(rel.rstrip("/") + "/" + name)
    elif os.path.exists(args.path):
        # An existing path is located itself (the mountpoint too, which resolve() -- made
        # for paths that may be gone -- would look for above itself).
        mountpoint, _, rel = locate(args.path)
        vpath = os.fsencode(rel)
    else:
        mountpoint, vpath = resolve(args.path)
    info = ask(mountpoint, {"op": "info", "path": vpath})["info"]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0
