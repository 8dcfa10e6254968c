"""The kernel's table of mounts (``/proc/self/mounts``), parsed in one place.

Each line is ``SOURCE MOUNTPOINT TYPE OPTIONS FREQ PASSNO``, separated by single spaces.
Inside a field the kernel writes a space, tab, newline or backslash as a backslash and
three octal digits (``\\040``, ``\\011``, ``\\012``, ``\\134``), so splitting on spaces
is safe and every field must be unescaped before it is compared with a path.  The kernel
records a mountpoint by its canonical path: compare it with a path resolved the same way
(``os.path.realpath``), not with what a user typed.

Everything in kvfs and its tests that asks "what is mounted where" goes through here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PROC_MOUNTS = "/proc/self/mounts"
_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    source: str
    mountpoint: str
    fstype: str
    options: str

    @property
    def is_kvfs(self) -> bool:
        return self.fstype == "fuse.kvfs"


def unescape(field: bytes) -> str:
    """A field of the table with the kernel's octal escapes undone (bytes that are not
    UTF-8 come back as surrogates, as everywhere in ``os``)."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m[1], 8)]), field))


def parse(table: bytes) -> list[MountEntry]:
    """Every mount in ``table`` (the contents of a mounts file), in table order."""
    out = []
    for line in table.splitlines():
        fields = line.split(b" ")
        if len(fields) >= 4:
            out.append(MountEntry(*(unescape(f) for f in fields[:4])))
    return out


def mounts() -> list[MountEntry]:
    """This process's view of the mount table."""
    with open(PROC_MOUNTS, "rb") as f:
        return parse(f.read())


def find(mountpoint: str) -> MountEntry | None:
    """The mount seen at ``mountpoint`` (a canonical path): the last one mounted there,
    which hides any below it, or None."""
    found = None
    for entry in mounts():
        if entry.mountpoint == mountpoint:
            found = entry
    return found
