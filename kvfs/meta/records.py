"""Value encodings of metadata records: versioned msgpack arrays, one codec per record."""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass, replace

import msgpack

ATTR_VERSION = 1


def now_ns() -> int:
    return time.time_ns()


@dataclass(slots=True)
class Attr:
    """An inode's attributes.  ``mode`` includes the file-type bits; times are ns since epoch.

    ``parent`` is the containing directory for directories and for files with one link;
    0 once a non-directory has several links (its parents are then ``A ino P *`` keys).
    ``name`` is the inode's name in ``parent`` while it has one (kept by create and rename,
    read by the history to name a file's path); empty when unknown -- several links, or a
    record written before names were kept.
    """

    mode: int
    uid: int
    gid: int
    atime: int
    mtime: int
    ctime: int
    nlink: int
    size: int = 0
    rdev: int = 0
    parent: int = 0
    name: bytes = b""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def copy(self) -> Attr:
        return replace(self)

    def encode(self) -> bytes:
        return msgpack.packb([ATTR_VERSION, self.mode, self.uid, self.gid, self.atime,
                              self.mtime, self.ctime, self.nlink, self.size, self.rdev,
                              self.parent, self.name])

    @classmethod
    def decode(cls, raw: bytes) -> Attr:
        v = msgpack.unpackb(raw)
        if v[0] != ATTR_VERSION:
            raise ValueError(f"unknown inode record version {v[0]}")
        # 11 elements before names were kept; the 12th (name) is optional.
        return cls(*v[1:12])



def encode_dentry(ftype: int, ino: int) -> bytes:
    """``ftype`` is the S_IFMT bits of the child's mode shifted right by 12."""
    return msgpack.packb([ftype, ino])


def decode_dentry(raw: bytes) -> tuple[int, int]:
    ftype, ino = msgpack.unpackb(raw)
    return int(ftype), int(ino)


def ftype_of(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12
