"""``kvfs format META_URL NAME``: create a volume (format record and root directory)."""

from __future__ import annotations

import argparse

import trio

from kvfs.volume import format_volume, open_engine


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("format", help="create a new volume",
                       description="Create a new volume in a metadata engine.")
    p.add_argument("meta_url", metavar="META_URL",
                   help="metadata engine: a directory (embedded store), local:///PATH, or "
                        "etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?cacert=&cert=&key=&user=]")
    p.add_argument("name", metavar="NAME", help="volume name")
    p.add_argument("--storage", choices=("kv", "file", "etcd"), default="kv",
                   help="where blocks go: kv (the metadata engine itself, default), file "
                        "(a local directory) or etcd (another etcd prefix or cluster)")
    p.add_argument("--bucket", default="",
                   help="the directory (file) or etcd://HOST:PORT[,...]/PREFIX (etcd)")
    p.add_argument("--block-size", type=int, metavar="KiB",
                   help="block size in KiB (default 4096 for file, 1024 for kv and etcd)")
    p.add_argument("--force", action="store_true",
                   help="update the settings of an existing volume (never erases data)")
    return p


def run(args: argparse.Namespace) -> int:
    async def go() -> None:
        kv = await open_engine(args.meta_url, create=True)
        try:
            fmt = await format_volume(kv, args.name, storage=args.storage, bucket=args.bucket,
                                      block_kib=args.block_size, force=args.force)
        finally:
            await kv.aclose()
        print(f"formatted volume {fmt.name} (uuid {fmt.uuid}, storage {fmt.storage}, "
              f"block size {fmt.block_size // 1024} KiB)")

    trio.run(go)
    return 0
