"""``kvfs fsck META_URL``: check a volume's consistency (read-only).

stdout carries only the machine-friendly result: one line per problem, then a summary
line; the exit status is 1 when there are problems.  Progress of the data verification
goes to stderr: a line redrawn in place on a terminal, else a line every
:data:`LOG_INTERVAL` seconds (so a log of a long run shows it is moving).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

import trio

from kvfs.meta.fsck import DataProgress, Report, check
from kvfs.volume import open_volume

TTY_INTERVAL = 0.25
LOG_INTERVAL = 10.0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "fsck", help="check a volume's consistency",
        description="Check a volume's metadata, and read every data block to verify its "
                    "checksum; changes nothing.  Prints one line per problem and a summary "
                    "on stdout, progress on stderr; exits 1 if it found a problem.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--leaked", action="store_true",
                   help="also report blocks no slice refers to")
    p.add_argument("--skip-data", action="store_true",
                   help="do not read the blocks: only check that every block a file needs "
                        "exists (much faster on big volumes; misses corrupt data)")
    return p


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    x, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if x < 1024:
            break
        x, unit = x / 1024, bigger
    return f"{x:.1f} {unit}"


class ProgressLine:
    """Shows data verification progress on ``stream`` (see module docstring)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.tty = stream.isatty()
        self.interval = TTY_INTERVAL if self.tty else LOG_INTERVAL
        self._last: float | None = None
        self._shown = False

    def __call__(self, p: DataProgress) -> None:
        now = self.clock()
        if self._last is None:  # the first call starts the clock, with nothing read yet
            self._last = now
            return
        if p.blocks < p.total_blocks:
            if now - self._last < self.interval:
                return
        elif self.tty or not self._shown:
            return  # done: close() erases a line in place; a quick run logs nothing
        self._last = now
        pct = 100 * p.nbytes // p.total_bytes if p.total_bytes else 100
        text = (f"verifying data: {p.blocks}/{p.total_blocks} blocks, "
                f"{_size(p.nbytes)} of {_size(p.total_bytes)} ({pct}%)")
        self.stream.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Erase a line drawn in place, so the result follows on a clean line."""
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def summary(rep: Report) -> str:
    if rep.data_verified:
        data = f"{rep.verified_blocks} verified ({_size(rep.verified_bytes)})"
    else:
        data = "data not verified"
    return (f"{rep.inodes} inodes, {rep.entries} entries, {rep.slices} slices, "
            f"{rep.blocks} blocks, {data}: {len(rep.problems)} problems")


def run(args: argparse.Namespace) -> int:
    async def go() -> int:
        vol = await open_volume(args.meta_url)
        shown = ProgressLine(sys.stderr)
        try:
            rep = await check(vol.kv, vol.store, vol.fmt.block_size, leaked_blocks=args.leaked,
                              verify_data=not args.skip_data, progress=shown)
        finally:
            shown.close()
            await vol.aclose()
        for p in rep.problems:
            print(p)
        print(summary(rep))
        return 1 if rep.problems else 0

    return trio.run(go)
