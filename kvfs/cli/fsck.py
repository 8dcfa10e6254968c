"""``kvfs fsck META_URL [--repair] [--json]``: check a volume's consistency, and repair
what is safe to repair.

stdout carries only the machine-friendly result: one line per problem, then (with
``--repair``) one line per repair made or refused, then a summary line.  With ``--json`` it
is one JSON object instead: ``problems`` (each ``{kind, text, repair}``, ``repair`` the
action ``--repair`` takes or null when fsck cannot repair it), ``counts``, ``repairs``
(each ``{action, done, detail}``) and ``remaining`` (problem texts left after repairs).

Exit status: 0 when the volume is consistent (or every problem found was repaired), 1 when
problems are left, or for bad input (``kvfs: error: ...``).

``--repair`` runs rounds of check-then-repair (a repair can reveal what it hid, such as an
inode left without entries once an entry of a missing directory is removed), at most
:data:`REPAIR_ROUNDS`, and a last check whose problems are what is left.  Progress of the
data verification goes to stderr (kvfs.cli.progress): a bar redrawn in place on a terminal,
else a line every :data:`LOG_INTERVAL` seconds (so a log of a long run shows it is moving).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import TextIO

import trio

from kvfs.cli.progress import Progress, size_text
from kvfs.meta.fsck import (
    DataProgress,
    Problem,
    RepairContext,
    RepairOutcome,
    Report,
    check,
    repair,
)
from kvfs.volume import open_volume

LOG_INTERVAL = 10.0
REPAIR_ROUNDS = 3


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "fsck", help="check a volume's consistency",
        description="Check a volume's metadata, and read every data block to verify its "
                    "checksum; changes nothing unless --repair.  Prints one line per problem "
                    "and a summary on stdout, progress on stderr; exits 1 if problems are "
                    "left.  Works on an unmounted volume and on a live shared one (problems "
                    "are re-checked before they are reported).")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--leaked", action="store_true",
                   help="also report blocks no slice refers to")
    p.add_argument("--skip-data", action="store_true",
                   help="do not read the blocks: only check that every block a file needs "
                        "exists (much faster on big volumes; misses corrupt data)")
    p.add_argument("--repair", action="store_true",
                   help="repair what is safe, each repair its own guarded transaction: "
                        "link counts and parent records, dangling entries, inodes without "
                        "an entry (moved to /lost+found), usage counters, holds of gone "
                        "sessions, chunk records that do not decode (the file gets a hole); "
                        "never deletes data blocks (see kvfs gc)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (problems, counts, repairs) instead of lines")
    return p


class ProgressLine:
    """Shows data verification progress on ``stream`` (default stderr) through
    :class:`~kvfs.cli.progress.Progress`: a bar over the bytes read on a terminal, else a
    line every :data:`LOG_INTERVAL` seconds.  One bar per check: :meth:`close` ends it, and
    the next call starts a new one."""

    def __init__(self, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self._bar: Progress | None = None

    def __call__(self, p: DataProgress) -> None:
        if self._bar is None:  # the first call starts the clock, with nothing read yet
            self._bar = Progress("verifying data", total=p.total_bytes, unit="B",
                                 unit_scale=True, log_every=LOG_INTERVAL,
                                 stream=self.stream, clock=self.clock)
        self._bar.set(p.nbytes, f"{p.blocks}/{p.total_blocks} blocks")

    def close(self) -> None:
        """Erase a bar drawn in place, so the result follows on a clean line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def summary(rep: Report, repaired: int | None = None) -> str:
    if rep.data_verified:
        data = f"{rep.verified_blocks} verified ({size_text(rep.verified_bytes)})"
    else:
        data = "data not verified"
    done = "" if repaired is None else f", {repaired} repaired"
    return (f"{rep.inodes} inodes, {rep.entries} entries, {rep.slices} slices, "
            f"{rep.blocks} blocks, {data}: {len(rep.problems)} problems{done}")


def _problem_json(p: Problem) -> dict[str, object]:
    return {"kind": p.kind, "text": p.text,
            "repair": p.repair.action if p.repair is not None else None}


def _outcome_line(o: RepairOutcome) -> str:
    if o.done:
        return f"repaired: {o.problem.repair.action if o.problem.repair else ''}"
    return f"not repaired ({o.detail}): {o.problem.text}"


def run(args: argparse.Namespace) -> int:
    async def go() -> int:
        vol = await open_volume(args.meta_url)
        shown = ProgressLine()
        found: list[Problem] = []
        outcomes: list[RepairOutcome] = []

        async def one_check() -> Report:
            try:
                return await check(vol.kv, vol.store, vol.fmt.block_size,
                                   leaked_blocks=args.leaked, verify_data=not args.skip_data,
                                   operational=True, progress=shown)
            finally:
                shown.close()

        try:
            rep = await one_check()
            first = rep
            found.extend(rep.found)
            if args.repair:
                ctx = RepairContext(vol.kv)
                for _ in range(REPAIR_ROUNDS):
                    done = await repair(vol.kv, rep.found, ctx)
                    outcomes.extend(done)
                    if not any(o.done for o in done):
                        break
                    rep = await one_check()
                    seen = {p.text for p in found}
                    found.extend(p for p in rep.found if p.text not in seen)
        finally:
            await vol.aclose()
        repaired = sum(1 for o in outcomes if o.done) if args.repair else None
        if args.json:
            print(json.dumps({
                "problems": [_problem_json(p) for p in found],
                "counts": {"inodes": first.inodes, "entries": first.entries,
                           "slices": first.slices, "blocks": first.blocks,
                           "verified_blocks": first.verified_blocks,
                           "verified_bytes": first.verified_bytes,
                           "data_verified": first.data_verified,
                           "rechecked": first.rechecked, "problems": len(found),
                           "repaired": repaired or 0, "remaining": len(rep.found)},
                "repairs": [{"action": o.problem.repair.action if o.problem.repair else "",
                             "done": o.done, "detail": o.detail} for o in outcomes],
                "remaining": rep.problems}, indent=None))
        else:
            for p in found:
                print(p.text)
            for o in outcomes:
                print(_outcome_line(o))
            # With --repair, the problems counted are those left after the repairs.
            print(summary(rep, repaired))
        return 1 if rep.found else 0

    return trio.run(go)
