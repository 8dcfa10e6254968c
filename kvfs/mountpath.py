"""Which kvfs mount holds a path, and which engine a mount's source names.

Light on purpose (the standard library and the mount table only): ``kvfs deploy``, ``log``,
``diff`` and ``restore`` start with it, and their start-up time is part of a rollout.
"""

from __future__ import annotations

import os
import re

from kvfs.errors import VolumeError
from kvfs.fuse import mounttab

META_URL_ENV = "KVFS_META_URL"

# Labels may hold backslashes: a systemd instance name (%i) escapes "-" as "\x2d".
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+\\-]*\Z")


def is_label(source: str) -> bool:
    """Whether ``source`` can only be a label: no ``/`` or ``:``, so not a path or URL."""
    return _LABEL.match(source) is not None


def is_local(url: str) -> bool:
    """Whether the engine of ``url`` is on this host (no network needed to mount it)."""
    return "://" not in url or url.startswith(("local://", "mem://"))


def locate(path: str) -> tuple[str, mounttab.MountEntry, str]:
    """``(mountpoint, mount entry, path within the volume)`` of the kvfs mount holding
    ``path``; VolumeError if ``path`` is missing or not inside a kvfs mount."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise VolumeError(f"{path}: no such file or directory")
    mp = real
    while (entry := mounttab.find(mp)) is None:
        if mp == "/":
            raise VolumeError(f"{path} is not inside a kvfs mount")
        mp = os.path.dirname(mp)
    if not entry.is_kvfs:
        raise VolumeError(f"{path} is not inside a kvfs mount (it is on {entry.fstype} "
                          f"mounted at {mp})")
    rel = os.path.relpath(real, mp)
    return mp, entry, "/" if rel == "." else "/" + rel


def meta_url(entry: mounttab.MountEntry) -> str:
    """The META_URL of a kvfs mount, from its source; VolumeError if its engine cannot be
    opened by a second process."""
    url = entry.source
    if is_label(url):
        url = os.environ.get(META_URL_ENV, "")
        if not url:
            raise VolumeError(f"the mount at {entry.mountpoint} shows the label "
                              f"{entry.source!r}; set {META_URL_ENV} to its META_URL")
    if is_local(url):
        raise VolumeError(f"the mount at {entry.mountpoint} uses an embedded store, which "
                          f"only its mount can open; watching needs a shared engine "
                          f"(etcd:// or raft://)")
    return url
