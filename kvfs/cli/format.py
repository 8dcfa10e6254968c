"""``kvfs format META_URL NAME``: create a volume (format record and root directory).

``--root-mode`` and ``--root-owner`` are parsed and checked before the engine is opened,
so bad values change nothing.
"""

from __future__ import annotations

import argparse
import grp
import pwd

import trio

from kvfs.history.records import (
    DEFAULT_DAYS,
    DEFAULT_VERSIONS,
    HistorySettings,
    parse_paths,
)
from kvfs.meta import trash
from kvfs.volume import (
    DEFAULT_BLOCK_KIB,
    VolumeError,
    VolumeFormat,
    check_trash_days,
    format_volume,
    open_engine,
    read_format,
)

ID_NONE = 0xFFFFFFFF  # (uid_t)-1 means "no change" to chown: never an owner


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("format", help="create a new volume",
                       description="Create a new volume in a metadata engine.")
    p.add_argument("meta_url", metavar="META_URL",
                   help="metadata engine: a directory (embedded store), local:///PATH, or "
                        "etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?cacert=&cert=&key=&user=]")
    p.add_argument("name", metavar="NAME", help="volume name")
    p.add_argument("--storage", choices=("kv", "file", "etcd"), default="kv",
                   help="where blocks go: kv (the metadata engine itself, default), file "
                        "(a local directory) or etcd (another etcd prefix or cluster)")
    p.add_argument("--bucket", default="",
                   help="the directory (file) or etcd://HOST:PORT[,...]/PREFIX (etcd)")
    p.add_argument("--block-size", type=int, metavar="KiB",
                   help="block size in KiB (default 4096 for file, 1024 for kv and etcd)")
    p.add_argument("--root-mode", metavar="MODE",
                   help="permissions of the root directory, in octal (default 0755)")
    p.add_argument("--root-owner", metavar="UID:GID",
                   help="owner and group of the root directory, as numbers or names "
                        "(default: the user running this command)")
    p.add_argument("--force", action="store_true",
                   help="update the settings of an existing volume (never erases data)")
    p.add_argument("--history", metavar="PATH[,PATH...]",
                   help="keep the history of files under these paths of the volume "
                        "(default /: every file)")
    p.add_argument("--history-days", type=float, metavar="DAYS",
                   help=f"keep versions this many days; 0 turns history off "
                        f"(default {DEFAULT_DAYS:g})")
    p.add_argument("--history-versions", type=int, metavar="N",
                   help=f"keep at most this many versions of each path "
                        f"(default {DEFAULT_VERSIONS})")
    add_trash_flag(p, f" (default {trash.DEFAULT_DAYS:g})")
    return p


def add_trash_flag(p: argparse.ArgumentParser, default: str = "") -> None:
    p.add_argument("--trash-days", type=float, metavar="DAYS",
                   help="keep removed and overwritten files this many days in /.trash; 0 "
                        f"turns the trash off{default}")


def trash_text(days: float) -> str:
    """How the trash setting reads in the commands' output."""
    return f"trash kept {days:g} days in /.trash" if days > 0 else "trash off"


def history_settings(args: argparse.Namespace, old: HistorySettings | None
                     ) -> HistorySettings | None:
    """The history settings the flags ask for, on top of ``old`` (None: no flag given)."""
    if args.history is None and args.history_days is None and args.history_versions is None:
        return None
    base = old or HistorySettings()
    try:
        paths = base.paths if args.history is None else parse_paths(args.history)
    except ValueError as exc:
        raise VolumeError(str(exc)) from None
    days = base.days if args.history_days is None else args.history_days
    versions = base.versions if args.history_versions is None else args.history_versions
    if not days >= 0 or days > 100 * 365:
        raise VolumeError(f"invalid --history-days {days:g} (0 to 36500; 0 turns it off)")
    if versions < 1:
        raise VolumeError(f"invalid --history-versions {versions} (at least 1)")
    return HistorySettings(paths, days, versions)


def check_layout_kept(old: VolumeFormat, storage: str, block_kib: int | None) -> None:
    """Refuse a ``--force`` that would change where or in what size blocks are stored: the
    blocks a volume has, or will have, are laid out by its format, data or not."""
    kib = block_kib if block_kib is not None else DEFAULT_BLOCK_KIB[storage]
    if storage != old.storage or kib * 1024 != old.block_size:
        raise VolumeError(f"--force cannot change the storage or block size of volume "
                          f"{old.name!r} (it has storage {old.storage} and "
                          f"{old.block_size // 1024} KiB blocks)")


def parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise VolumeError(f"invalid --root-mode {text!r} (an octal mode such as 0755)") from None
    if not 0 <= mode <= 0o7777:
        raise VolumeError(f"invalid --root-mode {text!r} (an octal mode up to 7777)")
    return mode


def parse_owner(text: str) -> tuple[int, int]:
    """``UID:GID``, each a number or a name known to this host."""
    user, sep, group = text.partition(":")
    if not sep or not user or not group:
        raise VolumeError(f"invalid --root-owner {text!r} (UID:GID, numbers or names)")
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        raise VolumeError(f"invalid --root-owner {text!r}: no user {user!r}") from None
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise VolumeError(f"invalid --root-owner {text!r}: no group {group!r}") from None
    if uid >= ID_NONE or gid >= ID_NONE:
        raise VolumeError(f"invalid --root-owner {text!r} (ids up to {ID_NONE - 1})")
    return uid, gid


def run(args: argparse.Namespace) -> int:
    root_mode = None if args.root_mode is None else parse_mode(args.root_mode)
    root_owner = None if args.root_owner is None else parse_owner(args.root_owner)
    if args.trash_days is not None:
        check_trash_days(args.trash_days)

    async def go() -> None:
        kv = await open_engine(args.meta_url, create=True)
        try:
            old = await read_format(kv)
            if old is not None and args.force:
                check_layout_kept(old, args.storage, args.block_size)
            history = history_settings(args, old.history_settings if old else None)
            fmt = await format_volume(kv, args.name, storage=args.storage, bucket=args.bucket,
                                      block_kib=args.block_size, force=args.force,
                                      root_mode=root_mode, root_owner=root_owner,
                                      history=history, trash_days=args.trash_days)
        finally:
            await kv.aclose()
        h = fmt.history_settings
        kept = (f"history of {','.join(p.decode() for p in h.paths)} kept {h.days:g} days, "
                f"at most {h.versions} versions each" if h.enabled else "history off")
        print(f"formatted volume {fmt.name} (uuid {fmt.uuid}, storage {fmt.storage}, "
              f"block size {fmt.block_size // 1024} KiB, {kept}, {trash_text(fmt.trash_days)})")

    trio.run(go)
    return 0
