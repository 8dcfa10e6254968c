"""Version records and the volume's history settings.

A *version* is what one file path looked like after one change: its kind and attributes,
its content as the slice records of its chunks (so a version costs no copy of data --
blocks are immutable, and freed blocks outlive the retention period, see
:mod:`kvfs.history.recorder`), or a symlink's target, or nothing for a *tombstone* (the
path stopped naming a file).  Versions live under ``H ‖ path ‖ NUL ‖ time ‖ seq`` keys
(:func:`kvfs.meta.keys.history`); a version's *revision* is the engine revision of the
commit that wrote it (its key's ``mod_revision``), unique and ordered across all hosts.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import Any

import msgpack

from kvfs.meta.trash import TRASH_PATH

VERSION_RECORD = 1
DEFAULT_DAYS = 7.0
DEFAULT_VERSIONS = 10
# A version keeps the slice lists of a file only up to this size (about 10,000 slices);
# a bigger file's version records its attributes and says its content was not kept.
MAX_CHUNK_BYTES = 256 * 1024
# Paths never versioned: the staging area of `kvfs deploy` at the volume root (a tree
# there is versioned when it is swapped in), the trash (kvfs.meta.trash: a file there was
# removed, and its tombstone says so), and the temporary files of restores.
STAGING_NAME = ".kvfs-deploy"
STAGING_DIR = b"/" + STAGING_NAME.encode()
RESTORE_TEMP_PREFIX = b".kvfs-restore-"

# Kinds of version.  Arrivals put a file at a path; departures leave a tombstone.
WRITE = "write"          # closed after its content or attributes changed
CREATE = "create"        # a new file (closed after creation), symlink or special node
ATTR = "attr"            # mode, owner, size or mtime changed without an open handle
RENAME = "rename"        # renamed to this path (``note["from"]``)
MOVE = "move"            # a directory above it was renamed (``note["from"]``)
LINK = "link"            # a hard link made at this path
RESTORE = "restore"      # restored from ``note["rev"]``
DELETE = "delete"        # tombstone: unlinked
AWAY = "away"            # tombstone: renamed or moved away (``note["to"]``)
ARRIVALS = frozenset({CREATE, RENAME, MOVE, LINK, RESTORE})
TOMBSTONES = frozenset({DELETE, AWAY})


@dataclass(slots=True)
class Version:
    """One version of one path (module docstring).  ``chunks`` is None for a tombstone,
    a non-regular file, or a file too big to keep (``note["content"] == "not kept"``)."""

    kind: str
    time: int  # ns since the epoch, when it was recorded
    host: str
    uid: int  # who made the change
    mode: int = 0  # 0 for a tombstone
    owner: int = 0
    group: int = 0
    mtime: int = 0
    size: int = 0
    chunks: list[tuple[int, bytes]] | None = None
    target: bytes | None = None
    note: dict[str, Any] = field(default_factory=dict)
    revision: int = 0  # the key's mod_revision; not stored in the value

    @property
    def is_tombstone(self) -> bool:
        return self.kind in TOMBSTONES

    @property
    def type_name(self) -> str:
        if self.is_tombstone:
            return "-"
        if stat.S_ISREG(self.mode):
            return "file"
        if stat.S_ISLNK(self.mode):
            return "symlink"
        return "special"

    def encode(self) -> bytes:
        return msgpack.packb({
            "v": VERSION_RECORD, "kind": self.kind, "time": self.time, "host": self.host,
            "uid": self.uid, "mode": self.mode, "owner": self.owner, "group": self.group,
            "mtime": self.mtime, "size": self.size,
            "chunks": None if self.chunks is None else [list(c) for c in self.chunks],
            "target": self.target, "note": self.note})

    @classmethod
    def decode(cls, raw: bytes, revision: int = 0) -> Version:
        d = msgpack.unpackb(raw)
        if not isinstance(d, dict) or d.get("v") != VERSION_RECORD:
            raise ValueError("unknown history record version")
        chunks = d["chunks"]
        return cls(d["kind"], d["time"], d["host"], d["uid"], d["mode"], d["owner"],
                   d["group"], d["mtime"], d["size"],
                   None if chunks is None else [(int(i), bytes(b)) for i, b in chunks],
                   d["target"], dict(d["note"]), revision)

    def summary(self) -> dict[str, Any]:
        """The version without its slice lists (what ``kvfs log`` shows)."""
        return {"revision": self.revision, "kind": self.kind, "time": self.time,
                "host": self.host, "uid": self.uid, "type": self.type_name,
                "mode": self.mode & 0o7777, "owner": self.owner, "group": self.group,
                "mtime": self.mtime, "size": self.size, "note": self.note}


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """Which paths keep a history, and for how long.  ``days`` 0 turns history off."""

    paths: tuple[bytes, ...] = (b"/",)
    days: float = DEFAULT_DAYS
    versions: int = DEFAULT_VERSIONS

    @property
    def enabled(self) -> bool:
        return self.days > 0 and bool(self.paths)

    @property
    def retain_seconds(self) -> int:
        return int(self.days * 86400) if self.enabled else 0

    def covers(self, path: bytes) -> bool:
        """Whether changes to the file at ``path`` are kept."""
        if not self.enabled or _under(path, STAGING_DIR) or _under(path, TRASH_PATH):
            return False
        if path.rsplit(b"/", 1)[-1].startswith(RESTORE_TEMP_PREFIX):
            return False
        return any(_under(path, p) for p in self.paths)

    def to_dict(self) -> dict[str, Any]:
        return {"paths": [p.decode() for p in self.paths], "days": self.days,
                "versions": self.versions}

    @classmethod
    def from_format(cls, raw: bytes) -> HistorySettings:
        """The settings in a volume's format record (the ``setting`` key's value)."""
        record = msgpack.unpackb(raw)
        return cls.from_dict(record.get("history") if isinstance(record, dict) else None)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HistorySettings:
        if not d:
            return cls()
        return cls(tuple(p.encode() for p in d.get("paths", ["/"])),
                   float(d.get("days", DEFAULT_DAYS)), int(d.get("versions", DEFAULT_VERSIONS)))


def _under(path: bytes, top: bytes) -> bool:
    top = top.rstrip(b"/")
    return not top or path == top or path.startswith(top + b"/")


def parse_paths(text: str) -> tuple[bytes, ...]:
    """``/a,/b/c`` as absolute volume paths; ValueError for a relative or empty one."""
    out = []
    for part in text.split(","):
        p = part.strip()
        if not p.startswith("/") or "\0" in p:
            raise ValueError(f"history path {p!r} is not an absolute path in the volume")
        norm = "/" + "/".join(x for x in p.split("/") if x)
        out.append(norm.encode())
    return tuple(out)
