"""``kvfs config META_URL``: show a volume's settings, or change them.

With no flag it shows the format record (name, UUID, storage, block size, history and
trash settings).  ``--history``, ``--history-days``, ``--history-versions`` and
``--trash-days`` change them with the checks ``kvfs format`` applies to the same flags; the
record is rewritten only if it did not change meanwhile (a compare on its revision).
Running mounts pick a history change up within a minute (each mount's history recorder
re-reads the record every 60 s) and a trash change at once (they watch the record).

An embedded store can be opened by one process only: while it is mounted, its settings
cannot be shown or changed here (one line naming the mount); unmount it first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

import trio

from kvfs.cli.format import add_trash_flag, history_settings, trash_text
from kvfs.errors import VolumeError
from kvfs.fuse import mounttab
from kvfs.history.records import HistorySettings
from kvfs.kv.api import Compare, KVEngine, Put, StoreLocked
from kvfs.meta import keys
from kvfs.volume import VolumeFormat, check_trash_days, embedded_dir, open_engine


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="show or change a volume's settings",
                       description="Show a volume's settings, or change its history and "
                                   "trash settings (running mounts pick changes up within "
                                   "60 s).")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--history", metavar="PATH[,PATH...]",
                   help="keep the history of files under these paths of the volume")
    p.add_argument("--history-days", type=float, metavar="DAYS",
                   help="keep versions this many days; 0 turns history off")
    p.add_argument("--history-versions", type=int, metavar="N",
                   help="keep at most this many versions of each path")
    add_trash_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def mounted_at(url: str) -> str | None:
    """The mountpoint of a kvfs mount serving the embedded store of ``url``, if any."""
    path = embedded_dir(url)
    if path is None:
        return None
    want = os.path.realpath(path)
    for entry in mounttab.mounts():
        if not entry.is_kvfs:
            continue
        source = embedded_dir(entry.source)
        if source is not None and os.path.realpath(source) == want:
            return entry.mountpoint
    return None


async def open_unmounted(url: str) -> KVEngine:
    """``open_engine(url)``; an embedded store held by its mount is one line naming it."""
    try:
        return await open_engine(url)
    except StoreLocked as exc:
        mp = mounted_at(url)
        if mp is None:
            raise VolumeError(str(exc)) from None
        raise VolumeError(f"{url} is mounted at {mp}: an embedded store can be opened by "
                          f"its mount only; unmount it first (kvfs umount {mp})") from None


def settings(url: str, fmt: VolumeFormat) -> dict[str, Any]:
    h = fmt.history_settings
    return {"url": url, "name": fmt.name, "uuid": fmt.uuid, "version": fmt.version,
            "storage": fmt.storage, "bucket": fmt.bucket, "block_size": fmt.block_size,
            "created": fmt.created,
            "history": {"paths": [p.decode(errors="replace") for p in h.paths],
                        "days": h.days, "versions": h.versions, "enabled": h.enabled},
            "trash_days": fmt.trash_days}


def _show(s: dict[str, Any], changed: bool) -> None:
    h = s["history"]
    print(f"volume {s['name']} (uuid {s['uuid']}, format version {s['version']})")
    print(f"  storage: {s['storage']}{' ' + s['bucket'] if s['bucket'] else ''}, block size "
          f"{s['block_size'] // 1024} KiB, created "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['created']))}")
    if h["enabled"]:
        print(f"  history: {','.join(h['paths'])} kept {h['days']:g} days, at most "
              f"{h['versions']} versions each")
    else:
        print("  history: off")
    print(f"  {trash_text(s['trash_days'])}")
    if changed:
        print("  changed; running mounts apply it within 60 s")


def run(args: argparse.Namespace) -> int:
    if args.trash_days is not None:
        check_trash_days(args.trash_days)

    async def go() -> tuple[dict[str, Any], bool]:
        kv = await open_unmounted(args.meta_url)
        try:
            raw = await kv.get(keys.SETTING)
            if raw is None:
                raise VolumeError(f"{args.meta_url}: not a formatted kvfs volume (run "
                                  "`kvfs format` first)")
            fmt = VolumeFormat.decode(raw.value)
            new: HistorySettings | None = history_settings(args, fmt.history_settings)
            days = fmt.trash_days if args.trash_days is None else float(args.trash_days)
            if (new is None or new == fmt.history_settings) and days == fmt.trash_days:
                return settings(args.meta_url, fmt), False
            fmt = dataclasses.replace(fmt, history=(new or fmt.history_settings).to_dict(),
                                      trash_days=days)
            res = await kv.commit([Compare(keys.SETTING, raw.mod_revision)],
                                  [Put(keys.SETTING, fmt.encode())])
            if not res.succeeded:
                raise VolumeError("the volume's settings changed while this ran; nothing "
                                  "changed here, run it again")
            return settings(args.meta_url, fmt), True
        finally:
            await kv.aclose()

    shown, changed = trio.run(go)
    if args.json:
        print(json.dumps({**shown, "changed": changed}, indent=2))
    else:
        _show(shown, changed)
    return 0
