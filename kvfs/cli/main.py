"""The ``kvfs`` command: argument parsing, dispatch, and the one-line error contract.

Every subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``.  User mistakes and unusable volumes raise one of the known error types
and become ``kvfs: error: <one line>`` with exit status 1; nothing else is printed and
nothing is changed.  Only genuine bugs print a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvfs import __version__
from kvfs.cli import (
    bench,
    deploy,
    diff,
    format,
    fsck,
    log,
    mount,
    raft,
    restore,
    status,
    umount,
    watch,
)
from kvfs.fuse.mount import MountError
from kvfs.kv.api import KVError
from kvfs.objstore.api import ObjectStoreError
from kvfs.volume import VolumeError

COMMANDS = (format, mount, umount, status, fsck, bench, raft, watch, deploy, log, diff,
            restore)
USER_ERRORS = (VolumeError, MountError, KVError, ObjectStoreError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvfs", description="kvfs: a distributed POSIX filesystem over a KV store")
    parser.add_argument("--version", action="version", version=f"kvfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = cmd.add_parser(sub)
        p.add_argument("--version", action="version", version=f"kvfs {__version__}")
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s kvfs[%(process)d] %(levelname)s %(name)s: "
                               "%(message)s")
    try:
        return int(args.run(args))
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"kvfs: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
