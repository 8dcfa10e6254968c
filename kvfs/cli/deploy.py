"""``kvfs deploy SRC_DIR MOUNTPOINT/PATH``: replace a tree of a mounted volume atomically.

See :mod:`kvfs.deploy` for the steps and the staging area.  Exit status: 0 when the new
tree is in place (one line says what, how many files and bytes, and how long the swap
took); 2 with ``kvfs: error: check failed ...`` when ``--check`` rejected it (nothing
changed); 1 with ``kvfs: error: ...`` for bad input (a missing or non-directory SRC_DIR, a
PATH outside a kvfs mount, a file, or without a parent, a bad ``--timeout`` or ``--grace``),
which changes nothing.  Options are checked here, not by argparse, so that a bad value is
the same one-line error as any other bad input.  On a terminal a progress bar on stderr
follows the copy into staging (bytes, and files after it).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from kvfs import deploy as deploying
from kvfs.cli.progress import Progress
from kvfs.errors import VolumeError
from kvfs.fuse import mounttab
from kvfs.mountpath import is_label, is_local, locate

EXIT_REJECTED = 2
DEFAULT_TIMEOUT = 60.0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "deploy", help="replace a directory of a mounted volume with a local tree atomically",
        description="Copy SRC_DIR into a staging area of the volume, optionally check it "
                    "there, then swap it in at MOUNTPOINT/PATH with one rename: readers on "
                    "every host see the whole old tree or the whole new one.")
    p.add_argument("src", metavar="SRC_DIR")
    p.add_argument("target", metavar="MOUNTPOINT/PATH")
    p.add_argument("--check", metavar="CMD",
                   help="shell command validating the staged tree, given as {} and "
                        "$KVFS_DEPLOY_PATH; a non-zero exit rejects the deploy")
    p.add_argument("--timeout", default=str(DEFAULT_TIMEOUT), metavar="S",
                   help="seconds the check may run before it is killed and counts as "
                        "failed (default 60)")
    p.add_argument("--grace", default=str(deploying.OLD_TREE_GRACE), metavar="S",
                   help="on a shared engine, seconds to wait after the swap before removing "
                        "the old tree, so that other hosts' cached names have moved on "
                        f"(default {deploying.OLD_TREE_GRACE:g}; keep it above their mounts' "
                        "entry_timeout)")
    p.add_argument("--keep-old", action="store_true",
                   help="keep the replaced tree in the staging area and print where")
    return p


def _seconds(option: str, text: str, zero: bool = False) -> float:
    """``text`` as a finite number of seconds, positive (or ``zero`` allowed)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        kind = "non-negative" if zero else "positive"
        raise VolumeError(f"{option}: not a {kind} number of seconds: {text!r}")
    return value


def _mount_of(path: str) -> tuple[str, str]:
    mp, _, vpath = locate(path)
    return mp, vpath


def _shared(mountpoint: str) -> bool:
    """Whether other hosts may mount the volume: anything but an embedded or in-memory
    store (a label hides the URL, so it counts as shared)."""
    entry = mounttab.find(mountpoint)
    return entry is None or is_label(entry.source) or not is_local(entry.source)


class _StagingBar:
    """The staging copy as a progress bar over its bytes, the files counted after it;
    the bar is gone before the check runs (its output then has the terminal)."""

    def __init__(self, p: deploying.Plan) -> None:
        self._files = p.files
        self._bar = Progress("staging", total=p.nbytes, unit="B", unit_scale=True)

    def copied(self, files: int, nbytes: int) -> None:
        self._bar.set(nbytes, f"{files}/{self._files} files")

    def staged(self) -> None:
        self._bar.close()  # closing twice is harmless


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that a staged tree is removed on SIGTERM too


def run(args: argparse.Namespace) -> int:
    timeout = _seconds("--timeout", args.timeout)
    grace = _seconds("--grace", args.grace, zero=True)
    plan = deploying.plan(args.src, args.target, _mount_of, _shared)
    signal.signal(signal.SIGTERM, _interrupt)
    bar = _StagingBar(plan)
    try:
        result = deploying.deploy(plan, args.check, timeout, args.keep_old, grace, bar)
    except deploying.CheckFailed as e:
        print(f"kvfs: error: {e}; nothing changed at {plan.target}", file=sys.stderr)
        return EXIT_REJECTED
    finally:
        bar.staged()  # also when staging failed before its copy began
    kept = f"; old tree kept at {result.old_tree}" if result.old_tree else ""
    print(f"deployed {plan.src} to {plan.target}: {plan.files} files, {plan.nbytes} bytes, "
          f"swap {result.swap_seconds * 1000:.1f} ms{kept}")
    return 0
