"""``mount.kvfs``: the helper mount(8) runs for fstab lines of type ``fuse.kvfs``.

For a filesystem type ``fuse.kvfs``, util-linux's mount(8) looks for
``/sbin/mount.fuse.kvfs`` (before falling back to ``/sbin/mount.fuse``) and runs it as::

    mount.fuse.kvfs SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t fuse.kvfs]

with no ``PATH`` in its environment and no ``HOME`` when systemd runs the mount unit.
install.sh links that name (and ``/sbin/mount.kvfs``) to this console script, whose
interpreter line names the venv's Python by its absolute path, so nothing here depends on
``PATH``.

Contract with mount(8): exit 0 only once the mount is live (the daemon is forked and
reports readiness, as ``kvfs mount -d`` does); otherwise one line ``kvfs: error: ...`` on
stderr, exit status 32 ("mount failure", 1 for a malformed invocation) and nothing mounted.
The options are checked strictly (an unknown one is an error, unless ``-s``); the generic
ones mount(8) passes on (``rw``, ``_netdev``, ``x-systemd.*``, ...) are accepted and
ignored -- ``_netdev`` is acted on by systemd (ordering after the network), not here.
``nofail`` is the one the helper acts on: mount(8) itself only forgives a missing device,
so with ``nofail`` the helper prints its error line but exits 0 (nothing mounted), and
``mount -a`` goes on and succeeds, as it would for a nofail line whose disk is absent.

The source as written in fstab is what the mount table shows, which is what lets a second
``mount -a`` see the line as already mounted.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from kvfs.cli.main import user_errors
from kvfs.cli.mount import mount_background, resolve_source
from kvfs.fuse.mount import MountOptions, check_mountpoint

USAGE = ("usage: mount.kvfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t fuse.kvfs]\n"
         "(run by mount(8) for fstab lines of type fuse.kvfs)")
# mount(8)'s own conventions for a helper's exit status.
EXIT_USAGE = 1
EXIT_FAILURE = 32
STD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_TYPES = ("fuse.kvfs", "kvfs")


class UsageError(Exception):
    """A malformed helper command line."""


@dataclass(slots=True)
class HelperArgs:
    source: str = ""
    mountpoint: str = ""
    options: list[str] = field(default_factory=list)
    sloppy: bool = False
    fake: bool = False
    verbose: bool = False

    @property
    def nofail(self) -> bool:
        return any("nofail" in group.split(",") for group in self.options)


def parse_argv(argv: list[str]) -> HelperArgs:
    """The helper's arguments: two positionals and mount(8)'s short flags, in any order
    (``-o``, ``-t`` and ``-N`` take a value, attached or as the next argument)."""
    out = HelperArgs()
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        flags = arg[1:]
        while flags:
            flag, flags = flags[0], flags[1:]
            if flag in "otN":
                if not flags:
                    if i >= len(argv):
                        raise UsageError(f"option -{flag} needs a value")
                    flags, i = argv[i], i + 1
                value, flags = flags, ""
                if flag == "o":
                    out.options.append(value)
                elif flag == "t" and value not in _TYPES:
                    raise UsageError(f"this helper mounts fuse.kvfs, not {value!r}")
                elif flag == "N":
                    raise UsageError("mounting in another namespace (-N) is not supported")
            elif flag == "s":
                out.sloppy = True
            elif flag == "f":
                out.fake = True
            elif flag == "v":
                out.verbose = True
            elif flag != "n":  # -n: no /etc/mtab to write, which kvfs never does anyway
                raise UsageError(f"unknown flag -{flag}")
    if len(positional) != 2:
        raise UsageError("expected SOURCE and MOUNTPOINT")
    out.source, out.mountpoint = positional
    return out


def mount(args: HelperArgs) -> int:
    """Check everything, then mount in the background; 0 once live (MountError if not)."""
    opts = MountOptions.parse(args.options, sloppy=args.sloppy)
    url, shown = resolve_source(args.source, opts, label_needs_url=True)
    mp = check_mountpoint(args.mountpoint, nonempty=opts.nonempty)
    if args.fake:
        return 0
    return mount_background(url, shown, mp, opts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # mount(8) runs helpers without PATH; fusermount3 (clearing a dead mount) needs one.
    os.environ.setdefault("PATH", STD_PATH)
    try:
        args = parse_argv(argv)
    except UsageError as e:
        print(f"kvfs: error: {e}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s kvfs[%(process)d] %(levelname)s %(name)s: "
                               "%(message)s")
    try:
        return mount(args)
    except user_errors() as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"kvfs: error: {msg}", file=sys.stderr)
        return 0 if args.nofail else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
