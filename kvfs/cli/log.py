"""``kvfs log PATH``: the kept versions of one file, oldest first.

Each line: the version's revision (what ``kvfs diff`` and ``kvfs restore --rev`` take),
when and on which host it was recorded, by which uid, what happened (write, create, attr,
rename, move, link, restore; delete and away leave the path empty), and the file's type,
mode, owner, size and mtime in that version.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvfs.cli.history import ask, resolve, show_time


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("log", help="list the kept versions of a file",
                       description="List the versions the volume's history keeps of PATH "
                                   "(a file on a kvfs mount, which may have been removed).")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _note(v: dict[str, Any]) -> str:
    note = v["note"]
    parts = [f"{k} {note[k]}" for k in ("from", "to", "rev", "restore", "content") if k in note]
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    mountpoint, vpath = resolve(args.path)
    versions = ask(mountpoint, {"op": "log", "path": vpath})["versions"]
    if args.json:
        print(json.dumps({"path": vpath.decode(errors="replace"), "versions": versions},
                         indent=2))
        return 0
    print(f"{'REV':>8}  {'TIME':24}  {'HOST':16} {'UID':>5}  {'CHANGE':8} {'TYPE':7} "
          f"{'MODE':>4} {'OWNER':>11} {'SIZE':>9}  NOTE")
    for v in versions:
        gone = v["type"] == "-"
        print(f"{v['revision']:>8}  {show_time(v['time']):24}  {v['host'][:16]:16} "
              f"{v['uid']:>5}  {v['kind']:8} {v['type']:7} "
              f"{'-' if gone else format(v['mode'], '04o'):>4} "
              f"{'-' if gone else str(v['owner']) + ':' + str(v['group']):>11} "
              f"{'-' if gone else v['size']:>9}  {_note(v)}")
    return 0
