"""``kvfs fsck META_URL``: check a volume's consistency (read-only)."""

from __future__ import annotations

import argparse

import trio

from kvfs.meta.fsck import check
from kvfs.volume import open_volume


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("fsck", help="check a volume's consistency",
                       description="Check a volume's metadata and blocks; changes nothing.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--leaked", action="store_true",
                   help="also report blocks no slice refers to")
    return p


def run(args: argparse.Namespace) -> int:
    async def go() -> int:
        vol = await open_volume(args.meta_url)
        try:
            rep = await check(vol.kv, vol.store, vol.fmt.block_size, leaked_blocks=args.leaked)
        finally:
            await vol.aclose()
        for p in rep.problems:
            print(p)
        print(f"{rep.inodes} inodes, {rep.entries} entries, {rep.slices} slices, "
              f"{rep.blocks} blocks: {len(rep.problems)} problems")
        return 1 if rep.problems else 0

    return trio.run(go)
