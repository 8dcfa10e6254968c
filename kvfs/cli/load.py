"""``kvfs load META_URL FILE``: a dump file into an empty engine (FILE ``-``: stdin).

A regular file is verified whole before the engine is touched; a pipe is verified as it
is loaded and everything written is removed again if it turns out damaged (see
kvfs.dump.load).  The summary goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import BinaryIO

import trio

from kvfs.cli.progress import Progress, size_text
from kvfs.dump.load import LoadSummary, check_storage, load
from kvfs.errors import VolumeError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "load", help="load a dump file into an empty engine",
        description="Load a file written by kvfs dump into an engine that holds nothing "
                    "(an embedded directory, etcd:// or raft://).  The volume keeps its "
                    "name, uuid, block size and history settings; --storage and --bucket "
                    "say where its blocks go, as for kvfs format.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("file", metavar="FILE", help="the dump file, or - for stdin")
    p.add_argument("--storage", default="kv",
                   help="where blocks go: kv (the target engine, default), file or etcd")
    p.add_argument("--bucket", default="",
                   help="the directory (file) or etcd://HOST:PORT[,...]/PREFIX (etcd); "
                        "for a dump made without --with-data, where the blocks already are")
    return p


def _text(s: LoadSummary) -> str:
    return (f"loaded {s.keys} keys, {s.blocks} blocks ({size_text(s.block_bytes)} of data), "
            f"{size_text(s.bytes_read)} read")


def run(args: argparse.Namespace) -> int:
    check_storage(args.storage, args.bucket)  # before the file is opened
    if args.file != "-" and os.path.isdir(args.file):
        raise VolumeError(f"{args.file}: is a directory, not a dump file")
    with Progress("loading", unit="B", unit_scale=True) as bar:
        shown = 0

        def progress(s: LoadSummary) -> None:
            nonlocal shown
            bar.advance(s.bytes_read - shown)
            shown = s.bytes_read

        async def go(src: BinaryIO) -> LoadSummary:
            return await load(args.meta_url, src, storage=args.storage, bucket=args.bucket,
                              progress=progress)

        if args.file == "-":
            summary = trio.run(go, sys.stdin.buffer)
        else:
            with open(args.file, "rb") as src:
                summary = trio.run(go, src)
    print(_text(summary), file=sys.stderr)
    return 0
