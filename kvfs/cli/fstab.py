"""Writing a kvfs line into an fstab file (``kvfs mount --update-fstab``).

A line is ``SOURCE MOUNTPOINT fuse.kvfs OPTIONS 0 0``.  fstab(5) separates fields with
blanks, so a blank, tab, newline or backslash inside a field is written as a backslash and
three octal digits, as the kernel's mount table writes it (:mod:`kvfs.fuse.mounttab`
undoes the same escapes).

Invariants: the file is replaced atomically (a temporary file in the same directory,
fsynced, renamed over the old one, the directory fsynced), so a crash leaves either the old
or the new fstab, never a torn one; its mode and owner are kept; every other line --
comments and blank lines included -- is kept byte for byte, in order.  At most one line
names a given mountpoint afterwards: the first line for it is replaced in place and any
later ones are dropped (mount(8) would otherwise mount the volume twice).
"""

from __future__ import annotations

import os
import secrets

from kvfs.durable import replacing
from kvfs.fuse import mounttab

FSTYPE = "fuse.kvfs"
_ESCAPED = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


def escape(field: str) -> str:
    """``field`` with the characters that would split or end an fstab field escaped."""
    return "".join(_ESCAPED.get(c, c) for c in field)


def fstab_line(source: str, mountpoint: str, options: list[str]) -> str:
    """The fstab line (with its newline) mounting ``source`` at ``mountpoint``."""
    opts = ",".join(options) or "defaults"
    return f"{escape(source)} {escape(mountpoint)} {FSTYPE} {escape(opts)} 0 0\n"


def _mountpoint_of(line: bytes) -> str | None:
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith(b"#"):
        return None
    return mounttab.unescape(fields[1])


def update_fstab(path: str, line: str, mountpoint: str) -> bool:
    """Put ``line`` into the fstab at ``path`` as the only line for ``mountpoint``;
    True if it replaced an existing line, False if it was appended (or the file made)."""
    try:
        with open(path, "rb") as f:
            old = f.read()
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old, st = b"", None
    new_line = os.fsencode(line)
    out: list[bytes] = []
    replaced = False
    for existing in old.splitlines(keepends=True):
        named = _mountpoint_of(existing)
        if named is not None and os.path.normpath(named) == os.path.normpath(mountpoint):
            if not replaced:
                out.append(new_line)
                replaced = True
            continue
        out.append(existing)
    if not replaced:
        if out and not out[-1].endswith(b"\n"):
            out[-1] += b"\n"
        out.append(new_line)
    _replace_atomically(path, b"".join(out), st)
    return replaced


def _replace_atomically(path: str, data: bytes, st: os.stat_result | None) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".fstab.{secrets.token_hex(6)}")
    with replacing(path, tmp=tmp) as f:
        f.write(data)
        if st is not None:
            os.fchmod(f.fileno(), st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
        else:
            os.fchmod(f.fileno(), 0o644)
