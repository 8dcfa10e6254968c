"""``kvfs dump META_URL FILE [--with-data]``: the whole volume into one dump file.

FILE ``-`` is stdout.  A file is written under a temporary name in its directory and
renamed into place once complete, so an interrupted or failed dump never leaves a file
that looks whole (a damaged one would be refused by ``kvfs load`` anyway).  The summary
goes to stderr, so stdout can carry the dump.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import BinaryIO

import trio

from kvfs.cli.progress import Progress, size_text
from kvfs.dump.dump import DumpSummary, dump


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dump", help="dump a whole volume into a file",
        description="Write every metadata key of a volume (not sessions, watcher records "
                    "or the compactor role) into a portable, checksummed dump file, and "
                    "with --with-data every block its files, queues and history name.  "
                    "Dump a volume no mount is changing: the engine is read page by page, "
                    "not at one revision.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("file", metavar="FILE", help="the dump file, or - for stdout")
    p.add_argument("--with-data", action="store_true",
                   help="include the data blocks (without: metadata only, for a load whose "
                        "--bucket already holds the blocks)")
    return p


def _text(s: DumpSummary) -> str:
    return (f"dumped {s.keys} keys, {s.blocks} blocks ({size_text(s.block_bytes)} of data), "
            f"{size_text(s.bytes_written)} written")


def _to_file(file: str, write: Callable[[BinaryIO], Awaitable[DumpSummary]]) -> DumpSummary:
    """Run ``write`` into a temporary file beside ``file``, renamed over it when done."""
    path = os.path.abspath(file)
    fd, tmp = tempfile.mkstemp(prefix=".kvfs-dump-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as out:
            summary = trio.run(write, out)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return summary


def run(args: argparse.Namespace) -> int:
    with Progress("dumping", unit="B", unit_scale=True) as bar:
        shown = 0

        def progress(s: DumpSummary) -> None:
            nonlocal shown
            bar.advance(s.bytes_written - shown)
            shown = s.bytes_written

        async def to(out: BinaryIO) -> DumpSummary:
            return await dump(args.meta_url, out, with_data=args.with_data,
                              progress=progress)

        if args.file == "-":
            summary = trio.run(to, sys.stdout.buffer)
        else:
            summary = _to_file(args.file, to)
    if summary.missing_queued_blocks:
        print(f"kvfs: {summary.missing_queued_blocks} blocks of deleted, retained or history "
              "slices were already gone and are not in the dump", file=sys.stderr)
    if summary.live_sessions:
        print(f"kvfs: warning: {summary.live_sessions} live sessions: mounts may have changed "
              "the volume while it was dumped", file=sys.stderr)
    print(_text(summary), file=sys.stderr)
    return 0
