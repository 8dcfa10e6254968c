"""``kvfs restore PATH --rev R`` / ``kvfs restore PATH --at TIME|REV``: bring a file, or
every file below a directory, back to an earlier version.

The restore is itself a change, kept in the history.  ``--rev`` names one version of the
file (see ``kvfs log``).  ``--at`` takes the state of PATH -- a file, or a directory and
everything below it -- at a revision or a time: each file whose state then differs from
its state now is restored, one whose kept history says it did not exist then is removed.
"""

from __future__ import annotations

import argparse

from kvfs.cli.history import ask, parse_revision, parse_time, resolve


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("restore", help="restore a file or a directory from its history",
                       description="Restore PATH to one of its versions (--rev, see kvfs "
                                   "log), or PATH and every file below it to their state at "
                                   "a revision or a time (--at).")
    p.add_argument("path", metavar="PATH")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--rev", metavar="REV", help="the version of the file to restore")
    which.add_argument("--at", metavar="TIME|REV",
                       help="a revision, @UNIX_SECONDS, or an ISO date and time")
    return p


def run(args: argparse.Namespace) -> int:
    req: dict[str, object]
    if args.rev is not None:
        req = {"rev": parse_revision(args.rev)}
    elif args.at.isdigit():
        req = {"at_rev": parse_revision(args.at)}
    else:
        req = {"at_time": parse_time(args.at)}
    mountpoint, vpath = resolve(args.path)
    lines = ask(mountpoint, {"op": "restore", "path": vpath, **req})["lines"]
    for line in lines:
        print(line)
    if not lines:
        print(f"{vpath.decode(errors='replace')}: nothing to restore (already as it was)")
    return 0

