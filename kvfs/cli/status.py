"""``kvfs status MOUNTPOINT|META_URL``: the volume's format, its live sessions, and the
``kvfs watch`` record of every host (applied revision, last result, age).

A MOUNTPOINT (any path inside a kvfs mount) is resolved to its META_URL through the mount
table, as ``kvfs watch`` does."""

from __future__ import annotations

import argparse
import json
import os
import time

import trio

from kvfs.kv.api import StoreLocked
from kvfs.meta.session import list_sessions
from kvfs.mountpath import locate, meta_url
from kvfs.volume import VolumeError, open_engine, read_format
from kvfs.watch.record import list_records


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="show a volume's format and sessions",
                       description="Show a volume's format and live sessions.")
    p.add_argument("meta_url", metavar="MOUNTPOINT|META_URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _url_of(arg: str) -> str:
    """``arg`` itself, unless it is a directory inside a kvfs mount: then that mount's
    META_URL.  (An embedded store's directory is not inside a mount, so stays a URL.)"""
    if os.path.isdir(arg):
        try:
            return meta_url(locate(arg)[1])
        except VolumeError:
            pass
    return arg


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run(args: argparse.Namespace) -> int:
    args.meta_url = _url_of(args.meta_url)

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
            watchers = await list_records(kv)
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
            "watchers": [{"host": w.host, "path": w.path, "pid": w.pid,
                          "revision": w.revision, "applied": w.applied, "result": w.result,
                          "check": w.check, "reload": w.reload, "time": w.time}
                         for w in watchers],
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
    print(f"  watchers: {len(info['watchers'])}")
    if info["watchers"]:
        rows = [("HOST", "PATH", "APPLIED", "AT", "RESULT", "AGE")]
        now = time.time()
        for w in info["watchers"]:
            detail = w["check"] if w["result"] == "check failed" else w["reload"]
            if not detail.startswith("ok"):  # say why: "check failed (exit status 1)"
                result = f"{w['result']} ({detail.removeprefix('failed: ')})"
            else:
                result = w["result"]
            rows.append((w["host"], w["path"], str(w["applied"] or "-"), str(w["revision"]),
                         result, _age(now - w["time"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            cells = [c.ljust(n) for c, n in zip(r[:-1], widths, strict=True)]
            print("    " + "  ".join([*cells, r[-1]]))
    return 0
