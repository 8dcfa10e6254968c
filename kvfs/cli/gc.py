"""``kvfs gc META_URL [--delete] [--min-age AGE] [--json]``: find what a volume stores that
nothing needs (kvfs.meta.gc), and remove it with ``--delete``.

stdout: one line per unreferenced block old enough to collect, per leaked inode and per
hold of a gone session, then a summary line with counts and bytes (and, with
``--delete``, what was removed).  ``--json`` prints one JSON object instead:
``problems`` (the same items as ``{kind, text}``), ``counts`` and ``repairs`` (what
``--delete`` removed).

Exit status: 0 when there is no garbage, or ``--delete`` removed all it found; 1 when
garbage is left (a report without ``--delete``), or for bad input (``kvfs: error: ...``).
A progress bar on stderr (kvfs.cli.progress, only on a terminal) follows the listing and
checking of the blocks, and the deletions.

Young blocks (unreferenced, but younger than ``--min-age`` or of unknown age) are counted
on the summary line, never deleted, and do not change the exit status: on a live volume
they may belong to a write not yet committed.
"""

from __future__ import annotations

import argparse
import json
import re

import trio

from kvfs.cli.progress import Progress, size_text
from kvfs.errors import VolumeError
from kvfs.meta.gc import DEFAULT_MIN_AGE, GcReport, collect, delete
from kvfs.volume import open_volume

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``2d`` as seconds; VolumeError otherwise."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if m is None:
        raise VolumeError(f"--min-age {text!r}: expected a number of seconds, or one with "
                          "s, m, h or d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "gc", help="find (and with --delete remove) unreferenced blocks and leaked data",
        description="Find blocks no chunk record, deletion queue or history version refers "
                    "to, chunk records of removed inodes, and holds of gone sessions; report "
                    "counts and bytes, and remove them only with --delete.  Blocks younger "
                    "than --min-age are kept: a live mount may not have committed them yet.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--delete", action="store_true", help="remove what was found")
    p.add_argument("--min-age", default=f"{int(DEFAULT_MIN_AGE)}s", metavar="AGE",
                   help="only blocks older than this are garbage (seconds, or with s, m, h, "
                        "d; default 1h).  0 takes every unreferenced block and, with "
                        "--delete, needs the volume unmounted")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _age(age: float | None) -> str:
    if age is None:
        return "age unknown"
    if age < 120:
        return f"{age:.0f} s old"
    if age < 7200:
        return f"{age / 60:.0f} min old"
    return f"{age / 3600:.1f} h old"


def _items(rep: GcReport) -> list[dict[str, str]]:
    out = [{"kind": "unreferenced-block",
            "text": f"block {b.name} is not referenced ({b.nbytes} bytes, {_age(b.age)})"}
           for b in rep.garbage]
    out += [{"kind": "leaked-inode",
             "text": f"inode {i.ino} is gone but {len(i.chunks)} chunk records keep "
                     f"{i.slices} slices ({size_text(i.nbytes)})"} for i in rep.leaked]
    out += [{"kind": "dead-hold", "text": f"inode {ino} is held open by session {sid}, "
                                          "which is gone"} for sid, ino in rep.dead_holds]
    out += [{"kind": "undecodable", "text": f"{what} does not decode: its blocks are "
                                            "unknown, so nothing can be deleted"}
            for what in rep.undecodable]
    return out


def summary(rep: GcReport, deleted: bool) -> str:
    text = (f"{rep.blocks} blocks ({size_text(rep.block_bytes)}), {rep.referenced_slices} "
            f"referenced slices: {len(rep.garbage)} unreferenced blocks "
            f"({size_text(rep.garbage_bytes)}), {len(rep.young)} more younger than the minimum "
            f"age or of unknown age ({size_text(rep.young_bytes)}), {len(rep.leaked)} leaked "
            f"inodes ({size_text(rep.leaked_bytes)}), {len(rep.dead_holds)} holds of gone "
            f"sessions")
    if deleted:
        text += (f"; deleted {rep.deleted_blocks} blocks ({size_text(rep.deleted_bytes)}), "
                 f"freed {rep.freed_inodes} leaked inodes, released {rep.released_holds} "
                 f"holds")
    return text


def run(args: argparse.Namespace) -> int:
    min_age = parse_age(args.min_age)

    async def go() -> int:
        vol = await open_volume(args.meta_url)
        try:
            with Progress("listing blocks", unit="block") as bar:
                shown = ["listing blocks"]

                def progress(phase: str, done: int, total: int | None) -> None:
                    if phase != shown[0]:
                        shown[0] = phase
                        bar.phase(phase, total)
                    bar.set(done)

                rep = await collect(vol.kv, vol.store, min_age=min_age, progress=progress)
                if args.delete:
                    await delete(vol.kv, vol.store, rep, progress=progress)
        finally:
            await vol.aclose()
        left = rep.found_anything and not (
            args.delete and rep.deleted_blocks == len(rep.garbage)
            and rep.freed_inodes == len(rep.leaked)
            and rep.released_holds == len(rep.dead_holds))
        if args.json:
            print(json.dumps({
                "problems": _items(rep),
                "counts": {"blocks": rep.blocks, "block_bytes": rep.block_bytes,
                           "referenced_slices": rep.referenced_slices,
                           "unreferenced_blocks": len(rep.garbage),
                           "unreferenced_bytes": rep.garbage_bytes,
                           "young_blocks": len(rep.young), "young_bytes": rep.young_bytes,
                           "leaked_inodes": len(rep.leaked),
                           "leaked_bytes": rep.leaked_bytes,
                           "dead_holds": len(rep.dead_holds),
                           "live_sessions": rep.live_sessions, "min_age": rep.min_age},
                "repairs": {"deleted_blocks": rep.deleted_blocks,
                            "deleted_bytes": rep.deleted_bytes,
                            "freed_inodes": rep.freed_inodes,
                            "released_holds": rep.released_holds}}))
        else:
            for item in _items(rep):
                print(item["text"])
            print(summary(rep, args.delete))
        return 1 if left else 0

    return trio.run(go)
