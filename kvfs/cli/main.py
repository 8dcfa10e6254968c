"""The ``kvfs`` command: argument parsing, dispatch, and the one-line error contract.

Every subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``.  User mistakes and unusable volumes raise one of the known error types
and become ``kvfs: error: <one line>`` with exit status 1; nothing else is printed and
nothing is changed.  Only genuine bugs print a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator

from kvfs import __version__

# Each command is the module of its name in kvfs.cli; a run imports only its own command's
# module, so a light command (deploy, log, restore) does not pay for the whole stack.
COMMANDS = ("format", "mount", "umount", "status", "fsck", "gc", "bench", "raft", "watch",
            "deploy", "log", "diff", "restore", "info", "stats", "config", "destroy", "dump",
            "load")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are the user's problem: one line, exit status 1."""
    from kvfs.errors import VolumeError
    from kvfs.fuse.mount import MountError
    from kvfs.kv.api import KVError
    from kvfs.objstore.api import ObjectStoreError

    return (VolumeError, MountError, KVError, ObjectStoreError, OSError)


def _chosen(argv: list[str]) -> str | None:
    """The command ``argv`` names, or None when it names none (or asks for help)."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``only`` (the others are not imported)."""
    parser = argparse.ArgumentParser(
        prog="kvfs", description="kvfs: a distributed POSIX filesystem over a KV store")
    parser.add_argument("--version", action="version", version=f"kvfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        cmd = importlib.import_module(f"kvfs.cli.{name}")
        p = cmd.add_parser(sub)
        p.add_argument("--version", action="version", version=f"kvfs {__version__}")
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_chosen(argv)).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s kvfs[%(process)d] %(levelname)s %(name)s: "
                               "%(message)s")
    try:
        _refuse_empty_url(args)
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        # A command running tasks side by side (kvfs watch --config) reports its failure
        # as a group: it is the user's problem if everything in it is.
        leaves = list(_leaves(e))
        if not all(isinstance(leaf, user_errors()) for leaf in leaves):
            raise
        first = leaves[0]
        msg = str(first).splitlines()[0] if str(first) else type(first).__name__
        print(f"kvfs: error: {msg}", file=sys.stderr)
        return 1


def _refuse_empty_url(args: argparse.Namespace) -> None:
    """An empty META_URL is a mistake (an unset shell variable, say), never a volume: as a
    path it would name the current directory, which ``kvfs format ""`` would format."""
    if getattr(args, "meta_url", None) == "":
        from kvfs.errors import VolumeError

        raise VolumeError("empty META_URL (a directory, etcd://HOST:PORT/PREFIX, "
                          "raft://HOST:PORT/PREFIX or mem://)")


def _leaves(e: BaseException) -> Iterator[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            yield from _leaves(inner)
    else:
        yield e


if __name__ == "__main__":
    sys.exit(main())
