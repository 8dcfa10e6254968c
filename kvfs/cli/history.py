"""What ``kvfs log``, ``kvfs diff`` and ``kvfs restore`` share: naming a path (which may no
longer exist) inside a kvfs mount, parsing revisions and times, and asking the mount.

The commands talk to the mount's control socket (:mod:`kvfs.fuse.controlsocket`), so they work
on every engine, the embedded store included, and need root like the mount itself.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from kvfs.errors import VolumeError
from kvfs.fuse import controlsocket
from kvfs.mountpath import locate


def resolve(path: str) -> tuple[str, bytes]:
    """``(mountpoint, path within the volume)`` of ``path``.  The path itself and missing
    directories above it need not exist (the history of a removed file); the nearest
    existing directory above it must be inside a kvfs mount."""
    absolute = os.path.abspath(path)
    if os.path.isdir(absolute) and not os.path.islink(absolute):  # the mountpoint too
        mountpoint, _, vdir = locate(absolute)
        return mountpoint, os.fsencode(vdir)
    head, missing = os.path.dirname(absolute), [os.path.basename(absolute)]
    while not os.path.isdir(head):
        head, tail = os.path.split(head)
        missing.append(tail)
    mountpoint, _, vdir = locate(head)
    parts = [p for p in reversed(missing) if p]
    if os.path.realpath(absolute) == mountpoint:
        return mountpoint, b"/"
    vpath = "/".join([vdir.rstrip("/"), *parts]) if parts else vdir
    return mountpoint, os.fsencode(vpath if vpath.startswith("/") else "/" + vpath)


def parse_revision(text: str, what: str = "revision") -> int:
    if not text.isdigit() or int(text) <= 0:
        raise VolumeError(f"invalid {what} {text!r}: a revision is a positive number "
                          "(see kvfs log)")
    return int(text)


def parse_time(text: str) -> int:
    """``text`` as ns since the epoch: ``@SECONDS`` or an ISO 8601 date and time (local
    time unless it names a zone)."""
    try:
        if text.startswith("@"):
            return int(float(text[1:]) * 10**9)
        return int(datetime.fromisoformat(text).timestamp() * 10**9)
    except ValueError:
        raise VolumeError(f"invalid time {text!r}: use a revision, @UNIX_SECONDS or an ISO "
                          "date and time such as 2026-11-30T16:00:00") from None


def ask(mountpoint: str, req: dict[str, Any]) -> dict[str, Any]:
    """One request to the mount; VolumeError with its one-line answer if it failed."""
    answer = controlsocket.request(mountpoint, req)
    if not answer.get("ok"):
        raise VolumeError(str(answer.get("error", "the mount refused the request")))
    return answer


def show_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")
