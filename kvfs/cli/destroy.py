"""``kvfs destroy META_URL UUID``: remove a volume -- every key of its metadata and every
block of its data -- for good.

The UUID (``kvfs status`` shows it) is the confirmation: a destroy whose UUID is not the
format record's changes nothing.  So does one while any session is live (they are listed:
unmount them first; a crashed mount's session ends with its lease).  On a terminal it also
asks before it starts, unless ``--yes``; elsewhere ``--yes`` is required.

What goes, by where the volume lives:

* the metadata keys: every key of the volume's keyspace (its etcd or Raft prefix), deleted
  in pages of at most :data:`PAGE` keys per transaction so no request is large, the format
  record last -- a destroy that is interrupted can be run again to finish;
* the blocks: in the metadata engine (``--storage kv``) with the keys; a ``file`` bucket's
  ``chunks/`` tree (the bucket directory itself stays); an ``etcd`` bucket's whole prefix,
  paged the same way;
* an embedded store: after the checks, its ``raft/`` directory (the Raft log, snapshots and
  value files, which would otherwise keep old values until compaction) is removed -- the
  store directory itself, and anything else in it, stays.

Sessions that start while a destroy runs are not stopped; do not mount a volume being
destroyed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

import trio

from kvfs.cli.config import open_unmounted
from kvfs.cli.progress import Progress
from kvfs.errors import VolumeError
from kvfs.kv.api import Delete, KVEngine
from kvfs.meta import keys
from kvfs.meta.session import list_sessions
from kvfs.volume import VolumeFormat, embedded_dir, open_engine, read_format

PAGE = 64  # keys deleted per transaction (etcd allows 128 operations)
_END = b"\x00"  # "to the end of the volume's keyspace" (kvfs.kv.api)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("destroy", help="remove a volume, its metadata and its data",
                       description="Remove every key and block of the volume at META_URL. "
                                   "UUID (see kvfs status) must be the volume's; refused "
                                   "while the volume is mounted anywhere.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("uuid", metavar="UUID", help="the volume's UUID, as confirmation")
    p.add_argument("--yes", action="store_true", help="do not ask (required when stdin is "
                                                      "not a terminal)")
    return p


async def sweep(kv: KVEngine, bar: Progress, *, last: bytes | None = None) -> int:
    """Delete every key of ``kv``'s keyspace, :data:`PAGE` per transaction, ``last`` (if
    present) after all the others; the number deleted."""
    deleted, start = 0, b""
    while True:
        res = await kv.range(start, _END, limit=PAGE, keys_only=True)
        page = [item.key for item in res.kvs if item.key != last]
        if page:
            await kv.commit([], [], [Delete(k) for k in page])
            deleted += len(page)
            bar.advance(len(page))
        if not res.more or not res.kvs:
            break
        start = res.kvs[-1].key + b"\x00"
    if last is not None and await kv.get(last) is not None:
        await kv.commit([], [], [Delete(last)])
        deleted += 1
        bar.advance()
    return deleted


def _remove_tree(root: str, bar: Progress) -> int:
    """Remove the directory ``root`` and everything under it; the files removed."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
            removed += 1
            bar.advance()
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    if os.path.isdir(root):
        os.rmdir(root)
    return removed


async def _confirm(fmt: VolumeFormat, url: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise VolumeError("kvfs destroy asks before it starts; pass --yes when stdin is not "
                          "a terminal")
    prompt = f"destroy volume {fmt.name} (uuid {fmt.uuid}) at {url} and all its data? [y/N] "
    answer: str = await trio.to_thread.run_sync(input, prompt)
    if answer.strip().lower() not in ("y", "yes"):
        raise VolumeError("not confirmed; nothing destroyed")


async def destroy(url: str, uuid: str, *, yes: bool) -> str:
    kv = await open_unmounted(url)
    closed = False
    try:
        fmt = await read_format(kv)
        if fmt is None:
            raise VolumeError(f"{url}: not a formatted kvfs volume; nothing destroyed")
        if uuid != fmt.uuid:
            raise VolumeError(f"{uuid!r} is not the UUID of volume {fmt.name} at {url} (see "
                              "kvfs status); nothing destroyed")
        sessions = await list_sessions(kv)
        if sessions:
            live = "; ".join(f"#{s.sid} {s.host} pid {s.pid} at {s.mountpoint}"
                             for s in sessions)
            raise VolumeError(f"volume {fmt.name} has {len(sessions)} live session(s): "
                              f"{live}; unmount them first (nothing destroyed)")
        await _confirm(fmt, url, yes)
        store_dir = embedded_dir(url)
        with Progress("destroying blocks", unit="block") as bar:
            blocks = 0
            if fmt.storage == "file":
                blocks = await trio.to_thread.run_sync(
                    _remove_tree, os.path.join(fmt.bucket, "chunks"), bar)
            elif fmt.storage == "etcd":
                bucket = await open_engine(fmt.bucket)
                try:
                    blocks = await sweep(bucket, bar)
                finally:
                    await bucket.aclose()
            bar.describe("destroying metadata")
            if store_dir is None:
                gone = f"{await sweep(kv, bar, last=keys.SETTING)} keys"
            else:
                await kv.aclose()
                closed = True
                from kvfs.raftkv.embedded import raft_dir

                # Renamed first, so that the store is gone at once even if removing its
                # files is interrupted; the rename's leftover is removed next.
                doomed = os.path.join(store_dir, f".destroyed-{secrets.token_hex(4)}")
                os.rename(raft_dir(store_dir), doomed)
                files = await trio.to_thread.run_sync(_remove_tree, doomed, bar)
                gone = f"the embedded store ({files} files)"
    finally:
        if not closed:
            await kv.aclose()
    where = {"file": f"{blocks} blocks from {fmt.bucket}", "etcd": f"{blocks} keys from "
             f"{fmt.bucket}", "kv": "blocks with the metadata"}[fmt.storage]
    return f"destroyed volume {fmt.name} (uuid {fmt.uuid}): removed {gone}, {where}"


def run(args: argparse.Namespace) -> int:
    print(trio.run(lambda: destroy(args.meta_url, args.uuid, yes=args.yes)))
    return 0
