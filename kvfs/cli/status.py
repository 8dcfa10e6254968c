"""``kvfs status META_URL``: the volume's format and its live sessions."""

from __future__ import annotations

import argparse
import json
import time

import trio

from kvfs.kv.api import StoreLocked
from kvfs.meta.session import list_sessions
from kvfs.volume import VolumeError, open_engine, read_format


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="show a volume's format and sessions",
                       description="Show a volume's format and live sessions.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def run(args: argparse.Namespace) -> int:
    async def go() -> dict:  # type: ignore[type-arg]
        try:
            kv = await open_engine(args.meta_url)
        except StoreLocked as e:
            # An embedded store is open in exactly one process: the live mount.
            return {"url": args.meta_url, "in_use": str(e)}
        try:
            fmt = await read_format(kv)
            if fmt is None:
                raise VolumeError(f"{args.meta_url}: not a formatted kvfs volume")
            sessions = await list_sessions(kv)
        finally:
            await kv.aclose()
        return {
            "url": args.meta_url,
            "format": {"name": fmt.name, "uuid": fmt.uuid, "storage": fmt.storage,
                       "bucket": fmt.bucket, "block_size": fmt.block_size,
                       "created": time.strftime("%Y-%m-%d %H:%M:%S",
                                                time.localtime(fmt.created))},
            "sessions": [{"sid": s.sid, "host": s.host, "pid": s.pid,
                          "mountpoint": s.mountpoint, "version": s.version,
                          "started": s.started} for s in sessions],
        }

    info = trio.run(go)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if "in_use" in info:
        print(f"volume at {info['url']} is mounted: {info['in_use']}")
        return 0
    f = info["format"]
    print(f"volume {f['name']} (uuid {f['uuid']})")
    print(f"  storage: {f['storage']}{' ' + f['bucket'] if f['bucket'] else ''}, "
          f"block size {f['block_size'] // 1024} KiB, created {f['created']}")
    print(f"  sessions: {len(info['sessions'])}")
    for s in info["sessions"]:
        print(f"    #{s['sid']} {s['host']} pid {s['pid']} at {s['mountpoint']} "
              f"(kvfs {s['version']})")
    return 0
